"""The status line and Date header every answer starts with."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

_STATUS_LINES = {status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode()) for status in HTTPStatus}

# Status line plus Date for every status, made again when the second changes: an answer's
# head then starts with one dict lookup.
_heads_second = -1
_date = b""
_heads: dict[int, bytes] = {}


def status_head(status: int) -> bytes:
    """Status line plus Date, without the blank line that ends the head."""
    global _heads_second, _date, _heads
    now = int(time.time())
    if now != _heads_second:
        _date = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        _heads = {code: line + _date for code, line in _STATUS_LINES.items()}
        _heads_second = now
    return _heads.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status + _date
