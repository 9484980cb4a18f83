"""Patches to mitmproxy's HTTP/1 layer (not an addon): bounded heads, 1xx, excess bytes, read-timeout answers.

mitmproxy buffers a request or response head without limit (``# FIXME: protect against header size DoS`` in
``mitmproxy/proxy/layers/http/_http1.py``), takes an origin's interim (1xx) response for the final one, takes
the first Content-Length bytes of a response as its body without a word about bytes that follow (and would
read them as the next response), and has no read timeout. The layer is sans-IO and knows no flows, so these
patches wrap its generator methods and talk to the addons (addons/guard.py, addons/readtimeout.py) through
the two weak registries below. ``install()`` is idempotent.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Callable, Generator
from typing import Any

from h11._receivebuffer import ReceiveBuffer
from mitmproxy import connection, http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import SendHttp, _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
)
from mitmproxy.utils import human

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons import _respond
from fwdproxy import guard
from fwdproxy.cache.headers import HOP_BY_HOP

Commands = Generator[commands.Command, Any, None]

EXCESS: weakref.WeakSet[http.Response] = weakref.WeakSet()
"""Responses whose origin sent more bytes than their framing announced, together with the body's end (their
connection is closed once the body is read)."""
TIMED_OUT: weakref.WeakKeyDictionary[connection.Connection, http.Response] = weakref.WeakKeyDictionary()
"""Origin connections the read-timeout watchdog closes, and the response (a 504) to give in their stead."""

_PATCHED = "_fwd_patched"


def install() -> None:
    """Wrap the layer's methods once per process (several addon instances may call this)."""
    server, client = _http1.Http1Server, _http1.Http1Client
    if getattr(server.read_headers, _PATCHED, False):
        return
    server.read_headers = _marked(_bounded_request_head(server.read_headers))  # type: ignore[method-assign]
    client.read_headers = _marked(_bounded_response_head(client.read_headers))  # type: ignore[method-assign]
    client.read_body = _marked(_noting_excess(client.read_body))  # type: ignore[method-assign]
    client.read_headers = _marked(_interim_responses(client.read_headers))  # type: ignore[method-assign]


def _marked(func: Callable[..., Commands]) -> Callable[..., Commands]:
    setattr(func, _PATCHED, True)
    return func


def _bounded_request_head(read_headers: Callable[..., Commands]) -> Callable[..., Commands]:
    def wrapper(self: _http1.Http1Server, event: events.ConnectionEvent) -> Commands:
        yield from read_headers(self, event)
        # Still reading a head (none complete in the buffer) and already past the limit: refuse it now, before
        # the client sends more. A complete head within the limit has left the buffer by this point.
        if self.state == self.read_headers and len(self.buf) > guard.MAX_HEAD_BYTES:
            message = guard.head_too_big("request")
            yield commands.Log(
                f"{human.format_address(self.conn.peername)}: {message}; answered 431", logging.WARNING
            )
            resp = _respond.text(431, message, {"Connection": "close"})
            yield commands.SendData(self.conn, http1.assemble_response(resp))
            # Close our half only and drop what the client still sends: a full close while its bytes arrive
            # makes the kernel answer with a reset, which can destroy the 431 before the client reads it.
            yield commands.CloseTcpConnection(self.conn, half_close=True)
            self.buf = ReceiveBuffer()
            self.state = _lingering(self, LINGER_BYTES)

    return wrapper


LINGER_BYTES = 1024**2
"""After a 431, bytes of the rest of the request read and dropped before the connection is closed outright."""


def _lingering(self: _http1.Http1Server, budget: int) -> Callable[[events.Event], Commands]:
    left = budget

    def discard(event: events.Event) -> Commands:
        nonlocal left
        left -= len(self.buf)
        self.buf = ReceiveBuffer()
        if isinstance(event, events.ConnectionClosed) or left < 0:
            yield commands.CloseConnection(self.conn)
            self.state = self.done

    return discard


