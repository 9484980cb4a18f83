"""The six ways a group picks a member: each strategy chooses one of the candidates it is given."""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, assert_never

from fwdproxy.balance.config import Algorithm, Member

EWMA_ALPHA = 0.3
"""Weight of the newest time-to-first-byte sample: about the last 3 responses dominate, so a member that
turns slow loses its traffic within a few requests, while one slow response does not."""

STALE_AFTER = 10.0
"""Seconds after which a member's response-time estimate is forgotten. Least-response-time stops sending to a
slow member, so it would never learn that the member recovered; forgetting the estimate makes the member
"unknown" again, and unknown members are probed. A member that stays slow costs about one request per
10 s; one that recovered is back after that single probe (the next sample starts a fresh average)."""


class Candidate(Protocol):
    """What a strategy may look at: the member, its configured position and its load."""

    @property
    def member(self) -> Member: ...
    @property
    def index(self) -> int:
        """Position in the group's member list (stable while the config is)."""
        ...

    @property
    def active(self) -> int:
        """Requests chosen for this member and not yet released."""
        ...

    @property
    def response_time(self) -> ResponseTime: ...


class Strategy(Protocol):
    """A balancing algorithm; it may keep state (cursor, current weights) between choices."""

    def choose[C: Candidate](
        self, candidates: Sequence[C], *, client_ip: str, cache_key: str, now: float
    ) -> C:
        """Pick one of ``candidates`` (non-empty, in configured order, ejected and tried ones removed)."""
        ...


@dataclass(frozen=True, slots=True)
class ResponseTime:
    """Time to first byte of one member: an exponentially weighted moving average and a plain mean."""

    ewma: float | None = None
    sampled_at: float = 0.0
    count: int = 0
    total: float = 0.0

    def observe(self, ttfb: float, now: float) -> ResponseTime:
        """Add a sample; a stale average is dropped rather than blended (see STALE_AFTER)."""
        prev = self.estimate(now)
        ewma = ttfb if prev is None else EWMA_ALPHA * ttfb + (1 - EWMA_ALPHA) * prev
        return ResponseTime(ewma, now, self.count + 1, self.total + ttfb)

    def estimate(self, now: float) -> float | None:
        """The moving average, or None when never measured or older than STALE_AFTER."""
        if self.ewma is None or now - self.sampled_at > STALE_AFTER:
            return None
        return self.ewma

    @property
    def mean(self) -> float | None:
        """Mean of all samples, for stats."""
        return self.total / self.count if self.count else None


