"""What the proxy served and from where: outcomes read from Cache-Status, counted for metrics and the status page."""

from __future__ import annotations

import enum
import functools
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fwdproxy.cache.status import CACHE_NAME
from fwdproxy.store import StoreStats, TierStats


class Outcome(enum.StrEnum):
    """How one request was answered, as its Cache-Status (RFC 9211) tells it; the label of the metrics."""

    HIT = "hit"
    """A fresh stored response, no origin contact (§2.1 hit)."""
    STALE = "stale"
    """A stale stored response served without a new body from the origin (stale-while-revalidate,
    stale-if-error)."""
    REVALIDATED = "revalidated"
    """The origin answered our validators with 304; the body came from the cache."""
    COLLAPSED = "collapsed"
    """Answered from another request's response to the same URL in flight (§2.6)."""
    REFRESH = "refresh"
    """A stale entry was replaced by a new response from the origin."""
    MISS = "miss"
    """Nothing usable was stored (uri-miss, vary-miss, miss, or the client's own directives)."""
    BYPASS = "bypass"
    """The cache does not handle the request (fwd=bypass, or a method it never serves)."""
    NONE = "none"
    """No Cache-Status: answered by the proxy itself (403, 502, 504) before the cache saw it."""


FROM_CACHE = frozenset({Outcome.HIT, Outcome.STALE, Outcome.REVALIDATED, Outcome.COLLAPSED})
"""Outcomes whose body the origin did not send: they count as hits and as bytes saved."""
FROM_ORIGIN = frozenset({Outcome.REFRESH, Outcome.MISS, Outcome.BYPASS})
STALE_SERVED = frozenset(
    {"stale-while-revalidate", "stale-if-error", "max-stale", "serve-stale-on-error", "origin-error", "fresh"}
)
"""Cache-Status details with which a stored entry answered in the origin's stead (RFC 5861; the reasons
cache.stale_on_error gives, "fresh" for a fresh entry whose revalidation failed)."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Time-to-first-byte buckets (seconds): prometheus_client's defaults, plus 30 s for slow registries."""
TIMELINE_MINUTES = 60
"""The status page charts the last hour, one bucket per minute."""
STATE_VERSION = 1
"""Version of ``Stats.state()``: a worker ignores another's file of a different version."""
MAX_HOSTS = 10_000
"""Hosts tracked for "top hosts by bytes saved"; beyond that the least useful half is forgotten, so a
crawl through a million hosts cannot grow memory without bound."""


def cache_status_params(value: str | None, cache_name: str = CACHE_NAME) -> dict[str, str] | None:
    """The parameters of our member of a Cache-Status field (RFC 9211 §2), e.g. {"hit": "", "ttl": "297"}.

    The last member named ``cache_name`` is ours (caches append); None when there is none.
    """
    if not value:
        return None
    found: dict[str, str] | None = None
    for member in value.split(","):
        name, *params = (p.strip() for p in member.split(";"))
        if name.strip('"') != cache_name:
            continue
        found = {}
        for param in params:
            key, _, val = param.partition("=")
            found[key.strip().lower()] = val.strip().strip('"')
    return found


@functools.lru_cache(
    maxsize=1024
)  # a pure function of a header value that repeats (ttl= changes by the second)
def classify(cache_status: str | None, cache_name: str = CACHE_NAME) -> Outcome:
    """The outcome a Cache-Status value describes (see Outcome); NONE when the cache did not answer."""
    params = cache_status_params(cache_status, cache_name)
    if params is None:
        return Outcome.NONE
    if "collapsed" in params:
        return Outcome.COLLAPSED
    fwd = params.get("fwd", "miss")
    if params.get("detail") in STALE_SERVED and fwd == "stale":
        return Outcome.STALE  # before "hit": an entry standing in for a failed origin says both
    if "hit" in params:
        return Outcome.HIT
    fwd_status = params.get("fwd-status")
    if fwd_status == "304" and fwd in ("stale", "request"):
        return Outcome.REVALIDATED
    if fwd in ("bypass", "method"):
        return Outcome.BYPASS
    if fwd == "stale" and fwd_status is not None:
        return Outcome.REFRESH
    return Outcome.MISS


@dataclass(frozen=True, slots=True)
class Served:
    """One answered client request, as the metrics need it."""

    outcome: Outcome
    host: str
    body_bytes: int
    """Body bytes sent to the client."""
    ttfb: float | None = None
    """Seconds from the request to the origin's first response byte; None when no origin was asked."""


