"""Strict requests: the header timeout (408 for a head that does not arrive in time), and HTTP/2 requests
that would not survive as HTTP/1 text refused with 400. HTTP/1 heads are checked in addons/_mitm/http1.py."""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import connection, ctx, exceptions, http

from fwdproxy import strictness
from fwdproxy.units import parse_duration
from fwdproxy_addons import _mitm, _respond
from fwdproxy_addons._mitm import http1 as _http1

log = logging.getLogger("fwdproxy.guard")


class Strict:
    """Declares ``fwd_header_timeout`` and refuses HTTP/2 requests that HTTP/1 origins could misread."""

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "fwd_header_timeout",
            str,
            "30s",
            "How long a client may take to send a complete request head (then 408 and close); 0: off.",
        )
        _mitm.install()  # strict HTTP/1 heads and the header timeout live in the layer patches

    def configure(self, updated: set[str]) -> None:
        if "fwd_header_timeout" in updated:
            try:
                _http1.HEADER_TIMEOUT.seconds = parse_duration(ctx.options.fwd_header_timeout)
            except ValueError as e:
                raise exceptions.OptionsError(f"fwd_header_timeout: {e}") from e

    def client_connected(self, client: connection.Client) -> None:
        # mitmproxy picks the HTTP layer (whose timer enforces the timeout, see _http1) on the first bytes;
        # a connection that sends none is closed silently after the same time, like nginx does.
        if (timeout := _http1.HEADER_TIMEOUT.seconds) > 0:
            asyncio.get_running_loop().call_later(timeout, self._close_if_silent, client)

    def _close_if_silent(self, client: connection.Client) -> None:
        if client in _http1.HTTP_STARTED or client.state is connection.ConnectionState.CLOSED:
            return
        connections = getattr(ctx.master.addons.get("proxyserver"), "connections", {})
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
