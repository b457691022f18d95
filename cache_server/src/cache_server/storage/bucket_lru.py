"""The bucket's size cap (--max-size): least recently used objects go, whichever frontend used them.

Each frontend knows the bucket's objects (listed at start and every `relist` seconds, plus what it
stores itself) and the last time it served or stored each. Every `interval` seconds it publishes
its own access times as one small object, `<prefix>_nxfarm/access/<frontend id>.json`, and, when
the objects it knows weigh more than the cap, reads every frontend's access object, takes the
latest time per key (an object nobody has touched counts from its LastModified), and deletes the
oldest until the total is 90% of the cap. Two frontends evicting at once delete from the same
end of the same order; deleting what is already gone is harmless. What this does not do: keep
the order exact between publications (up to `interval` seconds of another frontend's reads are
not yet known), nor count objects stored by another frontend since the last listing.

The alternative, for stores that have it: a bucket lifecycle rule that expires objects some days
after they were written (docs/reference.md); it knows nothing of reads, so hot entries expire too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from .base import StorageCounters
from .objectstore import ObjectStore, StoreUnavailable

log = logging.getLogger("cache_server.storage")
ACCESS_DIR = "_nxfarm/access/"  # under the prefix; entry keys never contain '/'


def pick_victims(sizes: dict[str, int], access: dict[str, float], target: int) -> list[str]:
    """Pure: the least recently used keys to delete so that the total is at most `target`."""
    total = sum(sizes.values())
    victims = []
    for key in sorted(sizes, key=lambda k: (access.get(k, 0.0), k)):
        if total <= target:
            break
        victims.append(key)
        total -= sizes[key]
    return victims


def merge_access(views: list[dict[str, float]]) -> dict[str, float]:
    """Pure: the latest access time per key over every frontend's view."""
    merged: dict[str, float] = {}
    for view in views:
        for key, at in view.items():
            if isinstance(at, (int, float)) and at > merged.get(key, 0.0):
                merged[key] = float(at)
    return merged


class BucketLru:
    def __init__(self, store: ObjectStore, max_bytes: int, frontend_id: str, counters: StorageCounters,
                 interval: float = 60.0, relist: float = 300.0) -> None:
        self.store, self.max_bytes, self.frontend_id, self.counters = store, max_bytes, frontend_id, counters
        self.interval, self.relist = interval, relist
        self.sizes: dict[str, int] = {}
        self.written: dict[str, float] = {}  # LastModified of listed objects
        self.access: dict[str, float] = {}  # this frontend's own reads and writes
        self._listed_at = 0.0
        self.evicts = True  # False in all but one of a frontend's --workers: they share what they know

    def touch(self, key: str) -> None:
        self.access[key] = time.time()

    def added(self, key: str, size: int) -> None:
        self.sizes[key] = size
        self.touch(key)

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except StoreUnavailable as exc:  # the requests report the store's health; try again later
                log.warning("bucket size cap: %s", exc)
            await asyncio.sleep(self.interval)

    async def step(self) -> list[str]:
        """One round: relist when due, publish this frontend's view, evict if over the cap."""
        if time.monotonic() - self._listed_at >= self.relist or not self._listed_at:
            await self._list()
        own = {key: at for key, at in self.access.items() if key in self.sizes}
        self.access = own
        await self.store.put_object(ACCESS_DIR + f"{self.frontend_id}.json", json.dumps(own).encode())
        if not self.evicts or self.total <= self.max_bytes:
            return []
        views = [self.written]
        async for key, _, _ in self.store.list(ACCESS_DIR):
            raw = await self.store.read(key)
            try:
                views.append(json.loads(raw or b"{}"))
            except ValueError:
                continue  # another frontend's half-written view: the next round reads it
        victims = pick_victims(self.sizes, merge_access(views), self.max_bytes * 9 // 10)
        for key in victims:
            await self.store.delete(key)
            self.counters.evictions += 1
            self.counters.evicted_bytes += self.sizes.pop(key)
            self.access.pop(key, None)
        if victims:
            log.info("bucket size cap: deleted %d least recently used object(s), %d bytes now", len(victims), self.total)
        return victims

    async def _list(self) -> None:
        sizes, written = {}, {}
        async for key, size, modified in self.store.list(""):
            if "/" not in key:
                sizes[key], written[key] = size, modified
        self.sizes, self.written = sizes, written
        self._listed_at = time.monotonic()
