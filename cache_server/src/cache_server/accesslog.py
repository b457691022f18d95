"""Structured access log: one JSON object per request, buffered and flushed each second.

Fields are chosen so no secret can land here: the token's *name*, never the
Authorization header; the path is logged only as the validated key or route.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO


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

    def write(self, **fields: object) -> None:
        if self._out is None:
            return
        fields["ts"] = round(time.time(), 3)
        self._out.write(json.dumps(fields, separators=(",", ":")) + "\n")

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