class Stats:
    """Counters since start. Plain integers on the request path; everything else is computed when read."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.requests: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self.bytes_from_cache = 0
        self.bytes_from_origin = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.open_connections = 0
        self.purges = 0
        """Entries removed by PURGE requests."""
        self.fast_hits = 0
        """Requests the fast hit layer answered (issue 21), also counted in ``requests``."""
        self.fast_sendfile_hits = 0
        """Of ``fast_hits``, disk hits whose body went from its file to the client socket by sendfile."""
        self.minutes: dict[int, list[int]] = {}
        """Minute (epoch // 60) → [requests, served from cache], the last TIMELINE_MINUTES only."""
        self.hosts: dict[str, list[int]] = {}
        """Host → [bytes saved, requests served from cache]."""
        self._bucket: list[int] = []
        self._minute_starts = self._minute_ends = 0.0
        """The bucket of ``minutes`` the last request was counted in, and the minute it counts."""

    def record(self, served: Served, now: float) -> None:
        """Count one answered request."""
        outcome, size, ttfb = served.outcome, served.body_bytes, served.ttfb
        self.requests[outcome] += 1
        cached = outcome in FROM_CACHE
        if cached:
            self.bytes_from_cache += size
            host = self.hosts.get(served.host)
            if host is None:
                if len(self.hosts) >= MAX_HOSTS:
                    self._forget_hosts()
                host = self.hosts[served.host] = [0, 0]
            host[0] += size
            host[1] += 1
        elif outcome is not Outcome.NONE or ttfb is not None:
            self.bytes_from_origin += size
        if ttfb is not None:
            index = next((i for i, b in enumerate(LATENCY_BUCKETS) if ttfb <= b), len(LATENCY_BUCKETS))
            self.latency_counts[index] += 1
            self.latency_sum += ttfb
        if now < self._minute_ends and now >= self._minute_starts:
            bucket = self._bucket  # the same minute as the last request: no division, no lookup
        else:
            minute = int(now // 60)
            known = self.minutes.get(minute)
            if known is None:
                bucket = self.minutes[minute] = [0, 0]
                for old in [m for m in self.minutes if m <= minute - TIMELINE_MINUTES]:
                    del self.minutes[old]
            else:
                bucket = known
            self._bucket, self._minute_starts, self._minute_ends = bucket, minute * 60.0, (minute + 1) * 60.0
        bucket[0] += 1
        bucket[1] += cached

    def state(self) -> dict[str, Any]:
        """The counters as JSON values that add up across processes (what a worker shares, see workerstats)."""
        return {
            "version": STATE_VERSION,
            "started": self.started,
            "requests": {o.value: n for o, n in self.requests.items()},
            "bytes_from_cache": self.bytes_from_cache,
            "bytes_from_origin": self.bytes_from_origin,
            "latency_counts": list(self.latency_counts),
            "latency_sum": self.latency_sum,
            "open_connections": self.open_connections,
            "purges": self.purges,
            "fast_hits": self.fast_hits,
            "fast_sendfile_hits": self.fast_sendfile_hits,
            "minutes": {str(m): list(v) for m, v in self.minutes.items()},
            "hosts": {h: list(v) for h, v in self.hosts.items()},
        }

    def add(self, state: Mapping[str, Any], *, connections: bool = True) -> None:
        """Add another process's counters (a ``state()``) into these: counters and latency buckets add,
        minutes add per minute, hosts merge. ``connections=False`` leaves open connections out (those of a
        dead worker closed with it). The earlier start wins.

        Raises:
            ValueError: the state is not one this version wrote (nothing is added then).
        """
        try:
            if state["version"] != STATE_VERSION:
                raise ValueError(f"stats state version {state['version']!r}, expected {STATE_VERSION}")
            requests = {Outcome(k): _count(v) for k, v in state["requests"].items()}
            latency = [_count(v) for v in state["latency_counts"]]
            if len(latency) != len(self.latency_counts):
                raise ValueError("latency buckets differ")
            minutes = {int(m): (_count(v[0]), _count(v[1])) for m, v in state["minutes"].items()}
            hosts = {str(h): (_count(v[0]), _count(v[1])) for h, v in state["hosts"].items()}
            scalars = [
                _count(state[k])
                for k in ("bytes_from_cache", "bytes_from_origin", "open_connections", "purges")
            ]
            fast_hits = _count(state.get("fast_hits", 0))  # absent in a state written before issue 21
            fast_sendfile_hits = _count(state.get("fast_sendfile_hits", 0))  # absent in older states
            started, latency_sum = float(state["started"]), float(state["latency_sum"])
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"not a stats state: {e!r}") from None
        for outcome, n in requests.items():
            self.requests[outcome] += n
        self.latency_counts = [a + b for a, b in zip(self.latency_counts, latency, strict=True)]
        self.latency_sum += latency_sum
        for m, (n, cached) in minutes.items():
            bucket = self.minutes.setdefault(m, [0, 0])
            bucket[0] += n
            bucket[1] += cached
        for h, (saved, n) in hosts.items():
            entry = self.hosts.setdefault(h, [0, 0])
            entry[0] += saved
            entry[1] += n
        if len(self.hosts) > MAX_HOSTS:
            self._forget_hosts()
        self.bytes_from_cache += scalars[0]
        self.bytes_from_origin += scalars[1]
        if connections:
            self.open_connections += scalars[2]
        self.purges += scalars[3]
        self.fast_hits += fast_hits
        self.fast_sendfile_hits += fast_sendfile_hits
        self.started = min(self.started, started)

    def _forget_hosts(self) -> None:
        keep = heapq.nlargest(MAX_HOSTS // 2, self.hosts.items(), key=lambda item: item[1][0])
        self.hosts = dict(keep)

    def snapshot(
        self,
        now: float,
        *,
        store: StoreStats | None = None,
        upstreams: Sequence[Mapping[str, Any]] | None = None,
        top: int = 10,
        workers: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Everything, as plain JSON-ready values: /stats.json, and what /metrics and / are made from."""
        by_status = {o.value: n for o, n in self.requests.items()}
        handled = sum(n for o, n in self.requests.items() if o is not Outcome.NONE)
        from_cache = sum(self.requests[o] for o in FROM_CACHE)
        served_bytes = self.bytes_from_cache + self.bytes_from_origin
        minute = int(now // 60)
        timeline = []
        for m in range(minute - TIMELINE_MINUTES + 1, minute + 1):
            requests, cached = self.minutes.get(m, (0, 0))
            ratio = cached / requests if requests else None
            timeline.append(
                {"minute": m * 60, "requests": requests, "from_cache": cached, "hit_ratio": ratio}
            )
        hosts = heapq.nlargest(top, self.hosts.items(), key=lambda item: item[1][0])
        cumulative, buckets = 0, {}
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.latency_counts, strict=True):
            cumulative += count
            buckets["+Inf" if bound == float("inf") else f"{bound:g}"] = cumulative
        return {
            "started": self.started,
            "uptime_seconds": max(0.0, now - self.started),
            "requests": {"total": sum(self.requests.values()), "by_cache_status": by_status},
            "hits": self.requests[Outcome.HIT],
            "served_from_cache": from_cache,
            "cache_requests": handled,
            "hit_ratio": from_cache / handled if handled else 0.0,
            "collapsed": self.requests[Outcome.COLLAPSED],
            "bytes": {"from_cache": self.bytes_from_cache, "from_origin": self.bytes_from_origin},
            "bytes_saved": self.bytes_from_cache,
            "byte_hit_ratio": self.bytes_from_cache / served_bytes if served_bytes else 0.0,
            "origin_latency": {"count": cumulative, "sum": self.latency_sum, "buckets": buckets},
            "open_connections": self.open_connections,
            "purges": self.purges,
            "fast_hits": self.fast_hits,
            "fast_sendfile_hits": self.fast_sendfile_hits,
            "top_hosts": [{"host": h, "bytes_saved": v[0], "requests": v[1]} for h, v in hosts],
            "timeline": timeline,
            "cache": None if store is None else store_dict(store),
            "upstreams": None if upstreams is None else [dict(u) for u in upstreams],
            "worker_count": len(workers) if workers else 1,
            "workers": [dict(w) for w in workers] if workers else [],
        }


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{value!r} is not a count")
    return value


def merge(states: Iterable[Mapping[str, Any]], started: float) -> Stats:
    """The sum of several processes' counters (``Stats.state()``), as one Stats to snapshot.

    Raises:
        ValueError: one state is damaged or of another version.
    """
    total = Stats(started)
    for state in states:
        total.add(state)
    return total


def worker_summary(index: int, pid: int, state: Mapping[str, Any], updated: float) -> dict[str, Any]:
    """One row of the per-worker breakdown in /stats.json, from that worker's ``Stats.state()``."""
    one = merge([state], float(state["started"]))
    return {
        "worker": index,
        "pid": pid,
        "updated": updated,
        "requests": sum(one.requests.values()),
        "served_from_cache": sum(one.requests[o] for o in FROM_CACHE),
        "bytes_saved": one.bytes_from_cache,
        "open_connections": one.open_connections,
    }


def sum_tiers(tiers: Iterable[TierStats]) -> TierStats:
    """Several processes' memory tiers as one: entries, bytes, limits and evictions add."""
    total = TierStats(0, 0, 0, 0)
    for t in tiers:
        total = TierStats(
            total.entries + t.entries,
            total.bytes + t.bytes,
            total.limit + t.limit,
            total.evictions + t.evictions,
        )
    return total


def tier_dict(tier: TierStats | None) -> dict[str, int] | None:
    """A tier's occupancy as a plain dict (None for a tier this process cannot see)."""
    return None if tier is None else asdict(tier)


def store_dict(store: StoreStats) -> dict[str, Any]:
    """StoreStats as plain values, the shape `fwdproxy cache stats --json` also uses."""
    return {
        "memory": tier_dict(store.memory),
        "disk": tier_dict(store.disk),
        "disk_full": store.disk_full,
        "errors": store.errors,
        "last_error": store.last_error,
    }
