"""Size-bounded least-recently-used bookkeeping: no I/O, no locking.

The caller owns the lock and the files; this unit only decides which keys
should go. Not thread-safe.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator


class SizedLRU:
    """Keys with sizes, oldest first. `total` is the sum of sizes."""

    def __init__(self) -> None:
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self.total = 0

    def __contains__(self, key: str) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[str]:
        """Keys from least to most recently used."""
        return iter(list(self._sizes))

    def size_of(self, key: str) -> int | None:
        return self._sizes.get(key)

    def add(self, key: str, size: int) -> None:
        """Insert as most recently used; re-adding replaces the old size."""
        if size < 0:
            raise ValueError(f"negative size for {key!r}: {size}")
        old = self._sizes.pop(key, None)
        if old is not None:
            self.total -= old
        self._sizes[key] = size
        self.total += size

    def touch(self, key: str) -> bool:
        """Mark as just used. False when the key is unknown."""
        if key not in self._sizes:  # a miss is common: no KeyError raised and caught for it
            return False
        self._sizes.move_to_end(key)
        return True

    def remove(self, key: str) -> int | None:
        """Forget a key; its size, or None when it was unknown."""
        size = self._sizes.pop(key, None)
        if size is not None:
            self.total -= size
        return size

    def restore_oldest(self, victims: list[tuple[str, int]]) -> None:
        """Undo `evict_until`: put the victims back as the oldest keys, in their old order."""
        for key, size in reversed(victims):
            self.add(key, size)
            self._sizes.move_to_end(key, last=False)

    def evict_oldest(self, count: int) -> list[tuple[str, int]]:
        """Drop the `count` least recently used keys (fewer if there are not as many); in order."""
        victims: list[tuple[str, int]] = []
        while len(victims) < count and self._sizes:
            key, size = self._sizes.popitem(last=False)
            self.total -= size
            victims.append((key, size))
        return victims

    def evict_until(self, limit: int) -> list[tuple[str, int]]:
        """Drop least recently used keys until `total <= limit`; returns them in order."""
        victims: list[tuple[str, int]] = []
        while self.total > limit and self._sizes:
            key, size = self._sizes.popitem(last=False)
            self.total -= size
            victims.append((key, size))
        return victims
