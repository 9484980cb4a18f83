"""The read timeout: an origin that sends nothing for ``fwd_read_timeout`` gets its request answered with a
504 (before any response) or its transfer cut (mid-body), instead of holding the client for ever."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import events, server

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons import _http1, _respond
from addons._notes import notes, peek
from fwdproxy import errors
from fwdproxy.units import parse_duration

log = logging.getLogger("fwdproxy.errors")

LAST_READ = "fwd_last_read"
"""Attribute set on every mitmproxy Connection when bytes arrive on it: time.monotonic() of the last read."""


def _track_reads() -> None:
    """Stamp each connection with the time of its last read (mitmproxy keeps no such time per connection;
    its own ``tcp_timeout`` watches a client's whole handler, 10 minutes by default)."""
    handler = server.ConnectionHandler
    if getattr(handler.server_event, "_fwd_patched", False):
        return
    original = handler.server_event

    def server_event(self: server.ConnectionHandler, event: events.Event) -> Coroutine[Any, Any, None]:
        # A plain function handing back the original coroutine: no extra coroutine frame per event.
        if type(event) is events.DataReceived:
            setattr(event.connection, LAST_READ, time.monotonic())
        return original(self, event)

    server_event._fwd_patched = True  # type: ignore[attr-defined]
    handler.server_event = server_event  # type: ignore[method-assign]


@dataclass(slots=True)
class _Watch:
    flow: http.HTTPFlow
    since: float
    """monotonic() when the request was handed to the origin, or when a slow client last held it up."""


class ReadTimeout:
    """Watches every request that goes to an origin, from its ``request`` hook to its ``response`` or ``error``."""

    def __init__(self) -> None:
        self.timeout = 60.0
        self.watched: dict[str, _Watch] = {}
        self.sweeper: asyncio.Task[None] | None = None

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "fwd_read_timeout",
            str,
            "60s",
            "How long an origin may send nothing, before its response or inside its body (504 or cut); 0: off.",
        )
        _http1.install()  # the 504 handed to a stream whose origin connection we close
        _track_reads()

    def configure(self, updated: set[str]) -> None:
        if "fwd_read_timeout" in updated:
            try:
                self.timeout = parse_duration(ctx.options.fwd_read_timeout)
            except ValueError as e:
                raise exceptions.OptionsError(f"fwd_read_timeout: {e}") from e

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
        proxyserver = ctx.master.addons.get("proxyserver")
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
