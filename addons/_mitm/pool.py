"""A patch to mitmproxy's connection handler (not an addon): origin connections shared by all clients, and
cached DNS answers.

mitmproxy opens origin connections in ``ConnectionHandler.open_connection`` with ``asyncio.open_connection``
(so a ``getaddrinfo`` per connect), and each belongs to one client connection's HTTP layer: it is reused only
by that client and closed when that client leaves. Squid, ATS and nginx share persistent origin connections
among all clients instead (issue 17). This module replaces ``open_connection`` for TCP:

- the host name is resolved through :class:`fwdproxy.dnscache.DnsCache` (the connection keeps the name as its
  address, so SNI, certificate checks, Host and logs are unchanged; only the socket gets the IP);
- an origin connection comes from the process-wide :class:`fwdproxy.originpool.OriginPool` (keyed by scheme,
  host, port, upstream proxy and TLS name and settings): an idle one is reused, else a new one is opened
  within ``max_per_origin``. Plain HTTP straight to the origin is a bare socket; HTTPS origins and
  connections through an http:// or https:// upstream proxy are opened through the route
  addons/_mitm/origintls.py gave them (the proxy's TLS, CONNECT and the origin's TLS done on the socket), so
  they too are sockets that any client can use;
- ``Http1Client.mark_done`` is wrapped: when an exchange on a pooled connection ends and the connection is
  clean (response complete, no request started, no byte buffered, neither side closing), the connection is
  taken out of its client's HTTP layer and handed to the pool, so the next request of *any* client gets it;
- a request on a reused connection that the origin closed before sending a single byte back is replayed
  once on a fresh connection when its method is idempotent (RFC 9110 §9.2.2, RFC 9112 §9.3.1): the client
  has been sent nothing, and the HTTP layer never sees the first connection end.

- an HTTP/2 client's request on a pooled HTTP/1.1 connection no longer closes it (mitmproxy's rule for
  HTTP/2 -> HTTP/1, which relies on its per-client limit; the pool has its own).

Not pooled: connections whose TLS or tunnel mitmproxy's layers still do (pass-through tunnels, a source
address), and everything with ``--origin-idle-timeout 0``. They get cached DNS
and close with their client as before. :func:`apply` makes the changes;
addons/_mitm/__init__.py calls it once per process, after checking the targets (docs/mitmproxy-notes.md §17).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import connection
from mitmproxy import tls as mtls
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events, server, server_hooks
from mitmproxy.proxy.layers import tls
from mitmproxy.proxy.layers.http import HttpLayer, _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import ResponseHeaders
from mitmproxy.proxy.layers.http._hooks import HttpConnectUpstreamHook
from mitmproxy.utils import human

from fwdproxy.dnscache import Addresses, DnsCache
from fwdproxy.originpool import DEFAULT_IDLE_TIMEOUT, OriginPool, PoolKey
from fwdproxy_addons._mitm import origintls, wideread
from fwdproxy_addons._mitm.mark import marked

log = logging.getLogger("fwdproxy.origins")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
"""RFC 9110 §9.2.2: methods a client (here: the proxy) may repeat automatically."""
REPLAY_LIMIT = 64 * 1024
"""Bytes of request kept for a replay; a longer request (an upload) is not replayed."""


@dataclass(eq=False)
class _Socket:
    """An origin connection outside any client's layers, idling in the pool."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    watcher: asyncio.Task[bool] | None = None


@dataclass(eq=False)
class _Pooled:
    """A pooled connection in use by a client's handler."""

    handler: server.ConnectionHandler
    key: PoolKey
    detach: bool = False
    """Set when the exchange ended cleanly: the read loop hands the socket to the pool instead of closing."""


