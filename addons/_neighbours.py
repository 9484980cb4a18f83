"""What one addon needs of another: ``chain()`` hands addons to each other, typed by these protocols.

An addon never looks a neighbour up by name (``ctx.master.addons.get("cache")``) nor probes it with
``getattr``; run alone under ``mitmdump -s``, it gets None and does without.
"""

import asyncio
from typing import Protocol

from mitmproxy import ctx
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.connection import Client

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


class Server:
    """mitmproxy's own Proxyserver addon (its listeners and live connections), shared by the addons that need it.

    ``chain()`` hands one Server to Lifecycle, Admin, Guard, Strict and ReadTimeout. It cannot hand them the
    Proxyserver itself in every case: under ``mitmdump -s addons/fwdproxy.py`` mitmdump made it among its
    default addons before our script ran, and the script API gives a script no reference to its siblings
    but the addon manager's name table. So `fwdproxy run`'s engine, which makes the built-in addons itself,
    passes its instance in (``Server(instance)``), and under mitmdump (or an addon loaded alone) ``get()``
    finds it by name once, on first use in a hook, and keeps it: this is the one lookup, checked by type, so
    a rename in mitmproxy fails here only.
    """

    def __init__(self, proxyserver: Proxyserver | None = None) -> None:
        self._found = proxyserver

    def get(self) -> Proxyserver | None:
        """The Proxyserver, or None without one (a test's master)."""
        if self._found is None:
            found = ctx.master.addons.get("proxyserver")
            self._found = found if isinstance(found, Proxyserver) else None
        return self._found

    def client_transport(self, client: Client) -> asyncio.WriteTransport | None:
        """The asyncio transport under mitmproxy's writer for ``client`` (its ConnectionHandler's
        ``transports[client].writer``, docs/mitmproxy-notes.md §26); None when there is none (no
        Proxyserver, the connection gone, a writer that is not an asyncio StreamWriter)."""
        proxyserver = self.get()
        handler = proxyserver.connections.get(client.id) if proxyserver is not None else None
        io = handler.transports.get(client) if handler is not None else None
        writer = io.writer if io is not None else None
        if not isinstance(writer, asyncio.StreamWriter):
            return None
        transport: asyncio.WriteTransport = writer.transport  # uvloop's is not a subclass; the same methods
        return transport
