"""Prometheus metrics.

The hot path bumps plain integers (a request costs tens of microseconds; a
prometheus_client Counter takes a lock per increment); the collector turns
them, and the storage figures, into the exposition format at scrape time.
"""

from __future__ import annotations

import bisect
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .storage.base import Storage

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class LatencyHistogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # last slot: above the largest bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


class Metrics(Collector):
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
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        yield CounterMetricFamily("nxcache_hits", "GET answered 200", value=self.hits)
        yield CounterMetricFamily("nxcache_misses", "GET answered 404", value=self.misses)
        yield CounterMetricFamily("nxcache_puts", "PUT stored (200)", value=self.puts)
        yield CounterMetricFamily("nxcache_conflicts", "PUT of an existing key (409)", value=self.conflicts)
        yield CounterMetricFamily("nxcache_received_bytes", "Artifact bytes received", value=self.bytes_in)
        yield CounterMetricFamily("nxcache_sent_bytes", "Artifact bytes sent", value=self.bytes_out)
        rejected = CounterMetricFamily("nxcache_rejected", "Requests refused, by reason", labels=["reason"])
        for reason, count in sorted(self.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        latency = HistogramMetricFamily("nxcache_request_duration_seconds", "Request latency", labels=["method"])
        for method, histogram in self.latency.items():
            latency.add_metric([method], histogram.cumulative(), histogram.total)
        yield latency
        stats = self._storage.stats()
        counters = self._storage.counters
        yield GaugeMetricFamily("nxcache_entries", "Entries stored", value=stats.entries)
        yield GaugeMetricFamily("nxcache_size_bytes", "Bytes stored (headers included)", value=stats.bytes)
        yield GaugeMetricFamily("nxcache_max_size_bytes", "Configured size cap", value=stats.max_bytes)
        yield GaugeMetricFamily("nxcache_reserved_bytes", "Bytes reserved by uploads in flight", value=stats.reserved_bytes)
        yield GaugeMetricFamily("nxcache_memory_cache_bytes", "Small bodies held in memory", value=stats.memory_bytes)
        yield CounterMetricFamily("nxcache_memory_hits", "GET hits answered from memory", value=counters.memory_hits)
        yield GaugeMetricFamily("nxcache_free_disk_bytes", "Free bytes on the storage filesystem", value=stats.free_disk_bytes)
        yield CounterMetricFamily("nxcache_evictions", "Entries evicted (LRU or disk headroom)", value=counters.evictions)
        yield CounterMetricFamily("nxcache_evicted_bytes", "Bytes evicted", value=counters.evicted_bytes)
        yield CounterMetricFamily("nxcache_damaged_entries", "Entries found damaged and quarantined", value=counters.damaged)
        yield CounterMetricFamily("nxcache_storage_errors", "Storage I/O errors (disk full, EIO, ...)", value=counters.errors)