@dataclass
class Shared:
    """The process-wide DNS cache and pool (the addon configures them)."""

    dns: DnsCache = field(default_factory=lambda: DnsCache(_getaddrinfo, time.monotonic))
    pool: OriginPool[_Socket] = field(default_factory=OriginPool)
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    """0: no pooling (each client's origin connections close with it, mitmproxy's own behaviour)."""
    replays: int = 0
    """Requests replayed on a fresh connection after a reused one turned out closed."""


_CLOSING: weakref.WeakSet[connection.Connection] = weakref.WeakSet()
"""Origin connections whose origin announced it closes them after the response (RFC 9112 §9.6)."""
_IN_USE: weakref.WeakKeyDictionary[connection.Connection, _Pooled] = weakref.WeakKeyDictionary()
_PINNED: weakref.WeakSet[connection.Connection] = weakref.WeakSet()
"""Origin connections that carried connection-based authentication (NTLM, Negotiate: RFC 4559 §6.1, the
handshake and what it grants belong to the TCP connection): they stay with the client that used them, as
mitmproxy keeps every origin connection, and never go to the pool where another client would inherit the login."""
CONNECTION_AUTH = frozenset({"ntlm", "negotiate"})
"""Authentication schemes whose credentials hold for the connection rather than for a request."""


async def _getaddrinfo(host: str) -> Addresses:
    """The OS resolver's answer for ``host``, as (family, IP) pairs without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    seen: dict[tuple[int, str], None] = {}
    for family, _, _, _, sockaddr in infos:
        seen[(family, str(sockaddr[0]))] = None
    log.debug("DNS lookup of %s: %s", host, ", ".join(ip for _, ip in seen))
    return tuple(seen)


SHARED = Shared()


def apply() -> None:
    """Replace ``open_connection`` and wrap two HTTP/1 client methods (once per process: addons/_mitm/__init__.py
    checks them first; it applies addons/_mitm/http1.py before this, whose wrappers these go around)."""
    handler = server.ConnectionHandler
    original = handler.open_connection

    @marked
    async def open_connection(self: server.ConnectionHandler, command: commands.OpenConnection) -> None:
        conn = command.connection
        if conn.transport_protocol != "tcp" or not conn.address:
            return await original(self, command)
        await _open(self, command)

    handler.open_connection = open_connection  # type: ignore[method-assign]
    origintls.enabled = lambda: SHARED.idle_timeout > 0
    origintls.apply()
    client = _http1.Http1Client
    client.read_headers = marked(_noting_close(client.read_headers))  # type: ignore[method-assign]
    client.mark_done = marked(_releasing(client.mark_done))  # type: ignore[method-assign]


def _key(conn: connection.Server) -> PoolKey | None:
    if SHARED.idle_timeout <= 0 or conn.sockname is not None:
        return None
    if (route := origintls.route(conn)) is not None:
        host, port = route.origin
        via = ""
        if route.proxy is not None:
            via = f"{'https' if route.proxy_tls else 'http'}://{human.format_address(route.proxy)}"
            if route.proxy_tls:
                # The proxy's TLS name and handshake settings, as for an origin's below.
                via += " " + repr((route.proxy_sni, origintls.settings(route.proxy_sni)))
        # The TLS name and every option that shapes the handshake: other settings, other connections.
        tls_key = repr((route.sni, origintls.settings(route.sni))) if route.tls else ""
        return PoolKey("https" if route.tls else "http", host.lower(), port, via, tls_key)
    if conn.tls or conn.via is not None:
        return None  # mitmproxy's own TLS or tunnel (a layout origintls.py does not mark): not movable
    if conn.address in wideread._WIDE:
        # The cache's own sidecar (big hits from disk): a loopback connection costs nothing, and the
        # per-origin limit must not queue big downloads behind each other.
        return None
    assert conn.address is not None
    host, port = conn.address
    return PoolKey("http", host.lower(), port)


async def _open_socket(
    self: server.ConnectionHandler, conn: connection.Server, local: tuple[str, int] | None
) -> tuple[Any, Any]:
    """A new socket for ``conn`` (from ``local``, a source address): through its route (TLS, upstream proxy)
    when it has one, else plain TCP."""
    if origintls.route(conn) is None:
        assert conn.address is not None
        return await _connect(conn.address, local)

    async def hook(flow: Any) -> None:
        await self.handle_hook(HttpConnectUpstreamHook(flow))

    return await origintls.open_route(conn, lambda address: _connect(address, local), hook)


async def _connect(address: tuple[str, int], local: tuple[str, int] | None) -> tuple[Any, Any]:
    """Open a socket to the first of the name's addresses that accepts, as ``asyncio.open_connection`` does."""
    host, port = address
    error: OSError | None = None
    for _, ip in await SHARED.dns.resolve(host):
        try:
            return await asyncio.open_connection(ip, port, local_addr=local)
        except OSError as e:
            error = e
    raise error or OSError(f"no address for {host}")


