"""Structured access log: one JSON object per request, buffered and flushed each second.

Fields are chosen so no secret can land here: the token's *name*, never the
Authorization header; the path only as the validated key or the route name.
"""

from __future__ import annotations

import json
import os
import select
import stat
import sys
import time

from .chunks import whole_chunks


def _json_str(value: str | None) -> str:
    if value is None:
        return "null"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'  # the common case, without json.dumps' cost
    return json.dumps(value)


_BATCH_LINES = 256
_Record = tuple[float, str | None, str, str, str | None, int | None, float, str | None, int, int, str | None]


# An answered, authenticated cache request has every field and no reason: one C-level format
# instead of the general case's branches (~0.5 us less per line).
_COMPLETE = ('{"ts":%.3f,"remote":"%s","method":"%s","route":"%s","key":"%s","status":%d,"ms":%.3f,'
             '"token":"%s","bytes_in":%d,"bytes_out":%d}\n')


def _line(ts: float, remote: str | None, method: str, route: str, key: str | None, status: int | None, ms: float,
          token: str | None, bytes_in: int, bytes_out: int, reason: str | None) -> str:
    if reason is None and remote is not None and key is not None and token is not None and status is not None:
        return _COMPLETE % (ts, remote, method, route, key, status, ms, token, bytes_in, bytes_out)
    remote = "null" if remote is None else '"' + remote + '"'
    key = "null" if key is None else '"' + key + '"'
    token = "null" if token is None else '"' + token + '"'
    line = (
        f'{{"ts":{ts:.3f},"remote":{remote},"method":"{method}","route":"{route}","key":{key},'
        f'"status":{"null" if status is None else status},"ms":{ms:.3f},"token":{token},'
        f'"bytes_in":{bytes_in},"bytes_out":{bytes_out}'
    )
    return line + "}\n" if reason is None else f'{line},"reason":{_json_str(reason)}}}\n'


class AccessLog:
    """Lines are batched in memory and written together: one write per batch or per second.

    Every write() carries whole lines only, so the workers of one server (`--workers`)
    can share the file or stdout: appends to a regular file opened with O_APPEND land
    whole, and writes to a pipe (journald, a terminal) are kept within PIPE_BUF, which
    the kernel never interleaves.
    """

    def __init__(self, target: str) -> None:
        self._own = False
        self._fd = -1
        self._batch: list[_Record] = []
        self._chunk = 1 << 20
        if target == "off":
            return
        if target == "-":
            sys.stdout.flush()
            self._fd = sys.stdout.fileno()
        else:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._own = True
        try:
            if not stat.S_ISREG(os.fstat(self._fd).st_mode):
                self._chunk = select.PIPE_BUF
        except OSError:
            self._chunk = select.PIPE_BUF

    def write(self, remote: str | None, method: str, route: str, key: str | None, status: int | None,
              ms: float, token: str | None, bytes_in: int, bytes_out: int, reason: str | None) -> None:
        """One request. `remote`, `method`, `key` and `token` are plain ASCII without quotes (an IP
        address, an HTTP method, a validated key, a token name), so they are quoted as they are;
        only `reason` is free text. The fields are kept as they are and formatted with the batch:
        a line formatted between two requests costs about twice as much as in a run of lines."""
        if self._fd < 0:
            return
        self._batch.append((time.time(), remote, method, route, key, status, ms, token, bytes_in, bytes_out, reason))
        if len(self._batch) >= _BATCH_LINES:
            self._write_batch()

    def _write_batch(self) -> None:
        records, self._batch = self._batch, []
        if not records or self._fd < 0:
            return
        data = "".join([_line(*record) for record in records]).encode("utf-8", "replace")
        for chunk in whole_chunks(data, self._chunk):
            self._write_whole(chunk)

    def _write_whole(self, data: bytes) -> None:
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError:
            pass  # a full log disk or a closed stdout must not stop the cache

    def flush(self) -> None:
        self._write_batch()

    def close(self) -> None:
        self.flush()
        if self._own and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
