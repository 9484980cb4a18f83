"""Origin TLS, upstream-proxy TLS and CONNECTs done on the socket, so that such connections can be pooled.

mitmproxy does an origin's TLS in a ``ServerTLSLayer`` (an OpenSSL object fed by the client's layer stack) and
the CONNECT to an upstream proxy in an ``HttpUpstreamProxy`` layer of that same stack: neither can move to
another client. Here both happen where the socket is opened (addons/_mitm/pool.py), with Python's ``ssl`` and
a CONNECT written by hand, and the layers see a connection that is already through both:

- ``HttpLayer.get_connection`` is wrapped. For each connection it creates, :func:`_mark` records a
  :class:`Route` for the connection the proxy will actually open (the origin's, or the one to the upstream
  proxy), turns the ``ServerTLSLayer`` above it into :class:`SocketTLS` (the layer stays, so every
  ``isinstance`` and ``conn.tls`` check in mitmproxy still holds, but it passes bytes through) and tells the
  ``HttpUpstreamProxy`` not to send its own CONNECT.
- For an ``https://`` upstream proxy, mitmproxy stacks a ``ServerTLSLayer`` for the proxy's own connection
  above the ``HttpUpstreamProxy``: it becomes a :class:`SocketTLS` too, and the route names the proxy's TLS
  name (its host, as mitmproxy sets it).
- :func:`open_route` opens the socket: TCP to the origin or the upstream proxy, TLS with an ``https://``
  proxy (the same context as for an origin: mitmproxy's tlsconfig applies the same options to every server
  connection, the proxy's included, and offers it HTTP/1 only), ``CONNECT host:port`` (after
  mitmproxy's ``http_connect_upstream`` hook, which adds the proxy credentials) and ``start_tls`` with a
  context built from the same options mitmproxy's tlsconfig reads (``ssl_insecure``,
  ``ssl_verify_upstream_trusted_ca`` / ``_confdir``, ``client_certs``, ``tls_version_server_*``,
  ``ciphers_server``), SNI and certificate check for the TLS name mitmproxy chose (the CONNECT host: issue
  16 pins it), and ALPN ``http/1.1`` only: the cache talks HTTP/1.1 to origins, HTTP/2 clients are
  translated by mitmproxy. Through an ``https://`` proxy the origin's TLS runs inside the proxy's (a second
  ``start_tls`` on the TLS transport: asyncio since Python 3.11, and uvloop, support it).
- Failures keep mitmproxy's wording (``Certificate verify failed: ...``, ``Upstream proxy ... refused HTTP
  CONNECT request: 502 ...``) and its ``tls_failed_server`` hook, so addons/errors.py and addons/egress.py
  describe and score them as before.

Only connections made by ``get_connection`` are marked: a pass-through tunnel (``TCPLayer``) and the
tunnel's own context connection keep mitmproxy's own TLS. With
``connection_strategy=lazy`` (always ours, fwdproxy/engine.py) the client's TLS handshake never waits for the
origin's, so mitmproxy's ``upstream_cert`` has no origin certificate to copy: the certificate it forges
names the client's SNI and the CONNECT host, as before.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

import certifi
from cryptography import x509
from mitmproxy import certs, connection, ctx, http
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events, tunnel
from mitmproxy.proxy.layers import tls
from mitmproxy.proxy.layers.http import HttpLayer, _upstream_proxy
from mitmproxy.utils import human

from fwdproxy_addons._mitm.mark import marked


@dataclass(frozen=True, slots=True)
class Route:
    """How a marked connection is opened: where the socket goes and what runs on it before HTTP."""

    origin: tuple[str, int]
    sni: str | None
    """The TLS server name (None: plain HTTP)."""
    proxy: tuple[str, int] | None = None
    """The upstream proxy the socket goes to (None: straight to the origin)."""
    connect: bool = False
    """Send ``CONNECT origin`` to the proxy first (HTTPS through it); plain HTTP goes in absolute form."""
    proxy_sni: str | None = None
    """The TLS name of an https:// upstream proxy (None: an http:// one, or no proxy). Its TLS comes first,
    then the CONNECT inside it, then the origin's TLS inside that (TLS in TLS)."""

    @property
    def tls(self) -> bool:
        return self.sni is not None

    @property
    def proxy_tls(self) -> bool:
        return self.proxy_sni is not None