async def _open(self: server.ConnectionHandler, command: commands.OpenConnection) -> None:
    """mitmproxy's open_connection, with the pool and the DNS cache (same hooks, log lines and errors)."""
    conn = command.connection
    assert isinstance(conn, connection.Server) and conn.address
    hook_data = server_hooks.ServerConnectionHookData(client=self.client, server=conn)
    await self.handle_hook(server_hooks.ServerConnectHook(hook_data))
    if err := conn.error:
        self.log(f"server connection to {human.format_address(conn.address)} killed before connect: {err}")
        await self.handle_hook(server_hooks.ServerConnectErrorHook(hook_data))
        await self.server_event(events.OpenConnectionCompleted(command, f"Connection killed: {err}"))
        return
    # The server_connect hook may have changed the address or set an upstream: the key is taken after it.
    key = _key(conn)
    if key is None:
        async with self.max_conns[conn.address]:  # mitmproxy's own limit per client connection
            await _run(self, command, hook_data, None)
    else:
        await _run(self, command, hook_data, key)


async def _run(
    self: server.ConnectionHandler,
    command: commands.OpenConnection,
    hook_data: server_hooks.ServerConnectionHookData,
    key: PoolKey | None,
) -> None:
    conn = command.connection
    address = conn.address
    assert address is not None
    sock: _Socket | None = None
    holding = False
    try:
        conn.timestamp_start = time.time()
        if key is not None:
            sock = await _take(key)
            holding = True  # a slot: the idle connection's, or one for a new connection
        if sock is None:
            reader, writer = await _open_socket(self, conn, conn.sockname)
        else:
            reader, writer = sock.reader, sock.writer
    except origintls.RouteFailure as e:
        # Connected, then the CONNECT or the TLS handshake failed: reported as mitmproxy's layers would.
        if key is not None and holding:
            SHARED.pool.discard(key)
        err = str(e)
        inner = origintls.inner(conn)
        conn.error = inner.error = err
        self.log(f"server connection to {human.format_address(address)} failed: {err}")
        if isinstance(e, origintls.TlsFailure):
            failed = conn if e.proxy else inner  # the https:// upstream proxy's handshake, or the origin's
            await self.handle_hook(tls.TlsFailedServerHook(mtls.TlsData(failed, self.layer.context)))
        await self.server_event(events.OpenConnectionCompleted(command, err))
        return
    except (OSError, asyncio.CancelledError) as e:
        if key is not None and holding:
            SHARED.pool.discard(key)
        err = str(e) or "connection cancelled"
        self.log(f"error establishing server connection: {err}")
        conn.error = err
        await self.handle_hook(server_hooks.ServerConnectErrorHook(hook_data))
        await self.server_event(events.OpenConnectionCompleted(command, err))
        if isinstance(e, asyncio.CancelledError):
            raise
        return
    conn.timestamp_tcp_setup = time.time()
    conn.state = ConnectionState.OPEN
    conn.peername = writer.get_extra_info("peername")
    conn.sockname = writer.get_extra_info("sockname")
    origintls.describe(conn, writer)
    # A reused connection's writer keeps the request for a replay (a StreamWriter by delegation).
    replay = _Replay(writer, address, conn) if sock is not None else None
    self.transports[conn] = server.ConnectionIO(
        handler=asyncio.current_task(),
        reader=reader,
        writer=replay or writer,  # type: ignore[arg-type]
    )
    if key is not None:
        _IN_USE[conn] = _Pooled(self, key)
    addr = human.format_address(address)
    if conn.peername and address[0] != conn.peername[0]:
        addr += f" ({human.format_address(conn.peername)})"
    self.log(f"server connect {addr}" + (" (reused)" if sock is not None else ""))
    try:
        await self.handle_hook(server_hooks.ServerConnectedHook(hook_data))
        await self.server_event(events.OpenConnectionCompleted(command, None))
        await _pump(self, conn, replay)
    finally:
        if (pooled := _IN_USE.pop(conn, None)) is not None:
            # Cancelled before the read loop ran (its client left at that moment): free what it held.
            writer.close()
            self.transports.pop(conn, None)
            SHARED.pool.discard(pooled.key)
        self.log(f"server disconnect {addr}")
        conn.timestamp_end = time.time()
        await self.handle_hook(server_hooks.ServerDisconnectedHook(hook_data))


