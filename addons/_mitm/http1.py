"""Patches to mitmproxy's HTTP/1 layer (not an addon): bounded and strictly parsed request heads, the header
timeout, 1xx, excess body bytes, read-timeout answers.

mitmproxy buffers a request or response head without limit (``# FIXME: protect against header size DoS`` in
``mitmproxy/proxy/layers/http/_http1.py``), takes an origin's interim (1xx) response for the final one, takes
the first Content-Length bytes of a response as its body without a word about bytes that follow (and would
read them as the next response), and has no read timeout. The layer is sans-IO and knows no flows, so these
patches wrap its generator methods and talk to the addons (addons/guard.py, addons/readtimeout.py) through
the two weak registries below. ``apply()`` makes the changes; addons/_mitm/__init__.py calls it once per
process, after checking the targets (docs/mitmproxy-notes.md §15).
"""

from __future__ import annotations

import logging
import re
import time
import weakref
from collections.abc import Callable, Generator
from typing import Any

from h11._receivebuffer import ReceiveBuffer, blank_line_regex
from mitmproxy import connection, http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import SendHttp, _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    RequestProtocolError,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
)
from mitmproxy.utils import human

from fwdproxy import guard, strictness
from fwdproxy.cache.headers import HOP_BY_HOP
from fwdproxy_addons import _respond
from fwdproxy_addons._mitm.mark import marked

Commands = Generator[commands.Command, Any, None]

EXCESS: weakref.WeakSet[http.Response] = weakref.WeakSet()
"""Responses whose origin sent more bytes than their framing announced, together with the body's end (their
connection is closed once the body is read)."""
TIMED_OUT: weakref.WeakKeyDictionary[connection.Connection, http.Response] = weakref.WeakKeyDictionary()
"""Origin connections the read-timeout watchdog closes, and the response (a 504) to give in their stead."""


def apply() -> None:
    """Wrap the layer's methods (once per process: addons/_mitm/__init__.py checks them first)."""
    server, client = _http1.Http1Server, _http1.Http1Client
    server._fwd_idle = False  # type: ignore[attr-defined]
    server._fwd_since = 0.0  # type: ignore[attr-defined]
    server._fwd_wakeup = None  # type: ignore[attr-defined]
    server.read_headers = marked(_bounded_request_head(server.read_headers))  # type: ignore[method-assign]
    server.read_body = marked(_answering_body_errors(server.read_body))  # type: ignore[method-assign]
    server._handle_event = marked(_header_timed(server._handle_event))  # type: ignore[method-assign]
    server.mark_done = marked(_noting_idle(server.mark_done))  # type: ignore[method-assign]
    client.read_headers = marked(_bounded_response_head(client.read_headers))  # type: ignore[method-assign]
    client.read_body = marked(_noting_excess(client.read_body))  # type: ignore[method-assign]
    client.read_headers = marked(_interim_responses(client.read_headers))  # type: ignore[method-assign]


def _bounded_request_head(read_headers: Callable[..., Commands]) -> Callable[..., Commands]:
    def wrapper(self: _http1.Http1Server, event: events.ConnectionEvent) -> Commands:
        if type(event) is events.DataReceived:
            if self._fwd_idle and self.buf:  # type: ignore[attr-defined]
                # The first byte of a later request on a kept-alive connection: its head clock starts now.
                self._fwd_idle = False  # type: ignore[attr-defined]
                self._fwd_since = time.monotonic()  # type: ignore[attr-defined]
            if (refused := _strict_head(self.buf)) is not None:
                yield from _refuse(self, refused.status, refused.message)
                return
        yield from read_headers(self, event)
        # Still reading a head (none complete in the buffer) and already past the limit: refuse it now, before
        # the client sends more. A complete head within the limit has left the buffer by this point.
        if self.state == self.read_headers and len(self.buf) > guard.MAX_HEAD_BYTES:
            yield from _refuse(self, 431, guard.head_too_big("request"))

    return wrapper


def _strict_head(buf: ReceiveBuffer) -> strictness.Refused | None:
    """The refusal for the request head complete in ``buf``, if any (None also while it is incomplete).

    mitmproxy's own parser splits lines on a bare LF, unfolds obs-fold and keeps CTLs in values; the check
    sees the raw bytes it would parse, found the way it finds them (h11's blank-line search, resumed where
    the last search stopped, so a head sent a byte at a time costs linear time)."""
    data = buf._data
    if data[:2] == b"\r\n":
        # RFC 9112 §2.2: empty lines before a request line are ignored (mitmproxy drops one per read).
        while data[:2] == b"\r\n":
            del data[:2]
        buf._multiple_lines_search = 0
    match = blank_line_regex.search(data, buf._multiple_lines_search)
    if match is None:
        return None
    return strictness.check_head(bytes(data[: match.end()]))


def _refuse(self: _http1.Http1Server, status: int, message: str) -> Commands:
    """Answer ``status`` with ``message`` and close, without reading the request any further."""
    yield commands.Log(
        f"{human.format_address(self.conn.peername)}: {message}; answered {status}", logging.WARNING
    )
    resp = _respond.text(status, message, {"Connection": "close"})
    yield commands.SendData(self.conn, http1.assemble_response(resp))
    # Close our half only and drop what the client still sends: a full close while its bytes arrive
    # makes the kernel answer with a reset, which can destroy the answer before the client reads it.
    yield commands.CloseTcpConnection(self.conn, half_close=True)
    self.buf = ReceiveBuffer()
    self.state = _lingering(self, LINGER_BYTES)


