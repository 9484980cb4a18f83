"""/metrics: a stats snapshot in the Prometheus text format, from a registry of our own (not the global one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format, as prometheus_client.CONTENT_TYPE_LATEST says for 0.0.4."""

Snapshot = Callable[[], Mapping[str, Any]]


class StatsCollector:
    """A prometheus_client collector that turns a fresh snapshot (metrics.Stats.snapshot) into families.

    Values are read at scrape time, so the request path only increments plain integers.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        requests = CounterMetricFamily(
            "fwdproxy_requests",
            "Client requests by what the cache did (Cache-Status).",
            labels=["cache_status"],
        )
        for status, n in s["requests"]["by_cache_status"].items():
            requests.add_metric([status], n)
        yield requests
        served = CounterMetricFamily(
            "fwdproxy_served_bytes", "Response body bytes sent to clients, by source.", labels=["source"]
        )
        served.add_metric(["cache"], s["bytes"]["from_cache"])
        served.add_metric(["origin"], s["bytes"]["from_origin"])
        yield served
        yield GaugeMetricFamily(
            "fwdproxy_hit_ratio",
            "Share of cacheable requests answered from the cache since start.",
            s["hit_ratio"],
        )
        yield GaugeMetricFamily(
            "fwdproxy_byte_hit_ratio",
            "Share of body bytes served from the cache since start.",
            s["byte_hit_ratio"],
        )
        yield CounterMetricFamily(
            "fwdproxy_collapsed_requests", "Requests answered by another request in flight.", s["collapsed"]
        )
        yield CounterMetricFamily(
            "fwdproxy_purged_entries", "Entries removed by PURGE requests.", s["purges"]
        )
        latency = s["origin_latency"]
        yield HistogramMetricFamily(
            "fwdproxy_origin_ttfb_seconds",
            "Time from a forwarded request to the first byte of the origin's response.",
            buckets=list(latency["buckets"].items()),
            sum_value=latency["sum"],
        )
        yield GaugeMetricFamily(
            "fwdproxy_open_connections", "Client connections open now.", s["open_connections"]
        )
        yield GaugeMetricFamily(
            "fwdproxy_start_time_seconds", "When the proxy started (Unix time).", s["started"]
        )
        yield GaugeMetricFamily(
            "fwdproxy_workers", "Processes whose counters these metrics add up.", s.get("worker_count", 1)
        )
        per_worker = CounterMetricFamily(
            "fwdproxy_worker_requests", "Client requests answered by each worker.", labels=["worker"]
        )
        for w in s.get("workers") or []:
            per_worker.add_metric([str(w["worker"])], w["requests"])
        yield per_worker
        yield from _cache_families(s.get("cache"))
        yield from _upstream_families(s.get("upstreams"))
        yield from _shared_families(s.get("shared"))


def _cache_families(cache: Mapping[str, Any] | None) -> Iterator[Metric]:
    if cache is None:
        return
    entries = GaugeMetricFamily("fwdproxy_cache_entries", "Entries held, per tier.", labels=["tier"])
    size = GaugeMetricFamily(
        "fwdproxy_cache_bytes", "Bytes held against the limit, per tier.", labels=["tier"]
    )
    limit = GaugeMetricFamily("fwdproxy_cache_limit_bytes", "Size limit, per tier.", labels=["tier"])
    evictions = CounterMetricFamily(
        "fwdproxy_cache_evictions",
        "Entries evicted to stay within the limit (disk: by this process; memory: by every worker).",
        labels=["tier"],
    )
    for tier in ("memory", "disk"):
        if (t := cache.get(tier)) is None:
            continue
        entries.add_metric([tier], t["entries"])
        size.add_metric([tier], t["bytes"])
        limit.add_metric([tier], t["limit"])
        evictions.add_metric([tier], t["evictions"])
    yield from (entries, size, limit, evictions)
    yield CounterMetricFamily(
        "fwdproxy_cache_errors", "Storage faults seen by this process.", cache["errors"]
    )
    yield GaugeMetricFamily(
        "fwdproxy_cache_disk_full", "1 while the disk refuses writes.", int(cache["disk_full"])
    )


SHARED_STATES = ("off", "connected", "degraded", "full")


def _shared_families(shared: Mapping[str, Any] | None) -> Iterator[Metric]:
    """The shared tier (issue 20): lookups by result, bytes, errors, latency and its state."""
    shared = shared or {"state": "off"}
    state = GaugeMetricFamily(
        "fwdproxy_shared_state", "1 for the shared tier's current state.", labels=["state"]
    )
    for name in SHARED_STATES:
        state.add_metric([name], int(shared.get("state") == name))
    yield state
    if shared.get("state", "off") == "off":
        return
    lookups = CounterMetricFamily(
        "fwdproxy_shared_lookups", "Local misses looked up in the shared tier, by result.", labels=["result"]
    )
    lookups.add_metric(["hit"], shared["hits"])
    lookups.add_metric(["miss"], shared["misses"])
    yield lookups
    moved = CounterMetricFamily(
        "fwdproxy_shared_bytes", "Body bytes read from and written to the shared tier.", labels=["direction"]
    )
    moved.add_metric(["read"], shared["bytes_read"])
    moved.add_metric(["written"], shared["bytes_written"])
    yield moved
    yield CounterMetricFamily("fwdproxy_shared_errors", "Failed shared-tier operations.", shared["errors"])
    yield CounterMetricFamily(
        "fwdproxy_shared_uploads", "Entries copied to the shared tier.", shared["uploads"]
    )
    yield CounterMetricFamily(
        "fwdproxy_shared_dropped",
        "Shared entries dropped: a chunk evicted or not matching.",
        shared["dropped"],
    )
    yield CounterMetricFamily(
        "fwdproxy_shared_collapsed", "Lookups that waited for another node's download.", shared["collapsed"]
    )
    yield SummaryMetricFamily(
        "fwdproxy_shared_lookup_seconds",
        "Time of the shared tier's metadata lookups.",
        count_value=shared["lookups"],
        sum_value=shared["lookup_seconds"],
    )


def _upstream_families(upstreams: list[Mapping[str, Any]] | None) -> Iterator[Metric]:
    if not upstreams:
        return
    labels = ["group", "member"]
    requests = CounterMetricFamily(
        "fwdproxy_upstream_requests", "Requests sent to each upstream.", labels=labels
    )
    failures = CounterMetricFamily(
        "fwdproxy_upstream_failures", "Failed attempts per upstream.", labels=labels
    )
    ejections = CounterMetricFamily(
        "fwdproxy_upstream_ejections", "Times each upstream was ejected.", labels=labels
    )
    active = GaugeMetricFamily("fwdproxy_upstream_active", "Requests in flight per upstream.", labels=labels)
    up = GaugeMetricFamily("fwdproxy_upstream_up", "1 unless the upstream is ejected now.", labels=labels)
    ttfb = GaugeMetricFamily(
        "fwdproxy_upstream_response_seconds", "Mean time to first byte per upstream.", labels=labels
    )
    for u in upstreams:
        key = [str(u.get("group", "")), str(u.get("member", ""))]
        requests.add_metric(key, u.get("requests", 0))
        failures.add_metric(key, u.get("failures", 0))
        ejections.add_metric(key, u.get("ejections", 0))
        active.add_metric(key, u.get("active", 0))
        up.add_metric(key, 0 if u.get("ejected") else 1)
        if u.get("avg_response_time") is not None:
            ttfb.add_metric(key, u["avg_response_time"])
    yield from (requests, failures, ejections, active, up, ttfb)


def registry(snapshot: Snapshot) -> CollectorRegistry:
    """A registry of its own holding only our collector (the global one would add process metrics twice)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatsCollector(snapshot))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    """The text exposition of everything in the registry."""
    return generate_latest(reg)
