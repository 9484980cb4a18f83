"""Strict requests: the header timeout (408 for a head that does not arrive in time), and HTTP/2 requests
that would not survive as HTTP/1 text refused with 400. HTTP/1 heads are checked in addons/_mitm/http1.py."""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import connection, http

from fwdproxy import strictness
from fwdproxy_addons import _mitm, _respond
from fwdproxy_addons._mitm import http1 as _http1
from fwdproxy_addons._neighbours import Server
from fwdproxy_addons._settings import SettingsSource

log = logging.getLogger("fwdproxy.guard")


class Strict:
    """Declares ``fwd_header_timeout`` and refuses HTTP/2 requests that HTTP/1 origins could misread."""

    def __init__(self, source: SettingsSource | None = None, server: Server | None = None) -> None:
        self.source = source or SettingsSource()
        self.proxyserver = server or Server()
        """mitmproxy's Proxyserver, shared through chain() (addons/_neighbours.py)."""

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(loader, "fwd_header_timeout")
        _mitm.install()  # strict HTTP/1 heads and the header timeout live in the layer patches

    def configure(self, updated: set[str]) -> None:
        _http1.HEADER_TIMEOUT.seconds = self.source.current().header_timeout

    def client_connected(self, client: connection.Client) -> None:
        # mitmproxy picks the HTTP layer (whose timer enforces the timeout, see _http1) on the first bytes;
        # a connection that sends none is closed silently after the same time, like nginx does.
        if (timeout := _http1.HEADER_TIMEOUT.seconds) > 0:
            asyncio.get_running_loop().call_later(timeout, self._close_if_silent, client)

    def _close_if_silent(self, client: connection.Client) -> None:
        if client in _http1.HTTP_STARTED or client.state is connection.ConnectionState.CLOSED:
            return
        connections = getattr(self.proxyserver.get(), "connections", {})
        handler = connections.get(client.id)
        io = handler.transports.get(client) if handler is not None else None
        if io is not None and io.handler is not None:
            log.info("%s: sent no request within the header timeout; closed", client.peername)
            io.handler.cancel("header timeout")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        if flow.response is not None or not request.is_http2:
            return
        refused = strictness.check_h2_request(
            request.data.authority, request.data.path, request.data.headers.fields
        )
        if refused is not None:
            log.warning("%s %s: %s", request.method, request.pretty_url, refused.message)
            flow.response = _respond.text(refused.status, refused.message)


addons = [Strict()]
