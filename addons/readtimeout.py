"""The read timeout: an origin that sends nothing for ``fwd_read_timeout`` gets its request answered with a
504 (before any response) or its transfer cut (mid-body), instead of holding the client for ever."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from mitmproxy import http

from fwdproxy import errors
from fwdproxy_addons import _mitm, _respond
from fwdproxy_addons._mitm import http1 as _http1
from fwdproxy_addons._mitm.readstamp import LAST_READ
from fwdproxy_addons._neighbours import Server
from fwdproxy_addons._notes import notes, peek
from fwdproxy_addons._settings import SettingsSource

log = logging.getLogger("fwdproxy.errors")


class _Watch:
    """One watched request. A plain class, not a dataclass: ``mitmdump -s addons/readtimeout.py`` runs this
    file as a module missing from sys.modules, where @dataclass cannot resolve string annotations."""

    __slots__ = ("flow", "since")

    def __init__(self, flow: http.HTTPFlow, since: float) -> None:
        self.flow = flow
        self.since = since
        """monotonic() when the request was handed to the origin, or when a slow client last held it up."""


class ReadTimeout:
    """Watches every request that goes to an origin, from its ``request`` hook to its ``response`` or ``error``."""

    def __init__(self, source: SettingsSource | None = None, server: Server | None = None) -> None:
        self.source = source or SettingsSource()
        self.proxyserver = server or Server()
        """mitmproxy's Proxyserver, shared through chain() (addons/_neighbours.py)."""
        self.timeout = self.source.given.read_timeout
        self.watched: dict[str, _Watch] = {}
        self.sweeper: asyncio.Task[None] | None = None

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(loader, "fwd_read_timeout")
        _mitm.install()  # the 504 handed to a stream whose origin connection we close; read times

    def configure(self, updated: set[str]) -> None:
        self.timeout = self.source.current().read_timeout

    def running(self) -> None:
        self.sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def done(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper

    def request(self, flow: http.HTTPFlow) -> None:
        # Hits, the sidecar (our own loopback server) and our background revalidations are not waited on here.
        if (
            flow.response is not None
            or flow.is_replay
            or ((noted := peek(flow)) is not None and noted.sidecar)
            or self.timeout <= 0
        ):
            return
        self.watched[flow.id] = _Watch(flow, time.monotonic())

    def response(self, flow: http.HTTPFlow) -> None:
        self.watched.pop(flow.id, None)

    def error(self, flow: http.HTTPFlow) -> None:
        self.watched.pop(flow.id, None)

    async def _sweep_forever(self) -> None:
        while True:
            # A quarter of the timeout (at most a second) between sweeps: a stall is noticed at most 25% late.
            await asyncio.sleep(min(1.0, max(self.timeout, 0.1) / 4))
            if self.watched:
                self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """Answer or cut every watched request whose origin has been silent for the timeout."""
        proxyserver = self.proxyserver.get()
        connections: dict[Any, Any] = getattr(proxyserver, "connections", {})
        for flow_id, watch in list(self.watched.items()):
            flow = watch.flow
            handler = connections.get(flow.client_conn.id)
            if handler is None or not flow.live:
                self.watched.pop(flow_id, None)
                continue
            client = handler.transports.get(flow.client_conn)
            writer = getattr(client, "writer", None)
            transport = getattr(writer, "transport", None)
            if transport is not None and transport.get_write_buffer_size() > 0:
                watch.since = now  # the client is slow to read: the origin waits on us, not we on it
                continue
            idle = now - max(watch.since, getattr(flow.server_conn, LAST_READ, 0.0))
            stall = errors.read_stall(
                idle=idle, timeout=self.timeout, response_started=flow.response is not None
            )
            if stall is errors.Stall.NONE:
                continue
            origin = handler.transports.get(flow.server_conn)
            if origin is None or origin.handler is None:
                continue  # not connected yet: the connect timeout (addons/errors.py) is in charge
            self.watched.pop(flow_id, None)
            message = errors.describe_read_timeout(flow.request.host, flow.request.port, self.timeout, stall)
            log.info("%s %s: %s", flow.request.method, flow.request.pretty_url, message)
            notes(flow).error = message
            if stall is errors.Stall.NO_RESPONSE:
                _http1.TIMED_OUT[flow.server_conn] = _respond.text(504, message)
            origin.handler.cancel("read timeout")


addons = [ReadTimeout()]
