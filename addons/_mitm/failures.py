"""Adaptations of mitmproxy's HTTP layer for origin failures (not an addon): an addon answers them, in plain text.

What mitmproxy 12.3 does, and what we change (``apply()`` makes all four changes; addons/_mitm/__init__.py calls
it once per process, after checking the targets; docs/mitmproxy-notes.md §14):

1. An origin that cannot give a response head (connect or TLS failure, a close, reset or garbage before the
   status line) reaches ``HttpStream.handle_protocol_error`` (mitmproxy/proxy/layers/http/__init__.py) as a
   ``ResponseProtocolError``: mitmproxy calls the ``error`` hook and renders the error itself; no addon can
   answer instead. We hand such a stream to ``answer(flow, message)`` (addons/errors.py) and send the response
   it returns as if the origin had sent it: the ``responseheaders`` and ``response`` hooks run, so the cache
   can put a stale entry in its place (RFC 9111 §4.2.4, RFC 5861 §4) and logs and metrics see an ordinary
   response. This is what lets the failure be detected on the real connection, with no probe beforehand.
2. Every other error mitmproxy renders for an HTTP/2 client is an HTML page (``Http2Server`` in
   ``_http2.py``, via ``_base.format_error``); we send fwdproxy's short text/plain response instead.
3. The same for HTTP/1 clients: ``_http1.make_error_response`` builds the HTML page; ours is plain text.
4. ``HttpLayer.get_connection`` keeps a failed origin connection for the life of the client connection and
   fails every later request to that origin on it at once, with the old error and without trying again: a
   keep-alive client (npm, uv) would see one blip for as long as it stays connected. We drop a failed
   connection that is finished (never opened, or closed and done) before looking, so the next request tries.

Each patch is checked by tests/e2e/test_origin_failures.py (stale on every kind of failure, text/plain errors
on HTTP/1 and HTTP/2 clients alike): they fail when a mitmproxy upgrade makes a patch stop taking effect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy import connection, http
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http import _http1, _http2
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
)
from mitmproxy.proxy.layers.http._hooks import HttpResponseHeadersHook

from fwdproxy_addons import _respond
from fwdproxy_addons._mitm.mark import marked

log = logging.getLogger("fwdproxy")

Commands = Generator[commands.Command, Any, None]
Answer = Callable[[http.HTTPFlow, str], http.Response | None]

ANSWERED = frozenset({ErrorCode.CONNECT_FAILED, ErrorCode.GENERIC_SERVER_ERROR})
"""The error codes of an origin that failed (not of a client, a kill, or a size limit)."""

_answer: Answer | None = None


def answer_with(answer: Answer) -> None:
    """``answer`` (the latest one given) speaks for failed origins from now on."""
    global _answer
    _answer = answer


def apply() -> None:
    """Replace the four targets (once per process: addons/_mitm/__init__.py checks them first)."""
    stream = http_layer.HttpStream
    stream.handle_protocol_error = marked(_answering(stream.handle_protocol_error))  # type: ignore[method-assign]
    server = _http2.Http2Server
    server._handle_event = marked(_plain_h2_errors(server._handle_event))  # type: ignore[method-assign]
    _http1.make_error_response = marked(_plain_h1_error)
    layer = http_layer.HttpLayer
    layer.get_connection = marked(_forgetting_failures(layer.get_connection))  # type: ignore[method-assign]


def _answering(original: Callable[..., Commands]) -> Callable[..., Commands]:
    def handle_protocol_error(self: http_layer.HttpStream, event: Any) -> Commands:
        flow = getattr(self, "flow", None)
        if (
            _answer is not None
            and isinstance(event, ResponseProtocolError)
            and event.code in ANSWERED
            and flow is not None
            and flow.response is None
            and flow.error is None
            # The whole request is in (an upload still arriving would be read as the next request) and the
            # origin's head is still awaited: nothing has gone to the client yet.
            and self.client_state == self.state_done
            and self.server_state == self.state_wait_for_response_headers
            and (response := _answer(flow, event.message)) is not None
        ):
            return _respond_instead(self, response)
        return original(self, event)

    return handle_protocol_error


def _respond_instead(self: http_layer.HttpStream, response: http.Response) -> Commands:
    """What mitmproxy does for a response an addon set in ``request`` (state_consume_request_body)."""
    self.flow.response = response
    response.timestamp_start = time.time()
    yield HttpResponseHeadersHook(self.flow)
    if (yield from self.check_killed(True)):
        return
    yield from self.send_response()


def _plain_h2_errors(original: Callable[..., Commands]) -> Callable[..., Commands]:
    def _handle_event(self: _http2.Http2Server, event: Any) -> Commands:
        # A plain function for every other event: no extra generator frame on the common path.
        if type(event) is ResponseProtocolError and not self.is_closed(event.stream_id):
            status = event.code.http_status_code()
            stream = self.h2_conn.streams.get(event.stream_id)
            if (
                status is not None
                and stream is not None
                and self.is_open_for_us(event.stream_id)
                and not stream.state_machine.headers_sent
            ):
                return _plain_h2_response(
                    self, original, event.stream_id, _respond.text(status, event.message)
                )
        return original(self, event)

    return _handle_event


def _plain_h2_response(
    self: _http2.Http2Server, original: Callable[..., Commands], stream_id: int, response: http.Response
) -> Commands:
    yield from original(self, ResponseHeaders(stream_id, response, False))
    yield from original(self, ResponseData(stream_id, response.raw_content or b""))
    yield from original(self, ResponseEndOfMessage(stream_id))


def _plain_h1_error(status_code: int, message: str = "") -> bytes:
    """Stands in for ``_http1.make_error_response`` (the HTML page); the connection closes after it as before."""
    resp = _respond.text(
        status_code, message or _respond.REASONS.get(status_code, "error"), {"Connection": "close"}
    )
    return http1.assemble_response(resp)


def _forgetting_failures(original: Callable[..., Commands]) -> Callable[..., Commands]:
    def get_connection(self: http_layer.HttpLayer, event: Any, *, reuse: bool = True) -> Commands:
        for conn in [c for c in self.connections if isinstance(c, connection.Server) and c.error is not None]:
            finished = conn.timestamp_tcp_setup is None or conn.timestamp_end is not None
            if (
                finished
                and conn not in self.waiting_for_establishment
                and event.connection_spec_matches(conn)
            ):
                del self.connections[conn]
        return original(self, event, reuse=reuse)

    return get_connection
