"""The disk storage when several server processes share its directory (`--workers`).

Each process holds a replica of the index. The files stay the truth: a key missing from the
replica is looked up on disk before it is a miss (unless the replica has heard every
announcement, `IndexObserver.caught_up`), and `peers` (peers.py) carries this replica's
changes to the others, which apply them with the `replica_*` methods.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

from ..storage.base import Blob, require_key
from ..storage.disk import INLINE_MAX, DiskStorage
from ..storage.uploads import DiskUpload, SmallUpload


class IndexObserver(Protocol):
    """Told of every change to this index that other replicas must learn (any thread)."""

    def added(self, key: str, size: int) -> None: ...

    def removed(self, key: str) -> None: ...

    def touched(self, key: str) -> None: ...

    def caught_up(self) -> bool:
        """True when this index has every entry the other processes published: a key it lacks
        is then not on disk (unless copied in by hand), and needs no look there."""


class SharedDiskStorage(DiskStorage):
    # Set by PeerLink.start (peers.py) on the worker's loop; None before and after.
    peers: IndexObserver | None = None

    def get(self, key: str) -> Blob | None:
        blob = super().get(key)
        peers = self.peers
        if peers is None:
            return blob
        if blob is not None:
            peers.touched(key)
            return blob
        if key in self._lru or peers.caught_up():
            return None
        # Another process may have just published it: its file is the truth.
        with self._lock:
            removals = self._removals
        return self._read(key, False, removals)

    def begin_put(self, key: str, size: int, *, exact: bool = False, owner: str = "") -> SmallUpload | DiskUpload:
        require_key(key)  # before its path is looked at
        peers = self.peers
        if peers is not None:
            # The replica may lag the files by a moment either way; a 409 must be true on disk.
            if key in self._lru:
                if not os.path.lexists(self.entry_path(key)):
                    self._forget(key)  # evicted or quarantined by another worker a moment ago
            elif (exact or size > INLINE_MAX) and not peers.caught_up() and os.path.lexists(self.entry_path(key)):
                # Published by another worker a moment ago. Only worth a look for a body that would
                # be written to disk, or when asked: a small one is held in memory and the link
                # refuses a duplicate at commit, while under steady uploads the replica is never
                # quite caught up and the look cost every small PUT an lstat (~10% of its CPU with
                # two workers).
                self._adopt(key)
        return super().begin_put(key, size, exact=exact, owner=owner)

    def _added(self, key: str, size: int) -> None:
        peers = self.peers
        if peers is not None:
            peers.added(key, size)

    def _removed(self, key: str) -> None:
        peers = self.peers
        if peers is not None:
            peers.removed(key)

    # ---------------------------------------------------- other workers' changes

    def replica_added(self, key: str, size: int) -> bool:
        """Index a key unless it is known; whether it was new."""
        return self._index_new(key, size)

    def replica_removed(self, key: str) -> None:
        with self._lock:
            self._let_go_locked(key)
            self._lru.remove(key)

    def replica_touched(self, keys: list[str]) -> None:
        with self._lock:
            touch = self._lru.touch
            for key in keys:
                touch(key)

    def after_fork(self) -> None:
        """In a freshly forked worker: own lock, own deleter thread, own upload names."""
        self._lock = threading.Lock()
        self._trash.after_fork(self._lock)
        self._pid = os.getpid()
