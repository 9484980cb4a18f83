"""Live state of upstream groups: which member takes a request, and what each outcome teaches us."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass

from fwdproxy.balance.algorithms import ResponseTime, strategy_for
from fwdproxy.balance.config import EgressConfig, Group, Member
from fwdproxy.balance.health import Change, Health


@dataclass(frozen=True, slots=True)
class Event:
    """A member was ejected or restored: worth exactly one log line (``message``)."""

    change: Change
    group: str
    member: Member
    failures_in_row: int
    """Consecutive failures that led to an ejection (0 for a restoration)."""
    cooldown: float | None = None
    """Seconds the member is out (ejections only)."""

    @property
    def message(self) -> str:
        """The log line, e.g. ``upstream group 'egress': ejected http://10.0.0.5:3128 for 10s after 3 ...``."""
        if self.change is Change.EJECTED:
            return (
                f"upstream group {self.group!r}: ejected {self.member.url} for {self.cooldown:g}s after "
                f"{self.failures_in_row} failure(s) in a row"
            )
        return f"upstream group {self.group!r}: restored {self.member.url}"


@dataclass(frozen=True, slots=True)
class NoMember:
    """Every member is ejected or already tried for this request: the caller answers 502 with ``message``."""

    group: str
    ejected: tuple[str, ...]
    """``host:port`` of the members out of rotation."""
    tried: tuple[str, ...]
    """``host:port`` of the members this request already failed on (and that are not ejected)."""

    @property
    def message(self) -> str:
        """Why no upstream could be used, naming the group, for the body of the 502."""
        parts = [f"{len(self.ejected)} ejected ({', '.join(self.ejected)})"] if self.ejected else []
        if self.tried:
            parts.append(f"{len(self.tried)} failed for this request ({', '.join(self.tried)})")
        return f"no upstream proxy of group {self.group!r} is available: {'; '.join(parts)}"


@dataclass(frozen=True, slots=True)
class MemberStats:
    """A snapshot of one member's counters for stats and metrics."""

    group: str
    member: str
    """``host:port``."""
    requests: int
    """Requests ever chosen for this member (failover attempts included)."""
    active: int
    failures: int
    ejections: int
    ejected: bool
    avg_response_time: float | None
    """Mean time to first byte in seconds over all responses; None before the first."""
    ewma_response_time: float | None
    """The moving average least-response-time uses; None when unknown or stale."""

    def as_dict(self) -> dict[str, object]:
        """Plain dict, e.g. for JSON."""
        return dataclasses.asdict(self)


class MemberState:
    """Mutable live state of one member; only its Balancer changes it."""

    __slots__ = ("member", "index", "active", "requests", "health", "response_time")

    def __init__(self, member: Member, index: int) -> None:
        self.member = member
        self.index = index
        self.active = 0
        self.requests = 0
        self.health = Health()
        self.response_time = ResponseTime()


class Balancer:
    """Chooses members of one group and learns from outcomes.

    Per request: ``choose`` (it counts the member active), then on a failed connection ``failed`` +
    ``release`` + ``choose(tried=...)`` again; on the first response byte ``first_byte``; when the
    exchange ends, however it ends, ``release``. Every member ``choose`` returns is released once.
    """

    def __init__(self, group: Group) -> None:
        self.group = group
        self._strategy = strategy_for(group.algorithm)
        self._states = tuple(MemberState(m, i) for i, m in enumerate(group.members))
        self._by_name = {s.member.name: s for s in self._states}

    def choose(
        self, *, now: float, client_ip: str = "", cache_key: str = "", tried: Collection[Member] = ()
    ) -> Member | NoMember:
        """The member for this request, skipping ejected ones and those in ``tried``; NoMember if none is left.

        With ``tried`` it is the failover choice: what the algorithm picks among the rest (for the hash
        algorithms that is the next-highest score, so a client's second choice is stable too).
        """
        skip = {m.name for m in tried}
        candidates = [s for s in self._states if s.health.available(now) and s.member.name not in skip]
        if not candidates:
            ejected = tuple(s.member.name for s in self._states if s.health.ejected(now))
            # A member that failed this request and got ejected for it is listed once, as ejected.
            tried_only = tuple(s.member.name for s in self._states if s.member.name in skip - set(ejected))
            return NoMember(group=self.group.name, ejected=ejected, tried=tried_only)
        state = self._strategy.choose(candidates, client_ip=client_ip, cache_key=cache_key, now=now)
        state.active += 1
        state.requests += 1
        return state.member

    def failed(self, member: Member, *, now: float) -> Event | None:
        """Record that ``member`` failed us (refused, reset, timed out, or the proxy's own 502/503/504)."""
        return self._fail(self._state(member), now)

    def first_byte(self, member: Member, ttfb: float, *, now: float) -> Event | None:
        """Record a response from ``member`` that started ``ttfb`` seconds after the request was sent."""
        state = self._state(member)
        event = self._succeed(state)  # first: a restoration clears old samples, and this one is new
        state.response_time = state.response_time.observe(ttfb, now)
        return event

    def release(self, member: Member) -> None:
        """The request given to ``member`` is over (answered, failed or aborted)."""
        state = self._state(member)
        if state.active <= 0:
            raise ValueError(f"{member.name} of group {self.group.name!r} released more often than chosen")
        state.active -= 1

    def check_result(self, member: Member, ok: bool, *, now: float) -> Event | None:
        """Record an active health check of ``member``: a pass restores it before its cooldown ends."""
        state = self._state(member)
        return self._succeed(state) if ok else self._fail(state, now)

    def stats(self, *, now: float) -> tuple[MemberStats, ...]:
        """Counters of every member, in configured order."""
        return tuple(
            MemberStats(
                group=self.group.name,
                member=s.member.name,
                requests=s.requests,
                active=s.active,
                failures=s.health.failures,
                ejections=s.health.ejections,
                ejected=s.health.ejected(now),
                avg_response_time=s.response_time.mean,
                ewma_response_time=s.response_time.estimate(now),
            )
            for s in self._states
        )

    def _state(self, member: Member) -> MemberState:
        state = self._by_name.get(member.name)
        if state is None:
            # A member of an older config (the options were changed mid-request): a caller bug to surface.
            raise ValueError(f"{member.name} is not a member of group {self.group.name!r}")
        return state

    def _fail(self, state: MemberState, now: float) -> Event | None:
        state.health, change = state.health.failure(
            now, max_fails=self.group.max_fails, cooldown=self.group.cooldown
        )
        if change is None:
            return None
        return Event(
            change,
            self.group.name,
            state.member,
            failures_in_row=state.health.failures_in_row,
            cooldown=state.health.cooldown_left(now),
        )

    def _succeed(self, state: MemberState) -> Event | None:
        was_ejected = state.health.ejected_until is not None
        state.health, change = state.health.success()
        if change is None:
            return None
        if was_ejected:
            # Measurements from before the ejection (timeouts, a dying proxy) say nothing about it now.
            state.response_time = dataclasses.replace(state.response_time, ewma=None)
        return Event(change, self.group.name, state.member, failures_in_row=0)


class Egress:
    """Balancers for every group of a config, and the per-host route lookup."""

    def __init__(self, config: EgressConfig) -> None:
        self.config = config
        self.balancers = {g.name: Balancer(g) for g in config.groups}

    def route(self, host: str) -> Balancer | None:
        """The balancer for requests to ``host``, or None to leave directly."""
        return self.balancers.get(self.config.route(host))

    def stats(self, *, now: float) -> tuple[MemberStats, ...]:
        """Counters of every member of every group."""
        return tuple(s for b in self.balancers.values() for s in b.stats(now=now))