def _bounded_response_head(read_headers: Callable[..., Commands]) -> Callable[..., Commands]:
    def wrapper(self: _http1.Http1Client, event: events.ConnectionEvent) -> Commands:
        if (
            isinstance(event, events.ConnectionClosed)
            and self.stream_id is not None
            and self.response is None
            and (answer := TIMED_OUT.pop(self.conn, None)) is not None
        ):
            # The watchdog closed a connection that never answered: hand the stream its 504 as if the origin
            # had sent it, so every addon (cache, logs, metrics) sees an ordinary response.
            self.response = answer
            yield ReceiveHttp(ResponseHeaders(self.stream_id, answer, False))
            yield ReceiveHttp(ResponseData(self.stream_id, answer.raw_content or b""))
            yield ReceiveHttp(ResponseEndOfMessage(self.stream_id))
            self.state = self.done
            return
        yield from read_headers(self, event)
        if (
            self.state == self.read_headers
            and self.stream_id is not None
            and self.request is not None
            and len(self.buf) > guard.MAX_HEAD_BYTES
        ):
            yield commands.CloseConnection(self.conn)
            origin = human.format_address(self.context.server.address)
            yield ReceiveHttp(
                ResponseProtocolError(
                    self.stream_id,
                    f"{origin}: {guard.head_too_big('response')}",
                    ErrorCode.GENERIC_SERVER_ERROR,
                )
            )
            self.state = self.done

    return wrapper


def _noting_excess(read_body: Callable[..., Commands]) -> Callable[..., Commands]:
    def wrapper(self: _http1.Http1Client, event: events.Event) -> Commands:
        excess = False
        closed = False
        for command in read_body(self, event):
            if (
                isinstance(command, ReceiveHttp)
                and isinstance(command.event, ResponseEndOfMessage)
                and self.response is not None
                and len(self.buf)
            ):
                # We never pipeline, so nothing may follow a complete response: the origin sent bytes past
                # the framing (a Content-Length shorter than the body, or junk after the last chunk). RFC 9112
                # §6.3: the framed message is complete, so it is served (and cached) as framed; the rest is
                # not the start of a next response, so it is dropped together with the connection, which must
                # not be reused. Emptying the buffer keeps mitmproxy from reading it as one ("Unexpected data
                # from server").
                EXCESS.add(self.response)
                self.buf = ReceiveBuffer()
                excess = True
            closed = closed or (
                isinstance(command, commands.CloseConnection) and command.connection is self.conn
            )
            yield command
        if excess and not closed and self.conn.state is not ConnectionState.CLOSED:
            yield commands.CloseConnection(self.conn)

    return wrapper


_INTERIM = re.compile(rb"HTTP/1\.[01] 1(?!01)[0-9]{2}[ \r\n]")
"""The status line of an interim response (RFC 9110 §15.2), except 101, which mitmproxy handles (upgrades)."""


def _interim_responses(read_headers: Callable[..., Commands]) -> Callable[..., Commands]:
    """Read the origin's 1xx responses before its final one (RFC 9110 §15.2; RFC 9112 §6.3 item 1).

    mitmproxy 12.3 reads whatever head comes first as the final response: an unexpected ``103 Early Hints``
    becomes a body-less "final" response and the real one that follows is dropped as unexpected data, so the
    client waits forever. Here each 1xx head is taken out of the buffer first. A ``102`` or ``103`` goes on
    to the client as an interim response of its own stream (HTTP/1.1 and HTTP/2 clients alike, like the
    ``100 Continue`` mitmproxy itself sends); a ``100`` is dropped, since mitmproxy already answered the
    client's ``Expect`` and removed it; nothing goes to an HTTP/1.0 client, which does not know 1xx (§15.2:
    MUST NOT). The final response is then read as usual, so the flow, its hooks and the cache never see an
    interim field.
    """

    def wrapper(self: _http1.Http1Client, event: events.ConnectionEvent) -> Commands:
        while (
            isinstance(event, events.DataReceived)
            and self.request is not None
            and self.stream_id is not None
            and _INTERIM.match(bytes(self.buf)[:16])
        ):
            lines = self.buf.maybe_extract_lines()
            if lines is None:
                break  # the rest of the head is still on its way; the size bound still applies to it
            try:
                interim = http1.read_response_head([bytes(x) for x in lines])
            except ValueError as e:
                yield commands.CloseConnection(self.conn)
                yield ReceiveHttp(
                    ResponseProtocolError(
                        self.stream_id, f"Cannot parse HTTP response: {e}", ErrorCode.GENERIC_SERVER_ERROR
                    )
                )
                return
            if interim.status_code != 100 and self.request.http_version != "HTTP/1.0":
                yield SendHttp(ResponseHeaders(self.stream_id, _end_to_end(interim)), self.context.client)
        yield from read_headers(self, event)

    return wrapper


def _end_to_end(response: http.Response) -> http.Response:
    """The interim response without its connection-specific fields (RFC 9110 §7.6.1), which HTTP/2 forbids."""
    named = {n.strip().lower() for v in response.headers.get_all("connection") for n in v.split(",")}
    for name in {k.lower() for k in response.headers} & (HOP_BY_HOP | named):
        del response.headers[name]
    return response
