"""Passive and active health of one member: when failures eject it and when it comes back."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

MAX_COOLDOWN = 300.0
"""Longest ejection (5 min): long enough that a dead proxy costs one probe per 5 min, short enough that a
repaired one is back before anyone files a ticket. A configured cooldown above it is used as is."""


class Change(enum.StrEnum):
    """A health transition worth one log line."""

    EJECTED = "ejected"
    RESTORED = "restored"


@dataclass(frozen=True, slots=True)
class Health:
    """Health record of one member; transitions return a new record and the change, if any.

    Three states, as in a circuit breaker: *healthy* (``ejected_until`` is None), *ejected* (``now <
    ejected_until``: no traffic), and *on probation* (the cooldown is over: traffic flows again, the first
    success restores it, the first failure ejects it again for twice as long).
    """

    failures_in_row: int = 0
    """Consecutive failures since the last success."""
    ejected_until: float | None = None
    """End of the current or last ejection; None once a success has restored the member."""
    ejections_in_row: int = 0
    """Ejections since the last success: the cooldown doubles with each."""
    ejections: int = 0
    """All ejections ever, for stats."""
    failures: int = 0
    """All failures ever, for stats."""

    def available(self, now: float) -> bool:
        """Whether the member may get traffic: healthy, or its cooldown has run out."""
        return self.ejected_until is None or now >= self.ejected_until

    def ejected(self, now: float) -> bool:
        """Whether the member is out of rotation right now."""
        return not self.available(now)

    def failure(self, now: float, *, max_fails: int, cooldown: float) -> tuple[Health, Change | None]:
        """Record a failed connection or health check at ``now``."""
        failed = replace(self, failures_in_row=self.failures_in_row + 1, failures=self.failures + 1)
        if self.ejected(now):
            # Already out (a request that started before the ejection, or a failing active check): the
            # cooldown runs as set; doubling it on every check would push a member to the cap in seconds.
            return failed, None
        on_probation = self.ejected_until is not None
        # On probation one failure is enough: the member already proved it was sick.
        if on_probation or failed.failures_in_row >= max_fails:
            streak = self.ejections_in_row + 1
            # Cooldown doubles per ejection in a row: 10s, 20s, 40s ... capped (exponent bounded to stay finite).
            seconds = min(max(cooldown, MAX_COOLDOWN), cooldown * 2 ** min(streak - 1, 32))
            ejected = replace(
                failed,
                ejected_until=now + seconds,
                ejections_in_row=streak,
                ejections=self.ejections + 1,
            )
            return ejected, Change.EJECTED
        return failed, None

    def success(self) -> tuple[Health, Change | None]:
        """Record a successful response or health check: the failure streak ends, an ejection is lifted."""
        restored = replace(self, failures_in_row=0, ejected_until=None, ejections_in_row=0)
        return restored, Change.RESTORED if self.ejected_until is not None else None

    def cooldown_left(self, now: float) -> float:
        """Seconds until the member is tried again (0 when available)."""
        return 0.0 if self.ejected_until is None else max(0.0, self.ejected_until - now)
