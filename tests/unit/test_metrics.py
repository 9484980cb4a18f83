"""Outcomes read from Cache-Status (RFC 9211), the counters, and their Prometheus exposition."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fwdproxy import exposition
from fwdproxy.metrics import (
    MAX_HOSTS,
    TIMELINE_MINUTES,
    Outcome,
    Served,
    Stats,
    cache_status_params,
    classify,
    merge,
    worker_summary,
)
from fwdproxy.store import StoreStats, TierStats

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("fwdproxy; hit; ttl=297", Outcome.HIT, id="9211 2.1 hit"),
        pytest.param(
            "fwdproxy; hit; ttl=-3; detail=max-stale", Outcome.HIT, id="hit served stale on request"
        ),
        pytest.param("fwdproxy; fwd=uri-miss; fwd-status=200; stored", Outcome.MISS, id="2.2 uri-miss"),
        pytest.param("fwdproxy; fwd=vary-miss; fwd-status=200", Outcome.MISS, id="2.2 vary-miss"),
        pytest.param("fwdproxy; fwd=request; fwd-status=200", Outcome.MISS, id="2.2 request no-cache"),
        pytest.param("fwdproxy; fwd=stale; fwd-status=304", Outcome.REVALIDATED, id="2.3 fwd-status 304"),
        pytest.param("fwdproxy; fwd=request; fwd-status=304", Outcome.REVALIDATED, id="client no-cache, 304"),
        pytest.param("fwdproxy; fwd=stale; fwd-status=200; stored", Outcome.REFRESH, id="stale, new body"),
        pytest.param(
            "fwdproxy; fwd=stale; ttl=-2; detail=stale-while-revalidate", Outcome.STALE, id="RFC 5861 3 swr"
        ),
        pytest.param(
            "fwdproxy; fwd=stale; fwd-status=503; detail=stale-if-error", Outcome.STALE, id="5861 4 sie"
        ),
        pytest.param("fwdproxy; fwd=uri-miss; collapsed", Outcome.COLLAPSED, id="2.6 collapsed"),
        pytest.param("fwdproxy; fwd=method; fwd-status=201", Outcome.BYPASS, id="2.2 method"),
        pytest.param("fwdproxy; fwd=bypass", Outcome.BYPASS, id="2.2 bypass"),
        pytest.param(None, Outcome.NONE, id="no field"),
        pytest.param("othercache; hit", Outcome.NONE, id="another cache's member only"),
        pytest.param("origin-cdn; hit, fwdproxy; fwd=uri-miss", Outcome.MISS, id="2 ours is the last member"),
        pytest.param('"fwdproxy"; HIT', Outcome.HIT, id="quoted name, upper-case param"),
    ],
)
def test_classify(value: str | None, expected: Outcome) -> None:
    assert classify(value) is expected


def test_cache_status_params() -> None:
    assert cache_status_params('fwdproxy; fwd=stale; detail="x y"') == {"fwd": "stale", "detail": "x y"}


def snapshot_after(served: list[Served], now: float = NOW) -> dict:
    stats = Stats(started=NOW - 100)
    for s in served:
        stats.record(s, now)
    return stats.snapshot(now)


def test_ratios_and_bytes() -> None:
    s = snapshot_after(
        [
            Served(Outcome.HIT, "a", 100),
            Served(Outcome.REVALIDATED, "a", 50, ttfb=0.02),
            Served(Outcome.MISS, "b", 850, ttfb=0.2),
            Served(Outcome.NONE, "c", 20),  # a 403 made by the proxy: neither cache nor origin
        ]
    )
    assert s["requests"]["total"] == 4 and s["hits"] == 1
    assert s["served_from_cache"] == 2 and s["cache_requests"] == 3
    assert s["hit_ratio"] == pytest.approx(2 / 3)
    assert s["bytes"] == {"from_cache": 150, "from_origin": 850} and s["bytes_saved"] == 150
    assert s["byte_hit_ratio"] == pytest.approx(0.15)
    assert s["top_hosts"] == [{"host": "a", "bytes_saved": 150, "requests": 2}]
    latency = s["origin_latency"]
    assert latency["count"] == 2 and latency["sum"] == pytest.approx(0.22)
    assert (
        latency["buckets"]["0.025"] == 1
        and latency["buckets"]["0.25"] == 2
        and latency["buckets"]["+Inf"] == 2
    )


def test_timeline_is_the_last_hour_per_minute() -> None:
    stats = Stats(started=NOW - 7200)
    stats.record(Served(Outcome.HIT, "a", 1), NOW - 3 * 3600)  # too old for the chart
    stats.record(Served(Outcome.HIT, "a", 1), NOW - 120)
    stats.record(Served(Outcome.MISS, "a", 1), NOW - 120)
    stats.record(Served(Outcome.HIT, "a", 1), NOW)
    timeline = stats.snapshot(NOW)["timeline"]
    assert len(timeline) == TIMELINE_MINUTES and timeline[-1]["minute"] == int(NOW // 60) * 60
    assert [(m["requests"], m["hit_ratio"]) for m in timeline[-3:]] == [(2, 0.5), (0, None), (1, 1.0)]
    assert sum(m["requests"] for m in timeline) == 3
    assert len(stats.minutes) <= TIMELINE_MINUTES


def test_hosts_are_bounded() -> None:
    stats = Stats(started=NOW)
    for i in range(MAX_HOSTS + 1):
        stats.record(Served(Outcome.HIT, f"h{i}", i), NOW)
    assert len(stats.hosts) <= MAX_HOSTS
    assert f"h{MAX_HOSTS}" in stats.hosts and "h0" not in stats.hosts


def families(snapshot: dict) -> dict:
    text = exposition.render(exposition.registry(lambda: snapshot)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_exposition_parses_and_carries_every_family() -> None:
    store = StoreStats(disk=TierStats(3, 4096, 8192, 1), memory=TierStats(2, 100, 1000, 0))
    upstreams = [
        {"group": "g", "member": "10.0.0.1:3128", "requests": 7, "failures": 1, "ejections": 0, "active": 2},
        {"group": "g", "member": "10.0.0.2:3128", "requests": 3, "failures": 4, "ejected": True},
    ]
    stats = Stats(started=NOW)
    for served in (
        Served(Outcome.HIT, "a", 10),
        Served(Outcome.HIT, "a", 10),
        Served(Outcome.MISS, "a", 5, 0.3),
    ):
        stats.record(served, NOW)
    stats.open_connections = 4
    f = families(stats.snapshot(NOW, store=store, upstreams=upstreams))
    requests = {s.labels["cache_status"]: s.value for s in f["fwdproxy_requests"].samples}
    assert requests["hit"] == 2 and requests["miss"] == 1 and set(requests) == {o.value for o in Outcome}
    served = {s.labels["source"]: s.value for s in f["fwdproxy_served_bytes"].samples}
    assert served == {"cache": 20, "origin": 5}
    assert f["fwdproxy_hit_ratio"].samples[0].value == pytest.approx(2 / 3)
    assert f["fwdproxy_open_connections"].samples[0].value == 4
    ttfb = {s.name: s for s in f["fwdproxy_origin_ttfb_seconds"].samples if s.name.endswith("_count")}
    assert ttfb["fwdproxy_origin_ttfb_seconds_count"].value == 1
    size = {s.labels["tier"]: s.value for s in f["fwdproxy_cache_bytes"].samples}
    assert size == {"memory": 100, "disk": 4096}
    evictions = {s.labels["tier"]: s.value for s in f["fwdproxy_cache_evictions"].samples}
    assert evictions == {"memory": 0, "disk": 1}
    up = {s.labels["member"]: s.value for s in f["fwdproxy_upstream_up"].samples}
    assert up == {"10.0.0.1:3128": 1, "10.0.0.2:3128": 0}
    assert {s.value for s in f["fwdproxy_upstream_requests"].samples} == {7, 3}


def test_exposition_without_cache_or_upstreams() -> None:
    f = families(Stats(started=NOW).snapshot(NOW))
    assert "fwdproxy_cache_bytes" not in f and "fwdproxy_upstream_requests" not in f
    assert f["fwdproxy_collapsed_requests"].samples[0].value == 0


# -- several workers' counters added up (--workers N, see fwdproxy.workerstats) ------------------------


def worker_stats(started: float, served: list[tuple[Served, float]], connections: int = 0) -> Stats:
    stats = Stats(started=started)
    for s, at in served:
        stats.record(s, at)
    stats.open_connections = connections
    return stats


def test_merge_adds_counters_minutes_hosts_and_latency_buckets() -> None:
    one = worker_stats(
        NOW - 50,
        [(Served(Outcome.HIT, "a", 100), NOW - 120), (Served(Outcome.MISS, "b", 7, ttfb=0.02), NOW)],
        connections=2,
    )
    two = worker_stats(
        NOW - 80,
        [
            (Served(Outcome.HIT, "a", 30), NOW),
            (Served(Outcome.HIT, "c", 5), NOW),
            (Served(Outcome.MISS, "b", 9, ttfb=3.0), NOW - 120),
        ],
        connections=1,
    )
    two.purges = 4
    total = merge([one.state(), two.state()], started=NOW)
    s = total.snapshot(NOW)
    assert s["requests"]["total"] == 5 and s["hits"] == 3
    assert s["requests"]["by_cache_status"]["miss"] == 2
    assert s["bytes"] == {"from_cache": 135, "from_origin": 16}
    assert s["open_connections"] == 3 and s["purges"] == 4
    assert s["started"] == NOW - 80, "the earliest start is the run's start"
    # per minute: two minutes ago one hit + one miss, now one miss + two hits
    assert [(m["requests"], m["from_cache"]) for m in s["timeline"][-3:]] == [(2, 1), (0, 0), (3, 2)]
    hosts = {h["host"]: (h["bytes_saved"], h["requests"]) for h in s["top_hosts"]}
    assert hosts == {"a": (130, 2), "c": (5, 1)}
    latency = s["origin_latency"]
    assert latency["count"] == 2 and latency["sum"] == pytest.approx(3.02)
    assert (
        latency["buckets"]["0.025"] == 1 and latency["buckets"]["5"] == 2 and latency["buckets"]["+Inf"] == 2
    )


def test_state_round_trips_through_json() -> None:
    import json

    one = worker_stats(NOW, [(Served(Outcome.STALE, "h", 3), NOW), (Served(Outcome.NONE, "h", 0), NOW)])
    again = merge([json.loads(json.dumps(one.state()))], started=NOW)
    assert again.snapshot(NOW) == one.snapshot(NOW)


def test_a_replacement_carries_on_without_its_predecessors_connections() -> None:
    dead = worker_stats(NOW - 10, [(Served(Outcome.HIT, "a", 1), NOW)], connections=5)
    replacement = Stats(started=NOW)
    replacement.add(dead.state(), connections=False)
    replacement.record(Served(Outcome.MISS, "a", 1), NOW)
    s = replacement.snapshot(NOW)
    assert s["requests"]["total"] == 2 and s["open_connections"] == 0 and s["started"] == NOW - 10


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param({"version": 99}, id="other version"),
        pytest.param({"requests": {"hit": -1}}, id="negative count"),
        pytest.param({"requests": {"bogus": 1}}, id="unknown outcome"),
        pytest.param({"latency_counts": [1, 2]}, id="other buckets"),
        pytest.param({"hosts": {"a": [1]}}, id="short host row"),
        pytest.param({"minutes": {"x": [1, 1]}}, id="minute not a number"),
    ],
)
def test_a_damaged_state_adds_nothing(damage: dict) -> None:
    stats = worker_stats(NOW, [(Served(Outcome.HIT, "a", 1), NOW)])
    state = {**stats.state(), **damage}
    total = Stats(started=NOW)
    with pytest.raises(ValueError):
        total.add(state)
    assert total.snapshot(NOW)["requests"]["total"] == 0 and not total.hosts


def test_worker_rows_and_their_exposition() -> None:
    one = worker_stats(NOW, [(Served(Outcome.HIT, "a", 10), NOW)] * 3, connections=1)
    two = worker_stats(NOW, [(Served(Outcome.MISS, "a", 10), NOW)] * 2)
    rows = [worker_summary(1, 101, one.state(), NOW), worker_summary(2, 102, two.state(), NOW - 1)]
    assert rows[0] == {
        "worker": 1, "pid": 101, "updated": NOW, "requests": 3, "served_from_cache": 3, "bytes_saved": 30,
        "open_connections": 1,
    }  # fmt: skip
    s = merge([one.state(), two.state()], started=NOW).snapshot(NOW, workers=rows)
    assert s["worker_count"] == 2 and s["requests"]["total"] == sum(r["requests"] for r in s["workers"])
    f = families(s)
    assert f["fwdproxy_workers"].samples[0].value == 2
    per = {x.labels["worker"]: x.value for x in f["fwdproxy_worker_requests"].samples}
    assert per == {"1": 3, "2": 2}
    assert sum(x.value for x in f["fwdproxy_requests"].samples) == 5


@pytest.mark.parametrize(
    "value",
    [
        "fwdproxy; hit; fwd=stale; detail=origin-error",
        "fwdproxy; hit; fwd=stale; detail=serve-stale-on-error",
        "fwdproxy; fwd=stale; fwd-status=503; detail=serve-stale-on-error",
        "fwdproxy; fwd=stale; fwd-status=503; detail=stale-if-error",
    ],
)
def test_an_entry_standing_in_for_a_failed_origin_counts_as_stale(value: str) -> None:
    assert classify(value) is Outcome.STALE


def test_requests_in_one_minute_then_the_next_and_back_are_counted_in_their_own_minutes() -> None:
    """record() keeps the last request's minute bucket at hand: a request in the next minute, or one with
    an earlier clock (a wall clock set back), must still land in its own minute."""
    start = int(NOW // 60) * 60.0
    stats = Stats(started=start)
    for when in (start, start + 59.999, start + 60.0, start + 61, start + 30, start - 0.001, start + 120):
        stats.record(Served(Outcome.HIT, "a", 1), when)
    minute = int(start // 60)
    assert stats.minutes == {minute - 1: [1, 1], minute: [3, 3], minute + 1: [2, 2], minute + 2: [1, 1]}