Ref = weakref.ref[connection.Server]
_ROUTES: weakref.WeakKeyDictionary[connection.Server, Route] = weakref.WeakKeyDictionary()
"""The connection the proxy opens -> its route."""
_INNER: weakref.WeakKeyDictionary[connection.Server, Ref] = weakref.WeakKeyDictionary()
"""Through an upstream proxy: the connection the proxy opens -> the origin connection the HTTP layer uses
(weak both ways, so that neither keeps the other alive)."""
_OPENED_AS: weakref.WeakKeyDictionary[connection.Server, Ref] = weakref.WeakKeyDictionary()
"""Through an upstream proxy: the HTTP layer's connection -> the one the proxy opens for it."""


def route(conn: connection.Server) -> Route | None:
    return _ROUTES.get(conn)


def inner(conn: connection.Server) -> connection.Server:
    """The HTTP layer's connection carried by an opened one (itself unless through a proxy)."""
    return ((ref := _INNER.get(conn)) is not None and ref()) or conn


def opened_as(conn: connection.Connection) -> connection.Connection:
    """The socket-owning connection behind an HTTP layer's connection (itself unless through a proxy)."""
    if not isinstance(conn, connection.Server):
        return conn
    return ((ref := _OPENED_AS.get(conn)) is not None and ref()) or conn


class SocketTLS(tls.ServerTLSLayer):
    """A ServerTLSLayer whose TLS runs on the socket (:func:`open_route`): plain pass-through for the layers."""

    def start_handshake(self) -> layer_gen:
        yield from tunnel.TunnelLayer.start_handshake(self)

    def receive_handshake_data(
        self, data: bytes
    ) -> Generator[commands.Command, Any, tuple[bool, str | None]]:
        return (yield from tunnel.TunnelLayer.receive_handshake_data(self, data))

    def receive_data(self, data: bytes) -> layer_gen:
        yield from tunnel.TunnelLayer.receive_data(self, data)

    def receive_close(self) -> layer_gen:
        yield from tunnel.TunnelLayer.receive_close(self)

    def send_data(self, data: bytes) -> layer_gen:
        yield from tunnel.TunnelLayer.send_data(self, data)

    def send_close(self, command: commands.CloseConnection) -> layer_gen:
        yield from tunnel.TunnelLayer.send_close(self, command)

    def event_to_child(self, event: events.Event) -> layer_gen:
        yield from tunnel.TunnelLayer.event_to_child(self, event)


layer_gen = Generator[commands.Command, Any, None]


def apply() -> None:
    """Wrap ``HttpLayer.get_connection`` to mark the connections it makes (once per process:
    addons/_mitm/__init__.py checks the target first; docs/mitmproxy-notes.md §17)."""
    HttpLayer.get_connection = marked(_marking(HttpLayer.get_connection))  # type: ignore[method-assign]


def _marking(original: Callable[..., layer_gen]) -> Callable[..., layer_gen]:
    def get_connection(self: HttpLayer, event: Any, *, reuse: bool = True) -> layer_gen:
        before = set(self.connections)
        commands_ = original(self, event, reuse=reuse)
        pending = True
        reply: Any = None
        while True:
            try:
                command = commands_.send(reply)
            except StopIteration:
                break
            if pending:
                # The new stack is in self.connections before Start reaches it, and the Start makes it ask for
                # its connection: marked now, before the connection handler sees that OpenConnection.
                pending = False
                _mark_new(self, before)
            reply = yield command
        if pending:
            _mark_new(self, before)

    return get_connection


enabled: Callable[[], bool] = lambda: True  # noqa: E731
"""Whether pooling is on (pool.py sets this); off, mitmproxy's layers do TLS and CONNECT as usual."""


def _mark_new(http_layer: HttpLayer, before: set[connection.Connection]) -> None:
    if not enabled():
        return
    new = [c for c in http_layer.connections.keys() - before if isinstance(c, connection.Server)]
    # By the time the first command comes out, the HTTP layer has also filed the upstream proxy's own
    # connection (its OpenConnection passed through), under the same stack as the connection it carries.
    # That one is the proxy's, not an origin: with an https:// proxy it would pass for a direct TLS origin.
    carriers = {id(http_layer.connections[c]) for c in new if c.via is not None}
    for conn in new:
        top = http_layer.connections[conn]
        if conn.via is None and id(top) in carriers:
            continue
        _mark(conn, top)