def _answering_body_errors(read_body: Callable[..., Commands]) -> Callable[..., Commands]:
    """h11 refuses a chunked body it cannot frame (``0x5``, ``-5``, a size over 20 digits, a chunk not ended by
    CRLF) and mitmproxy then closes the connection without a word; answer 400 first, so the client knows."""

    def wrapper(self: _http1.Http1Server, event: events.Event) -> Commands:
        try:
            for command in read_body(self, event):
                if (
                    type(command) is commands.CloseConnection
                    and command.connection is self.conn
                    and self.response is None
                ):
                    message = "the request body's chunked framing is invalid (RFC 9112 §7.1)"
                    yield from _refuse(self, 400, message)
                    continue
                yield command
        except NotImplementedError:
            # mitmproxy raises on trailer fields after the last chunk, which kills the connection handler
            # and leaves the client hanging; refuse them instead (RFC 9110 §6.5 lets a recipient drop them,
            # but the body must then be re-framed without them, which mitmproxy cannot do).
            yield from _refuse(self, 400, "trailer fields in a request are not accepted (RFC 9112 §7.1.2)")
            assert self.stream_id is not None
            yield ReceiveHttp(
                RequestProtocolError(self.stream_id, "request trailers", ErrorCode.GENERIC_CLIENT_ERROR)
            )

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

    discard._fwd_lingering = True  # type: ignore[attr-defined]
    return discard


class _HeaderTimeout:
    seconds = 30.0
    """How long a client may take to send a complete request head; 0: no limit (fwd_header_timeout)."""


HEADER_TIMEOUT = _HeaderTimeout()
HTTP_STARTED: weakref.WeakSet[connection.Connection] = weakref.WeakSet()
"""Client connections on which an HTTP/1 server layer runs (so the header timeout watches them)."""
LINGER_SECONDS = 2.0
"""After a 408, how long the client's late bytes are still read and dropped before the connection closes."""


def _header_timed(handle_event: Callable[..., Commands]) -> Callable[..., Commands]:
    """One wakeup timer per client connection, re-armed as it fires, enforces the header timeout.

    mitmproxy waits for a request head for ever (only its 10-minute ``tcp_timeout`` ends a silent client),
    so a client trickling a head byte by byte holds a connection and a buffer (slowloris)."""

    def wrapper(self: _http1.Http1Server, event: events.Event) -> Commands:
        if type(event) is events.Wakeup:
            if event.command is self._fwd_wakeup:  # type: ignore[attr-defined]
                yield from _on_wakeup(self)
            return
        yield from handle_event(self, event)
        if type(event) is events.Start and (timeout := HEADER_TIMEOUT.seconds) > 0:
            # mitmproxy starts this layer on the first bytes. The first request's clock started when the client
            # connected (RFC 9112 §9.5: servers time out connections); a layer inside a CONNECT tunnel (the
            # client already had an HTTP layer) starts its clock now, with the first bytes after the handshake.
            now = time.monotonic()
            waited = (
                0.0 if self.conn in HTTP_STARTED else time.time() - (self.conn.timestamp_start or time.time())
            )
            HTTP_STARTED.add(self.conn)
            self._fwd_since = now - max(0.0, waited)  # type: ignore[attr-defined]
            yield from _arm(self, max(0.0, timeout - waited))

    return wrapper


def _noting_idle(mark_done: Callable[..., Commands]) -> Callable[..., Commands]:
    def wrapper(self: _http1.Http1Server, *, request: bool = False, response: bool = False) -> Commands:
        # If this exchange ends and the connection is kept alive, it waits idle for the next request;
        # bytes already buffered (or the next read) make it a head in progress (see _bounded_request_head).
        self._fwd_idle = True  # type: ignore[attr-defined]
        self._fwd_since = time.monotonic()  # type: ignore[attr-defined]
        yield from mark_done(self, request=request, response=response)

    return wrapper


def _arm(self: _http1.Http1Server, delay: float) -> Commands:
    self._fwd_wakeup = wakeup = commands.RequestWakeup(delay)  # type: ignore[attr-defined]
    yield wakeup


def _on_wakeup(self: _http1.Http1Server) -> Commands:
    self._fwd_wakeup = None  # type: ignore[attr-defined]
    timeout = HEADER_TIMEOUT.seconds
    if getattr(self.state, "_fwd_lingering", False):
        yield commands.CloseConnection(self.conn)
        self.state = self.done
        return
    if self.state in (self.done, self.passthrough) or timeout <= 0:
        return  # closed, or a tunnel now: inner layers run their own clocks
    if self.state != self.read_headers:
        yield from _arm(self, timeout)  # an exchange in progress: look again a timeout later
        return
    left = self._fwd_since + timeout - time.monotonic()  # type: ignore[attr-defined]
    if left > 0:
        yield from _arm(self, left)
    elif self._fwd_idle and not self.buf:  # type: ignore[attr-defined]
        # An idle kept-alive connection: closed without a word, as nginx does after keepalive_timeout.
        yield commands.CloseConnection(self.conn)
        self.state = self.done
    else:
        # RFC 9110 §15.5.9: 408 with "close" for a head that did not arrive in time.
        yield from _refuse(self, 408, f"the request head did not arrive within {timeout:g}s")
        yield from _arm(self, LINGER_SECONDS)


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