async def _take(key: PoolKey) -> _Socket | None:
    """An idle connection of ``key`` that is still open, or None with a slot held for a new one."""
    while (sock := await SHARED.pool.acquire(key)) is not None:
        watcher = sock.watcher
        sock.watcher = None
        alive = True
        if watcher is not None:
            watcher.cancel()
            try:
                alive = not await watcher
            except asyncio.CancelledError:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    _idle(key, sock)  # our own client left meanwhile: back to the pool it goes
                    raise
        if alive and not sock.reader.at_eof() and not sock.writer.is_closing() and not _buffered(sock.reader):
            return sock
        sock.writer.close()  # it closed while idle: its slot is ours, for a new connection
        return None
    return None


def _buffered(reader: asyncio.StreamReader) -> bool:
    """Bytes the origin sent after the last response's framing, already read from the socket. A connection
    handed straight to a waiting request is taken before its watcher ever reads (the watcher task has not
    run yet), so such bytes would be parsed as the next request's response: another client's answer
    (RFC 9112 §9.3: unframed bytes make a connection unusable). asyncio's StreamReader has no public way to
    ask; ``_buffer`` is its receive buffer (CPython 3.12-3.13)."""
    return bool(getattr(reader, "_buffer", b""))


class _Replay:
    """The writer of a reused connection: keeps what is written until the origin's first byte, so that the
    request can be sent again on a fresh connection if the origin had closed this one."""

    def __init__(
        self, writer: asyncio.StreamWriter, address: tuple[str, int], conn: connection.Server
    ) -> None:
        self.writer = writer
        self.address = address
        self.conn = conn
        self.sent: bytearray | None = bytearray()
        """The bytes written so far; None once replaying is no longer possible (or done)."""

    def write(self, data: bytes) -> None:
        if self.sent is not None:
            self.sent += data
            if len(self.sent) > REPLAY_LIMIT:
                self.sent = None
        self.writer.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)

    def replayable(self) -> bool:
        if self.sent is None:
            return False
        method = bytes(self.sent).split(b" ", 1)[0]
        return not self.sent or (b" " in self.sent and method in IDEMPOTENT)


