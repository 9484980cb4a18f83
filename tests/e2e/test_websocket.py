"""WebSockets through the proxy: handshake and echo over ws:// (absolute-form) and wss:// (intercepted)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trustme
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from fwdproxy.anonymize import DEFAULT_USER_AGENT

ADDRESS = "203.0.113.7"


def _join(parts: list[str | bytes]) -> str | bytes:
    """The fragments of one message (all text or all bytes) as one value."""
    return (
        "".join(p for p in parts if isinstance(p, str))
        if isinstance(parts[0], str)
        else b"".join(p for p in parts if isinstance(p, bytes))
    )


class WsEchoOrigin:
    """A WebSocket origin on 127.0.0.1 (wss when given a context) that echoes messages and records handshakes."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes: list[list[tuple[str, str]]] = []
        """The header list of every handshake request, as received."""
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            ws = WSConnection(ConnectionType.SERVER)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
            self.handshakes.append([(k, v.strip()) for k, _, v in (line.partition(":") for line in lines)])
            ws.receive_data(head)
            parts: list[str | bytes] = []
            while True:
                for event in ws.events():
                    if isinstance(event, TextMessage | BytesMessage):  # echo whole messages only
                        parts.append(event.data)
                        if not event.message_finished:
                            continue
                        event = Message(data=_join(parts))
                        parts.clear()
                    out = self._answer(event)
                    if out is not None:
                        conn.sendall(ws.send(out))
                    if isinstance(event, CloseConnection):
                        return
                data = conn.recv(65536)
                if not data:
                    return
                ws.receive_data(data)
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    @staticmethod
    def _answer(event: Event) -> Event | None:
        if isinstance(event, Request):
            return AcceptConnection(extra_headers=[(b"X-Backend-Server", b"ws-7.internal")])
        if isinstance(event, Message):
            return Message(data=event.data)
        if isinstance(event, Ping):
            return event.response()
        if isinstance(event, CloseConnection):
            return event.response()
        return None

    def close(self) -> None:
        self.listener.close()


class WsClient:
    """A blocking wsproto client on an already connected (proxy) socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []

    def _next(self) -> Event:
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    def handshake(self, host: str, target: str, headers: Sequence[tuple[str, str]] = ()) -> AcceptConnection:
        extra = [(k.encode(), v.encode()) for k, v in headers]
        self.sock.sendall(self.ws.send(Request(host=host, target=target, extra_headers=extra)))
        event = self._next()
        assert not isinstance(event, RejectConnection), event
        assert isinstance(event, AcceptConnection), event
        return event

    def echo(self, message: str | bytes) -> str | bytes:
        self.sock.sendall(self.ws.send(Message(data=message)))
        parts: list[str | bytes] = []
        while True:
            event = self._next()
            if isinstance(event, TextMessage | BytesMessage):
                parts.append(event.data)
                if event.message_finished:
                    return _join(parts)

    def close(self) -> None:
        self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        assert isinstance(self._next(), CloseConnection)


@pytest.fixture
def ws_origin() -> Iterator[WsEchoOrigin]:
    o = WsEchoOrigin()
    yield o
    o.close()


@pytest.fixture
def wss_origin(origin_ca: trustme.CA) -> Iterator[WsEchoOrigin]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    o = WsEchoOrigin(tls=ctx)
    yield o
    o.close()


def plain(proxy_port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy_port), timeout=10)


def tunnel(proxy_port: int, origin_port: int, ca: Path) -> ssl.SSLSocket:
    """A TLS connection to localhost:origin_port through a CONNECT tunnel, trusting only the proxy's CA."""
    sock = plain(proxy_port)
    sock.sendall(
        f"CONNECT localhost:{origin_port} HTTP/1.1\r\nHost: localhost:{origin_port}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: TLS must start right after the blank line
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(sock, server_hostname="localhost")


def test_ws_absolute_form_upgrade_and_echo(start_proxy, ws_origin: WsEchoOrigin) -> None:
    proxy = start_proxy()
    authority = f"127.0.0.1:{ws_origin.port}"
    with plain(proxy.port) as sock:
        ws = WsClient(sock)
        ws.handshake(authority, f"http://{authority}/chat")
        assert ws.echo("hello") == "hello"
        assert ws.echo(b"\x00\x01binary") == b"\x00\x01binary"
        assert ws.echo("x" * 100_000) == "x" * 100_000  # spans several reads and frames
        ws.close()
    assert len(ws_origin.handshakes) == 1


def test_wss_through_an_intercepted_tunnel(
    start_proxy, wss_origin: WsEchoOrigin, proxy_ca_file: Path
) -> None:
    proxy = start_proxy("--connect-port", str(wss_origin.port))
    with tunnel(proxy.port, wss_origin.port, proxy_ca_file) as sock:
        ws = WsClient(sock)
        ws.handshake(f"localhost:{wss_origin.port}", "/chat")
        assert ws.echo("hello over tls") == "hello over tls"
        ws.close()
    assert len(wss_origin.handshakes) == 1


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_handshake_is_anonymized(
    start_proxy, ws_origin: WsEchoOrigin, wss_origin: WsEchoOrigin, proxy_ca_file: Path, secure: bool
) -> None:
    origin = wss_origin if secure else ws_origin
    proxy = start_proxy("--anonymize", "strict", "--connect-port", str(wss_origin.port))
    sent = [("X-Forwarded-For", ADDRESS), ("Via", "1.1 corp"), ("X-Real-IP", ADDRESS)]
    sent += [("User-Agent", "ws-client/1"), ("Cookie", "s=1")]
    if secure:
        sock: socket.socket = tunnel(proxy.port, origin.port, proxy_ca_file)
        authority, target = f"localhost:{origin.port}", "/chat"
    else:
        sock = plain(proxy.port)
        authority = f"127.0.0.1:{origin.port}"
        target = f"http://{authority}/chat"
    with sock:
        ws = WsClient(sock)
        accepted = ws.handshake(authority, target, sent)
        assert ws.echo("still works") == "still works"
        ws.close()
    got = {k.lower(): v for k, v in origin.handshakes[0]}
    assert not {"x-forwarded-for", "via", "x-real-ip"} & set(got)
    assert not any(ADDRESS in v for v in got.values())
    assert got["user-agent"] == DEFAULT_USER_AGENT and got["cookie"] == "s=1"
    assert got["upgrade"].lower() == "websocket" and "sec-websocket-key" in got
    assert b"x-backend-server" not in {k.lower() for k, _ in accepted.extra_headers}
