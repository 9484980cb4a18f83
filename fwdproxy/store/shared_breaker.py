"""When the shared tier is used: a circuit breaker as a small state table (callers pass ``now``).

CONNECTED: every operation goes to Redis. A run of FAILURES failed operations (timeouts, refused or lost
connections) opens the breaker: DEGRADED, the node works alone and skips Redis entirely, so a dead or slow
server costs a lookup nothing. Every RETRY seconds one probe is allowed (the owner PINGs in the
background); its success closes the breaker. A refused write (the server is full: ``OOM``, or read-only)
is no connection failure: reads still help, so it only marks the tier FULL until a write succeeds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

FAILURES = 3
"""Failed operations in a row that open the breaker: one lost packet must not cut a node off, three
timeouts of 100 ms already cost a client 0.3 s."""
RETRY = 1.0
"""Seconds between probes while open: a restarted Redis is used again within a second."""


class State(enum.StrEnum):
    """What the status page and /metrics show."""

    OFF = "off"
    CONNECTED = "connected"
    DEGRADED = "degraded"
    """Open breaker: Redis is down or too slow; lookups skip it."""
    FULL = "full"
    """Connected, but the server refuses writes (maxmemory with noeviction, or a read-only replica)."""


class Event(enum.Enum):
    """What an operation's outcome tells the breaker."""

    OK = "ok"
    WRITE_OK = "write-ok"
    FAILED = "failed"
    """Timeout, connection refused or lost."""
    REFUSED = "refused"
    """The server answered with an error to a write (OOM, READONLY)."""


@dataclass(frozen=True, slots=True)
class Breaker:
    """The breaker's state; ``after`` returns the next one (records are never changed in place)."""

    state: State = State.CONNECTED
    failures: int = 0
    probe_at: float = 0.0
    """While DEGRADED: when the next probe may run."""

    def allows(self, now: float) -> bool:
        """Whether an operation may go to Redis now."""
        return self.state in (State.CONNECTED, State.FULL)

    def probe_due(self, now: float) -> bool:
        """Whether the background probe should try the server now."""
        return self.state is State.DEGRADED and now >= self.probe_at

    def after(self, event: Event, now: float) -> Breaker:
        """The state once an operation ended with ``event``."""
        match event:
            case Event.OK:
                state = State.FULL if self.state is State.FULL else State.CONNECTED
                return Breaker(state)
            case Event.WRITE_OK:
                return Breaker(State.CONNECTED)
            case Event.REFUSED:
                return Breaker(
                    State.FULL if self.state is not State.DEGRADED else self.state, 0, self.probe_at
                )
            case Event.FAILED:
                if self.state is State.DEGRADED:
                    return Breaker(State.DEGRADED, self.failures + 1, now + RETRY)
                failures = self.failures + 1
                if failures >= FAILURES:
                    return Breaker(State.DEGRADED, failures, now + RETRY)
                return Breaker(self.state, failures, self.probe_at)
