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


class AccessLog:
    def __init__(self, target: str) -> None:
        self._own = False
        self._out: TextIO | None
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
        line = (
            f'{{"ts":{time.time():.3f},"remote":{_json_str(remote)},"method":{_json_str(method)},'
            f'"route":"{route}","key":{_json_str(key)},"status":{"null" if status is None else status},'
            f'"ms":{ms:.3f},"token":{_json_str(token)},"bytes_in":{bytes_in},"bytes_out":{bytes_out}'
        )
        if reason is not None:
            line += f',"reason":{_json_str(reason)}'
        self._out.write(line + "}\n")

    def flush(self) -> None:
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