def _mark(conn: connection.Server, top: Any) -> None:
    if conn.transport_protocol != "tcp" or conn.address is None or conn.sockname is not None:
        return
    address = (conn.address[0], conn.address[1])
    if conn.via is None:
        if conn.tls and type(top) is tls.ServerTLSLayer and top.conn is conn:
            top.__class__ = SocketTLS
            _ROUTES[conn] = Route(address, conn.sni or address[0])
        return
    scheme, proxy = conn.via
    proxy_tls: tls.ServerTLSLayer | None = None
    if scheme == "https":
        # HttpUpstreamProxy.make puts a ServerTLSLayer for the proxy's own connection above the proxy layer.
        if type(top) is not tls.ServerTLSLayer or not isinstance(top.conn, connection.Server):
            return
        proxy_tls, top = top, top.child_layer
    elif scheme != "http":
        return
    if not isinstance(top, _upstream_proxy.HttpUpstreamProxy) or top.conn is not conn:
        return
    opened = top.tunnel_connection
    assert isinstance(opened, connection.Server)
    proxy_sni: str | None = None
    if proxy_tls is not None:
        if proxy_tls.conn is not opened:
            return
        proxy_sni = opened.sni or proxy[0]  # mitmproxy sets the proxy's host name (HttpUpstreamProxy.make)
    if conn.tls:
        tls_layer = top.child_layer
        if type(tls_layer) is not tls.ServerTLSLayer or tls_layer.conn is not conn:
            return
        tls_layer.__class__ = SocketTLS
        top.send_connect = False  # open_route sends the CONNECT
        planned = Route(address, conn.sni or address[0], (proxy[0], proxy[1]), True, proxy_sni)
    else:
        planned = Route(address, None, (proxy[0], proxy[1]), proxy_sni=proxy_sni)
    if proxy_tls is not None:
        proxy_tls.__class__ = SocketTLS  # open_route does the proxy's TLS
    _ROUTES[opened] = planned
    _INNER[opened] = weakref.ref(conn)
    _OPENED_AS[conn] = weakref.ref(opened)


_VERIFY_WORDS = {62: "hostname mismatch", 64: "IP address mismatch"}
"""X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH as X509_verify_cert_error_string words them."""


class RouteFailure(Exception):
    """The CONNECT or the TLS handshake failed; the message is worded as mitmproxy's layers word it."""


class TlsFailure(RouteFailure):
    """The TLS handshake failed (mitmproxy runs ``tls_failed_server`` for these)."""

    def __init__(self, message: str, *, proxy: bool = False) -> None:
        super().__init__(message)
        self.proxy = proxy
        """The handshake with an https:// upstream proxy failed (not the origin's): the hook gets the proxy's
        connection, as mitmproxy's TLS layer for the proxy would give it."""


