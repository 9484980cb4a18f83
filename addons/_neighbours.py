"""What one addon needs of another: ``chain()`` hands addons to each other, typed by these protocols.

An addon never looks a neighbour up by name (``ctx.master.addons.get("cache")``) nor probes it with
``getattr``; run alone under ``mitmdump -s``, it gets None and does without.
"""

from typing import Any, Protocol

from mitmproxy.addons.proxyserver import Proxyserver

from fwdproxy.balance import MemberStats
from fwdproxy.store import TieredStore


class HasStore(Protocol):
    """The cache addon, as Admin sees it: PURGE and the tiers' sizes."""

    @property
    def store(self) -> TieredStore | None: ...


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


def proxyserver(master: Any) -> Proxyserver | None:
    """mitmproxy's own Proxyserver addon (its listeners and live connections), or None without one.

    The one neighbour ``chain()`` cannot hand over: mitmdump, or `fwdproxy run`'s engine, makes it before our
    addons exist. Looked up here only, by the type it has, so a rename in mitmproxy fails in one place.
    """
    found = master.addons.get("proxyserver")
    return found if isinstance(found, Proxyserver) else None
