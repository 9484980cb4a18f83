"""A patch to mitmproxy's connection handler (not an addon): wide reads from the cache's sidecar.

mitmproxy reads every connection at most 65535 bytes at a time (``ConnectionHandler.handle_connection``),
and each read walks the whole layer stack once: the HTTP/1 parser, the response stream, the client's
write. A big hit comes from our own sidecar on loopback as fast as the client takes it, so that walk per
64 KiB is what limits its speed. For server connections to an address the cache marks (:func:`widen`:
its sidecar's), a read takes all the bytes asyncio has buffered instead, up to :data:`WIDE_READ`
(asyncio itself stops reading the socket at a few hundred KiB), so the same bytes need a fraction of the
walks. Other connections are untouched.

``ConnectionHandler.__init__`` is wrapped to give each handler a ``transports`` mapping that swaps the
class of the ``asyncio.StreamReader`` of a connection to a marked address for :class:`WideReader` when
mitmproxy registers it, which is before mitmproxy first reads from it. Addresses, not connection objects,
are marked: mitmproxy opens a ``Server`` of its own for a flow (``HttpLayer.get_connection``) and keeps
only the flow's address. :func:`apply` makes the change; addons/_mitm/__init__.py calls it once per process,
after checking the target (docs/mitmproxy-notes.md §16).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mitmproxy import connection
from mitmproxy.proxy import server

from fwdproxy_addons._mitm.mark import marked

WIDE_READ = 1024 * 1024
"""Most bytes one read of a marked connection returns; what is buffered is far less, so this rarely binds."""

_WIDE: set[tuple[str, int]] = set()
"""Server addresses (host, port) read widely."""


class WideReader(asyncio.StreamReader):
    """A StreamReader whose bounded reads take up to WIDE_READ bytes, whatever bound the caller gave."""

    async def read(self, n: int = -1) -> bytes:
        return await super().read(WIDE_READ if 0 < n < WIDE_READ else n)


class _Transports(dict[connection.Connection, Any]):
    """A handler's connection table that widens a marked connection's reader as it is registered."""

    def __setitem__(self, conn: connection.Connection, io: Any) -> None:
        if (
            isinstance(conn, connection.Server)
            and conn.address in _WIDE
            and type(getattr(io, "reader", None)) is asyncio.StreamReader
        ):
            io.reader.__class__ = WideReader
        super().__setitem__(conn, io)


def widen(address: tuple[str, int]) -> None:
    """Read connections to `address` widely from now on (handlers made before this call excepted)."""
    _WIDE.add(address)


def narrow(address: tuple[str, int]) -> None:
    """Stop widening connections to `address` (its server is gone; the port may be reused)."""
    _WIDE.discard(address)


def apply() -> None:
    """Wrap ``ConnectionHandler.__init__`` (once per process: addons/_mitm/__init__.py checks it first)."""
    init = server.ConnectionHandler.__init__

    @marked
    def patched(self: server.ConnectionHandler, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.transports = _Transports(self.transports)

    server.ConnectionHandler.__init__ = patched  # type: ignore[method-assign]
