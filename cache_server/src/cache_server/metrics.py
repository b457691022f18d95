"""Prometheus metrics. Request counters are bumped by the HTTP layer; storage
figures are read from the backend at scrape time, so the hot path stays cheap."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .storage.disk import DiskStorage

disable_created_metrics()  # *_created series double the scrape size and say nothing useful here

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _StorageCollector(Collector):
    def __init__(self, storage: DiskStorage) -> None:
        self._storage = storage

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._storage.stats()
        counters = self._storage.counters
        yield GaugeMetricFamily("nxcache_entries", "Entries stored", value=stats.entries)
        yield GaugeMetricFamily("nxcache_size_bytes", "Bytes stored (headers included)", value=stats.bytes)
        yield GaugeMetricFamily("nxcache_max_size_bytes", "Configured size cap", value=stats.max_bytes)
        yield GaugeMetricFamily("nxcache_reserved_bytes", "Bytes reserved by uploads in flight", value=stats.reserved_bytes)
        yield GaugeMetricFamily("nxcache_free_disk_bytes", "Free bytes on the storage filesystem", value=stats.free_disk_bytes)
        yield CounterMetricFamily("nxcache_evictions", "Entries evicted (LRU or disk headroom)", value=counters.evictions)
        yield CounterMetricFamily("nxcache_evicted_bytes", "Bytes evicted", value=counters.evicted_bytes)
        yield CounterMetricFamily("nxcache_damaged_entries", "Entries found damaged and quarantined", value=counters.damaged)
        yield CounterMetricFamily("nxcache_storage_errors", "Storage I/O errors (disk full, EIO, ...)", value=counters.errors)


class Metrics:
    def __init__(self, storage: DiskStorage) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hits = Counter("nxcache_hits", "GET answered 200", registry=r)
        self.misses = Counter("nxcache_misses", "GET answered 404", registry=r)
        self.puts = Counter("nxcache_puts", "PUT stored (200)", registry=r)
        self.conflicts = Counter("nxcache_conflicts", "PUT of an existing key (409)", registry=r)
        self.rejected = Counter("nxcache_rejected", "Requests refused, by reason", ["reason"], registry=r)
        self.bytes_in = Counter("nxcache_received_bytes", "Artifact bytes received", registry=r)
        self.bytes_out = Counter("nxcache_sent_bytes", "Artifact bytes sent", registry=r)
        self.latency = Histogram(
            "nxcache_request_duration_seconds", "Request latency", ["method"], buckets=_BUCKETS, registry=r
        )
        self.latency_get = self.latency.labels("GET")
        self.latency_put = self.latency.labels("PUT")
        r.register(_StorageCollector(storage))

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