async def _pump(self: server.ConnectionHandler, conn: connection.Connection, replay: _Replay | None) -> None:
    """Read the origin into the layers until it closes, or until the exchange ends and the pool takes it."""
    io = self.transports[conn]
    cancelled: asyncio.CancelledError | None = None
    idle_read = False
    while True:
        reader = io.reader
        assert isinstance(reader, asyncio.StreamReader)
        try:
            data = await reader.read(65535)
            if not data:
                raise OSError("Connection closed by peer.")
        except OSError as e:
            if (
                replay is not None
                and replay.replayable()
                and await _replay_on_fresh(self, conn, io, replay, e)
            ):
                replay = None
                continue
            break
        except asyncio.CancelledError as e:
            cancelled, idle_read = e, True
            break
        if replay is not None:
            replay.sent = None  # the origin answered: what follows is not a replay's business
            replay = None
        await self.server_event(events.DataReceived(conn, data))
        try:
            await self.drain_writers()
        except asyncio.CancelledError as e:
            cancelled = e
            break
    pooled = _IN_USE.pop(conn, None)
    if pooled is not None and pooled.detach:
        # The layer forgot the connection in _detach: no ConnectionClosed for it, whatever happens now.
        io = self.transports.pop(conn)
        conn.state = ConnectionState.CLOSED
        if isinstance(conn, connection.Server):
            origintls.inner(conn).state = ConnectionState.CLOSED
        writer = io.writer.writer if isinstance(io.writer, _Replay) else io.writer
        if idle_read:
            # Stopped while waiting for bytes, so none was lost: the socket is clean for the next request.
            _idle(pooled.key, _Socket(reader=io.reader, writer=writer))  # type: ignore[arg-type]
        else:
            # Stopped mid-event or by the origin closing: not reusable.
            writer.close()  # type: ignore[union-attr]
            SHARED.pool.discard(pooled.key)
        if cancelled is not None and (task := asyncio.current_task()) is not None:
            task.uncancel()  # the cancellation was ours, a signal to stop reading: it is spent
        return
    if cancelled is None:
        conn.state &= ~ConnectionState.CAN_READ  # TCP half-close: we may still write
    else:
        conn.state = ConnectionState.CLOSED
    if pooled is not None:
        SHARED.pool.discard(pooled.key)  # closing from here on: its slot may go to a waiting request now
    await self.server_event(events.ConnectionClosed(conn))
    if conn.state is ConnectionState.CAN_WRITE:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as e:
            cancelled = e
    try:
        assert io.writer is not None
        io.writer.close()
    except OSError:
        pass
    self.transports.pop(conn, None)
    if cancelled:
        raise cancelled


async def _replay_on_fresh(
    self: server.ConnectionHandler,
    conn: connection.Connection,
    io: server.ConnectionIO,
    replay: _Replay,
    e: OSError,
) -> bool:
    """Swap the dead reused socket for a fresh one and send it what the dead one got (RFC 9112 §9.3.1);
    False when no fresh connection opens (the request then fails as it would have)."""
    assert replay.sent is not None
    sent, replay.sent = bytes(replay.sent), None
    replay.writer.close()
    where = human.format_address(replay.address)
    try:
        reader, writer = await _open_socket(self, replay.conn, None)
    except (OSError, origintls.RouteFailure) as connect_error:
        log.info("reused connection to %s was closed (%s); a new one failed: %s", where, e, connect_error)
        return False
    SHARED.replays += 1
    log.info("reused connection to %s was closed (%s): request replayed on a new one", where, e)
    conn.peername = writer.get_extra_info("peername")
    conn.sockname = writer.get_extra_info("sockname")
    replay.writer = writer
    io.reader = reader
    origintls.describe(replay.conn, writer)
    writer.write(sent)
    return True


def _idle(key: PoolKey, sock: _Socket) -> None:
    """Park a clean connection in the pool, watched for the origin closing it and for the idle timeout."""
    sock.watcher = asyncio.ensure_future(_watch(key, sock))
    SHARED.pool.put(key, sock)


async def _watch(key: PoolKey, sock: _Socket) -> bool:
    """Wait while the connection idles; True when it must go (origin closed, sent stray bytes, timed out)."""
    try:
        await asyncio.wait_for(sock.reader.read(1), SHARED.idle_timeout)
    except TimeoutError:
        pass
    except OSError:
        pass
    # Whatever ended the wait, the connection is unusable now (a stray byte is unframed: RFC 9112 §9.3).
    if SHARED.pool.remove_idle(key, sock):
        sock.writer.close()
    return True


