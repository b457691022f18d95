"""Structured access log: one JSON object per request, buffered and flushed each second.

Fields are chosen so no secret can land here: the token's *name*, never the
Authorization header; the path only as the validated key or the route name.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO


def _json_str(value: str | None) -> str:
    if value is None:
        return "null"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'  # the common case, without json.dumps' cost
    return json.dumps(value)


def _quoted_or_null(value: str | None) -> str:
    # For fields validated upstream to plain ASCII without quotes (IP, HTTP method, key, token name).
    return "null" if value is None else '"' + value + '"'


_LINE = (
    '{"ts":%.3f,"remote":%s,"method":%s,"route":"%s","key":%s,"status":%s,'
    '"ms":%.3f,"token":%s,"bytes_in":%d,"bytes_out":%d'
)
_BATCH_LINES = 256


class AccessLog:
    """Lines are batched in memory and written together: one write per batch or per second."""

    def __init__(self, target: str) -> None:
        self._own = False
        self._out: TextIO | None
        self._batch: list[str] = []
        if target == "off":
            self._out = None
        elif target == "-":
            self._out = sys.stdout
        else:
            self._out = open(target, "a", encoding="utf-8", buffering=1 << 16)
            self._own = True

    @property
    def enabled(self) -> bool:
        return self._out is not None

    def write(self, *, remote: str | None, method: str, route: str, key: str | None, status: int | None,
              ms: float, token: str | None, bytes_in: int, bytes_out: int, reason: str | None) -> None:
        if self._out is None:
            return
        line = _LINE % (
            time.time(), _quoted_or_null(remote), _quoted_or_null(method), route, _quoted_or_null(key),
            "null" if status is None else status, ms, _quoted_or_null(token), bytes_in, bytes_out,
        )
        self._batch.append(line + "}\n" if reason is None else f'{line},"reason":{_json_str(reason)}}}\n')
        if len(self._batch) >= _BATCH_LINES:
            self._write_batch()

    def _write_batch(self) -> None:
        lines, self._batch = self._batch, []
        if lines and self._out is not None:
            try:
                self._out.write("".join(lines))
            except (OSError, ValueError):
                pass  # a full log disk must not stop the cache

    def flush(self) -> None:
        self._write_batch()
        if self._out is not None:
            try:
                self._out.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self.flush()
        if self._own and self._out is not None:
            self._out.close()
        self._out = None
