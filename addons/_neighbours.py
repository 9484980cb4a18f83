"""What one addon needs of another: ``chain()`` hands addons to each other, typed by these protocols.

An addon never looks a neighbour up by name (``ctx.master.addons.get("cache")``) nor probes it with
``getattr``; run alone under ``mitmdump -s``, it gets None and does without.
"""

from typing import Protocol

from fwdproxy.balance import MemberStats
from fwdproxy.store import TieredStore


class HasStore(Protocol):
    """The cache addon, as Admin sees it: PURGE and the tiers' sizes."""

    store: TieredStore | None


class HasMembers(Protocol):
    """The egress addon, as Admin sees it: every upstream member's counters."""

    def stats(self) -> tuple[MemberStats, ...]: ...


class StoreCheck(Protocol):
    """The cache addon, as Lifecycle sees it: a periodic check of its database."""

    async def check_store(self) -> bool | None:
        """True when sound, False when it was damaged (and replaced), None with no store open."""
        ...


class HasPort(Protocol):
    """The admin addon, as Lifecycle and Guard see it: the port of its endpoint (0: off)."""

    port: int