Connect = Callable[[tuple[str, int]], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
ConnectHook = Callable[[http.HTTPFlow], Awaitable[None]]


async def open_route(
    conn: connection.Server, connect: Connect, hook: ConnectHook, handshake_timeout: float = 60.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A socket through the route of ``conn``: TCP (``connect``), then CONNECT and TLS where the route says."""
    r = _ROUTES[conn]
    reader, writer = await connect(r.proxy or r.origin)
    try:
        if r.proxy_sni is not None:
            await _start_tls(writer, r.proxy_sni, handshake_timeout, proxy=True)
        if r.connect:
            await _connect_through(conn, r, reader, writer, hook)
        if r.sni is not None:
            # Through an https:// proxy this runs on the TLS transport above: asyncio (3.11+) and uvloop
            # both layer a second SSL protocol on it.
            await _start_tls(writer, r.sni, handshake_timeout)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _start_tls(writer: asyncio.StreamWriter, sni: str, timeout: float, *, proxy: bool = False) -> None:
    """The TLS handshake for ``sni`` on ``writer``'s transport; failures worded as mitmproxy's TLS layer."""
    try:
        await writer.start_tls(context(sni), server_hostname=sni, ssl_handshake_timeout=timeout)
    except ssl.SSLCertVerificationError as e:
        # OpenSSL's own wording, as mitmproxy reports it (Python words the name checks its own way).
        why = _VERIFY_WORDS.get(e.verify_code, e.verify_message)
        raise TlsFailure(f"Certificate verify failed: {why}", proxy=proxy) from e
    except ssl.SSLError as e:
        if e.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            raise TlsFailure("The remote server does not speak TLS.", proxy=proxy) from e
        raise TlsFailure(f"OpenSSL {e!r}", proxy=proxy) from e
    except (ConnectionError, TimeoutError) as e:
        raise TlsFailure("connection closed", proxy=proxy) from e


async def _connect_through(
    conn: connection.Server,
    r: Route,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    hook: ConnectHook,
) -> None:
    """CONNECT to the origin through the upstream proxy, as mitmproxy's HttpUpstreamProxy would send it."""
    host, port = r.origin
    try:
        literal = isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        literal = False
    authority = (b"[" + host.encode() + b"]" if literal else host.encode("idna")) + f":{port}".encode()
    headers = http.Headers()
    if ctx.options.http_connect_send_host_header:
        headers.insert(0, b"Host", authority)
    now = time.time()
    flow = http.HTTPFlow(connection.Client(peername=("", 0), sockname=("", 0)), conn)
    flow.request = http.Request(
        host=host,
        port=port,
        method=b"CONNECT",
        scheme=b"",
        authority=authority,
        path=b"",
        http_version=b"HTTP/1.1",
        headers=headers,
        content=b"",
        trailers=None,
        timestamp_start=now,
        timestamp_end=now,
    )
    await hook(flow)  # egress adds Proxy-Authorization for this member here
    writer.write(http1.assemble_request(flow.request))
    proxyaddr = human.format_address(r.proxy)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        raise RouteFailure("connection closed") from e
    except asyncio.LimitOverrunError as e:
        raise RouteFailure(f"Error connecting to {proxyaddr}: response head too long") from e
    try:
        response = http1.read_response_head(head.split(b"\r\n")[:-2])
    except ValueError as e:
        raise RouteFailure(f"Error connecting to {proxyaddr}: {e}") from e
    if not 200 <= response.status_code < 300:
        raise RouteFailure(
            f"Upstream proxy {proxyaddr} refused HTTP CONNECT request: {response.status_code} {response.reason}"
        )


_CONTEXTS: dict[tuple[Any, ...], ssl.SSLContext] = {}


def settings(sni: str | None) -> tuple[Any, ...]:
    """The options that shape an origin TLS connection (part of the pool key: connections made under other
    settings are not interchangeable)."""
    o = ctx.options
    client_cert: str | None = None
    if o.client_certs:
        path = os.path.expanduser(o.client_certs)
        if os.path.isfile(path):
            client_cert = path
        elif sni and os.path.isfile(candidate := os.path.join(path, f"{sni}.pem")):
            client_cert = candidate
    return (
        bool(o.ssl_insecure),
        o.ssl_verify_upstream_trusted_ca,
        o.ssl_verify_upstream_trusted_confdir,
        client_cert,
        o.tls_version_server_min,
        o.tls_version_server_max,
        o.ciphers_server,
    )


_VERSIONS = {
    "SSL3": ssl.TLSVersion.SSLv3,
    "TLS1": ssl.TLSVersion.TLSv1,
    "TLS1_1": ssl.TLSVersion.TLSv1_1,
    "TLS1_2": ssl.TLSVersion.TLSv1_2,
    "TLS1_3": ssl.TLSVersion.TLSv1_3,
}


def context(sni: str | None) -> ssl.SSLContext:
    """The client-side SSL context for an origin, from mitmproxy's options (cached per settings)."""
    key = settings(sni)
    if (found := _CONTEXTS.get(key)) is not None:
        return found
    insecure, cafile, capath, client_cert, low, high, ciphers = key
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if insecure:
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE
        c.options |= getattr(ssl, "OP_LEGACY_SERVER_CONNECT", 0)
    else:
        if cafile is None and capath is None:
            cafile = certifi.where()  # as mitmproxy (mitmproxy/net/tls.py)
        c.load_verify_locations(cafile=cafile, capath=capath)
    if client_cert is not None:
        c.load_cert_chain(client_cert)
    c.minimum_version = _VERSIONS.get(low, ssl.TLSVersion.MINIMUM_SUPPORTED)
    c.maximum_version = _VERSIONS.get(high, ssl.TLSVersion.MAXIMUM_SUPPORTED)
    if ciphers:
        c.set_ciphers(ciphers)
    c.set_alpn_protocols(["http/1.1"])  # a cache talks HTTP/1.1 to origins
    if len(_CONTEXTS) > 64:
        _CONTEXTS.clear()
    _CONTEXTS[key] = c
    return c


def describe(conn: connection.Server, writer: asyncio.StreamWriter) -> None:
    """Fill in the TLS facts of the HTTP layer's connection from the socket (mitmproxy's TLS layer would)."""
    if (r := _ROUTES.get(conn)) is None or not r.tls:
        return
    carried = inner(conn)
    obj = writer.get_extra_info("ssl_object")
    if not isinstance(obj, ssl.SSLObject):
        return
    carried.sni = r.sni
    carried.alpn = (obj.selected_alpn_protocol() or "").encode()
    carried.cipher = (obj.cipher() or ("",))[0]
    carried.tls_version = obj.version()  # type: ignore[assignment]  # the same names mitmproxy uses
    if der := obj.getpeercert(binary_form=True):
        carried.certificate_list = [certs.Cert(x509.load_der_x509_certificate(der))]
    carried.timestamp_tls_setup = time.time()