Commands = Generator[commands.Command, Any, None]


def _releasing(mark_done: Callable[..., Commands]) -> Callable[..., Commands]:
    def wrapper(self: _http1.Http1Client, *, request: bool = False, response: bool = False) -> Commands:
        req = self.request
        if (
            req is None
            or not (req.is_http2 or req.is_http3)
            or not (request or self.request_done)
            or not (response or self.response_done)
            or _IN_USE.get(origintls.opened_as(self.conn)) is None
            or self.conn
            in _PINNED  # mitmproxy never reuses it for an HTTP/2 client: closed as mitmproxy does
        ):
            yield from mark_done(self, request=request, response=response)
        else:
            # mitmproxy closes an HTTP/1 origin connection after one request of an HTTP/2 client, leaving the
            # limit per origin to its per-client semaphore; the pool has its own limit, so the connection is
            # judged as for an HTTP/1.1 request (Connection headers, framing) and may go back to the pool.
            version, req.http_version = req.http_version, "HTTP/1.1"
            try:
                done = list(mark_done(self, request=request, response=response))
            finally:
                req.http_version = version
            yield from done
        if _clean(self) and (pooled := _IN_USE.get(origintls.opened_as(self.conn))) is not None:
            # After this event is handled: the HTTP layer is iterating over our commands right now.
            asyncio.get_running_loop().call_soon(_detach, self, pooled)

    return wrapper


def _noting_close(read_headers: Callable[..., Commands]) -> Callable[..., Commands]:
    def wrapper(self: _http1.Http1Client, event: events.ConnectionEvent) -> Commands:
        for command in read_headers(self, event):
            if isinstance(command, ReceiveHttp) and isinstance(command.event, ResponseHeaders):
                # Judged on the head as the origin sent it: by the time the exchange ends, an addon may have
                # stripped the hop-by-hop Connection header that mitmproxy's own check (mark_done) reads.
                response = command.event.response
                if http1.connection_close(response.http_version, response.headers):
                    _CLOSING.add(self.conn)
                request = self.request
                if _connection_auth(
                    request.headers.get_all("authorization") if request is not None else []
                ) or (_connection_auth(response.headers.get_all("www-authenticate"))):
                    _PINNED.add(self.conn)
            yield command

    return wrapper


def _connection_auth(values: list[str]) -> bool:
    """Whether Authorization or WWW-Authenticate values name a connection-based scheme (NTLM, Negotiate)."""
    return any(
        part.strip().split(" ", 1)[0].lower() in CONNECTION_AUTH
        for value in values
        for part in value.split(",")
    )


def _clean(client: _http1.Http1Client) -> bool:
    return (
        client.state == client.read_headers
        and client.stream_id is None
        and not client.buf
        and client.conn.state is ConnectionState.OPEN
        and client.conn not in _CLOSING
        and client.conn not in _PINNED
    )


def _detach(client: _http1.Http1Client, pooled: _Pooled) -> None:
    """Take a clean connection from its client's HTTP layer and have its read loop hand it to the pool."""
    conn = client.conn  # the layers' connection; through an upstream proxy, the socket is another one's
    opened = origintls.opened_as(conn)
    io = pooled.handler.transports.get(opened)
    if not _clean(client) or io is None or io.handler is None or _IN_USE.get(opened) is not pooled:
        return
    layer = next((x for x in reversed(client.context.layers) if isinstance(x, HttpLayer)), None)
    if layer is None or conn not in layer.connections or conn in layer.waiting_for_establishment:
        return
    del layer.connections[conn]
    if opened is not conn:
        layer.connections.pop(opened, None)  # the upstream proxy's connection, filed there for its events
    pooled.detach = True
    io.handler.cancel("fwdproxy: back to the origin pool")