class RoundRobin:
    """Members in turn, ignoring weights."""

    def __init__(self) -> None:
        self._next = 0

    def choose[C: Candidate](
        self, candidates: Sequence[C], *, client_ip: str, cache_key: str, now: float
    ) -> C:
        # The cursor is a member position, not a count, so skipping an ejected member does not shift the
        # others' turns.
        pick = min(candidates, key=lambda c: (c.index < self._next, c.index))
        self._next = pick.index + 1
        return pick


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin: exact shares per cycle, interleaved (5,1,1 → a a b a c a a)."""

    def __init__(self) -> None:
        self._current: dict[int, int] = {}

    def choose[C: Candidate](
        self, candidates: Sequence[C], *, client_ip: str, cache_key: str, now: float
    ) -> C:
        # ngx_http_upstream_get_peer: every candidate gains its weight, the highest wins (first on ties) and
        # pays back the total. Members left out (ejected, tried) keep their current weight, as in nginx.
        total = 0
        best: C | None = None
        for c in candidates:
            self._current[c.index] = self._current.get(c.index, 0) + c.member.weight
            total += c.member.weight
            if best is None or self._current[c.index] > self._current[best.index]:
                best = c
        assert best is not None, "candidates is never empty"
        self._current[best.index] -= total
        return best


def rendezvous_score(member: Member, key: str) -> float:
    """Weighted rendezvous (HRW) score of ``member`` for ``key``; the highest score wins.

    Each (member, key) pair gets a uniform hash h in (0, 1) and the score -weight / ln(h) (the logarithmic
    method of Schindelhauer and Schomaker): shares follow the weights, and adding or removing a member
    only moves the keys that member wins or held. The member is named by host:port, not by position, so
    reordering the config moves nobody.
    """
    # blake2b, not hash(): Python salts str hashes per process, and clients must keep their member
    # across restarts and across proxies in a fleet.
    digest = hashlib.blake2b(f"{member.name}\n{key}".encode(), digest_size=8).digest()
    h = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)
    return member.weight / -math.log(h)


def client_key(client_ip: str) -> str:
    """The hashing key for a client address: IPv4-mapped IPv6 (dual-stack listeners) as plain IPv4."""
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class IpHash:
    """Rendezvous hashing of the whole client address (nginx hashes only the /24, which would put a whole
    office or all of 127.0.0.0/8 on one member)."""

    def choose[C: Candidate](
        self, candidates: Sequence[C], *, client_ip: str, cache_key: str, now: float
    ) -> C:
        key = client_key(client_ip)
        return max(candidates, key=lambda c: (rendezvous_score(c.member, key), c.member.name))


class UrlHash:
    """Rendezvous hashing of the cache key, so an array of parent caches stores each URL once (CARP)."""

    def choose[C: Candidate](
        self, candidates: Sequence[C], *, client_ip: str, cache_key: str, now: float
    ) -> C:
        return max(candidates, key=lambda c: (rendezvous_score(c.member, cache_key), c.member.name))


class LeastConnections:
    """Fewest active requests per unit of weight; ties go in weighted turn."""

    def __init__(self) -> None:
        # Ties are the normal case under light load (everyone idle); a weighted turn keeps the weights
        # meaningful there, as nginx's least_conn does. With equal weights it is plain round robin.
        self._ties = SmoothWeightedRoundRobin()

    def choose[C: Candidate](
        self, candidates: Sequence[C], *, client_ip: str, cache_key: str, now: float
    ) -> C:
        # Fractions: 1/3 and 2/6 must tie exactly.
        load = {c.index: Fraction(c.active, c.member.weight) for c in candidates}
        least = min(load.values())
        tied = [c for c in candidates if load[c.index] == least]
        return self._ties.choose(tied, client_ip=client_ip, cache_key=cache_key, now=now)


class LeastResponseTime:
    """Lowest (active + 1) × time to first byte / weight; unknown members count as the best known one."""

    def __init__(self) -> None:
        self._ties = SmoothWeightedRoundRobin()

    def choose[C: Candidate](
        self, candidates: Sequence[C], *, client_ip: str, cache_key: str, now: float
    ) -> C:
        estimates = {c.index: c.response_time.estimate(now) for c in candidates}
        known = [e for e in estimates.values() if e is not None]
        # Unknown (new, or forgotten after STALE_AFTER) members borrow the best estimate: optimistic, so
        # they are tried next and measured, instead of waiting behind everyone. With nothing measured yet
        # every member gets 1.0 and the rule becomes least-connections.
        neutral = min(known, default=1.0)
        # "+1": an idle member's cost is one response time, so latency decides even when nothing is active,
        # and a member with queued requests is charged for the wait behind them.
        score = {
            c.index: (c.active + 1) * _or(estimates[c.index], neutral) / c.member.weight for c in candidates
        }
        best = min(score.values())
        tied = [c for c in candidates if score[c.index] == best]
        return self._ties.choose(tied, client_ip=client_ip, cache_key=cache_key, now=now)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def strategy_for(algorithm: Algorithm) -> Strategy:
    """A fresh strategy (with fresh state) for ``algorithm``."""
    match algorithm:
        case Algorithm.ROUND_ROBIN:
            return RoundRobin()
        case Algorithm.WEIGHTED_ROUND_ROBIN:
            return SmoothWeightedRoundRobin()
        case Algorithm.IP_HASH:
            return IpHash()
        case Algorithm.URL_HASH:
            return UrlHash()
        case Algorithm.LEAST_CONNECTIONS:
            return LeastConnections()
        case Algorithm.LEAST_RESPONSE_TIME:
            return LeastResponseTime()
        case _:
            assert_never(algorithm)
