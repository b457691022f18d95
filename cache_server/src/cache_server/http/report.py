"""/health and /metrics: this process's counters, with the other workers' added in (--workers)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from .. import __version__
from ..auth import TokenStore
from ..metrics import merge_snapshots
from ..storage.base import Storage, StorageFault

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..replication.peers import PeerLink, Snapshot
    from .handler import CacheCycle

_PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
_ERROR_RECENT_S = 600.0


class Reports:
    def __init__(self, storage: Storage, tokens: TokenStore, metrics: Metrics, peers: PeerLink | None) -> None:
        self.storage = storage
        self.tokens = tokens
        self.metrics = metrics
        self.peers = peers
        self.started = time.time()

    def answer(self, cycle: CacheCycle, kind: str) -> None:
        """Answer /health or /metrics (`kind`), after asking the other workers when there are any."""
        peers = self.peers
        if peers is None:
            self._send(cycle, kind, [])
            return
        answers: list[Snapshot] = []

        def ask(done) -> None:  # type: ignore[no-untyped-def]
            def answered(snapshots: list[Snapshot]) -> None:
                answers.extend(snapshots)
                done(None)

            peers.gather(answered)

        cycle.conn.wait_for(cycle.request, ask, lambda error: self._send(cycle, kind, answers))

    def _send(self, cycle: CacheCycle, kind: str, peers: list[Snapshot]) -> None:
        if kind == "health":
            cycle.send(b"application/json", self.health(peers))
        else:
            cycle.send(_PROMETHEUS, self.metrics.render(peers))

    def health(self, peers: list[Snapshot]) -> bytes:
        stats = self.storage.stats()
        last = self.storage.counters.last_error
        if peers:
            newest = merge_snapshots([self.metrics.snapshot(stats), *peers])["last_error"]
            last = None if newest is None else StorageFault(*newest)
        problems = []
        if last is not None and time.time() - last.at < _ERROR_RECENT_S:
            problems.append(f"storage error {int(time.time() - last.at)}s ago")
        if 0 <= stats.free_disk_bytes < stats.min_free_disk_bytes:
            problems.append("free disk below --min-free-disk")
        if 0 <= stats.free_disk_files < stats.min_free_disk_files:
            problems.append("free inodes below the 1% the cache keeps")
        if not len(self.tokens):
            problems.append("no tokens: every request is refused")
        problems += getattr(self.storage, "problems", list)()  # the S3 backend: its store failing
        body = {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 1),
            "entries": stats.entries,
            "bytes": stats.bytes,
            "max_bytes": stats.max_bytes,
            "free_disk_bytes": stats.free_disk_bytes,
            "min_free_disk_bytes": stats.min_free_disk_bytes,
            "free_disk_files": stats.free_disk_files,
            "max_entries": stats.max_entries,
            "tokens": len(self.tokens),
            "last_storage_error": None if last is None else {"at": last.at, "op": last.op, "message": last.message},
        }
        return json.dumps(body).encode()
