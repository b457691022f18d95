"""Bodies of small entries kept in memory, least recently used out first: no I/O, no locking.

A small cache hit is otherwise five syscalls (open, fstat, two preads, close) plus a
checksum, several times the cost of the HTTP work around it. Only bodies that were
just verified against their checksum come in, and the storage drops a key here
whenever it leaves the index, so nothing here outlives its entry.
"""

from __future__ import annotations

from collections import OrderedDict


class HotBodies:
    """Key -> body, bounded by the sum of body sizes. Not thread-safe: the caller holds its lock."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.total = 0
        self._bodies: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._bodies)

    def get(self, key: str) -> bytes | None:
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
        return body

    def put(self, key: str, body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        self.discard(key)
        self._bodies[key] = body
        self.total += len(body)
        while self.total > self.max_bytes:
            _, oldest = self._bodies.popitem(last=False)
            self.total -= len(oldest)

    def discard(self, key: str) -> None:
        body = self._bodies.pop(key, None)
        if body is not None:
            self.total -= len(body)

    def clear(self) -> None:
        self._bodies.clear()
        self.total = 0
