"""Prometheus metrics.

The hot path bumps plain integers (a request costs tens of microseconds; a
prometheus_client Counter takes a lock per increment); the collector turns
them, and the storage figures, into the exposition format at scrape time.
"""

from __future__ import annotations

import bisect
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .storage.base import Storage, StorageStats

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class LatencyHistogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # last slot: above the largest bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds


class Metrics:
    """The counters, and their collector for prometheus_client (any object with `collect`)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.hits = 0
        self.misses = 0
        self.puts = 0
        self.conflicts = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.rejected: Tally[str] = Tally()
        self.latency = {"GET": LatencyHistogram(), "PUT": LatencyHistogram()}
        self._peers: list[dict[str, Any]] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def render(self, peers: list[dict[str, Any]] | None = None) -> bytes:
        """The exposition text; `peers` are the other workers' `snapshot()`s, added in."""
        self._peers = peers or []
        try:
            return generate_latest(self.registry)
        finally:
            self._peers = []

    def snapshot(self, stats: StorageStats | None = None) -> dict[str, Any]:
        """This process's counters, JSON-able, so another worker can add them to its own
        (`stats`: the storage's, when the caller has just read them)."""
        stats = self._storage.stats() if stats is None else stats
        counters = self._storage.counters
        last = counters.last_error
        return {
            "hits": self.hits, "misses": self.misses, "puts": self.puts, "conflicts": self.conflicts,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "rejected": dict(self.rejected),
            "latency": {method: [h.counts, h.total] for method, h in self.latency.items()},
            "memory_hits": counters.memory_hits, "evictions": counters.evictions,
            "evicted_bytes": counters.evicted_bytes, "damaged": counters.damaged, "errors": counters.errors,
            "reserved_bytes": stats.reserved_bytes, "memory_bytes": stats.memory_bytes,
            "last_error": None if last is None else [last.at, last.op, last.message],
        }

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        stats = self._storage.stats()  # entries and bytes: this worker's replica of the index
        total = merge_snapshots([self.snapshot(stats), *self._peers])
        yield CounterMetricFamily("nxcache_hits", "GET answered 200", value=total["hits"])
        yield CounterMetricFamily("nxcache_misses", "GET answered 404", value=total["misses"])
        yield CounterMetricFamily("nxcache_puts", "PUT stored (200)", value=total["puts"])
        yield CounterMetricFamily("nxcache_conflicts", "PUT of an existing key (409)", value=total["conflicts"])
        yield CounterMetricFamily("nxcache_received_bytes", "Artifact bytes received", value=total["bytes_in"])
        yield CounterMetricFamily("nxcache_sent_bytes", "Artifact bytes sent", value=total["bytes_out"])
        rejected = CounterMetricFamily("nxcache_rejected", "Requests refused, by reason", labels=["reason"])
        for reason, count in sorted(total["rejected"].items()):
            rejected.add_metric([reason], count)
        yield rejected
        latency = HistogramMetricFamily("nxcache_request_duration_seconds", "Request latency", labels=["method"])
        for method, (counts, seconds) in total["latency"].items():
            latency.add_metric([method], cumulative(counts), seconds)
        yield latency
        yield GaugeMetricFamily("nxcache_entries", "Entries stored", value=stats.entries)
        yield GaugeMetricFamily("nxcache_size_bytes", "Bytes stored (headers included)", value=stats.bytes)
        yield GaugeMetricFamily("nxcache_max_size_bytes", "Configured size cap", value=stats.max_bytes)
        yield GaugeMetricFamily("nxcache_reserved_bytes", "Bytes reserved by uploads in flight", value=total["reserved_bytes"])
        yield GaugeMetricFamily("nxcache_memory_cache_bytes", "Small bodies held in memory", value=total["memory_bytes"])
        yield CounterMetricFamily("nxcache_memory_hits", "GET hits answered from memory", value=total["memory_hits"])
        yield GaugeMetricFamily("nxcache_free_disk_bytes", "Free bytes on the storage filesystem", value=stats.free_disk_bytes)
        yield GaugeMetricFamily("nxcache_free_disk_files", "Free inodes on the storage filesystem (-1: no limit)",
                                value=stats.free_disk_files)
        yield CounterMetricFamily("nxcache_evictions", "Entries evicted (LRU or disk headroom)", value=total["evictions"])
        yield CounterMetricFamily("nxcache_evicted_bytes", "Bytes evicted", value=total["evicted_bytes"])
        yield CounterMetricFamily("nxcache_damaged_entries", "Entries found damaged and quarantined", value=total["damaged"])
        yield CounterMetricFamily("nxcache_storage_errors", "Storage I/O errors (disk full, EIO, ...)", value=total["errors"])


def cumulative(counts: list[int]) -> list[tuple[str, int]]:
    out, running = [], 0
    for bound, count in zip((*map(str, BUCKETS), "+Inf"), counts):
        running += count
        out.append((bound, running))
    return out


def merge_snapshots(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the workers' counters; the most recent storage error wins."""
    total = dict(snapshots[0])
    total["rejected"] = Tally(total["rejected"])
    total["latency"] = {method: [list(counts), seconds] for method, (counts, seconds) in total["latency"].items()}
    for other in snapshots[1:]:
        for name, value in other.items():
            if name == "rejected":
                total["rejected"].update(value)
            elif name == "latency":
                for method, (counts, seconds) in value.items():
                    mine = total["latency"].setdefault(method, [[0] * len(counts), 0.0])
                    mine[0] = [a + b for a, b in zip(mine[0], counts)]
                    mine[1] += seconds
            elif name == "last_error":
                if value is not None and (total["last_error"] is None or value[0] > total["last_error"][0]):
                    total["last_error"] = value
            else:
                total[name] += value
    return total
