"""HTTP/2 requests that would not survive as HTTP/1 text are refused (issue 16, point 3), and slow clients are
bounded by the header timeout (point 6)."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
import trustme

from tests.support import Origin, Proxy, Reply, client, fwdproxy_argv


class H2Tunnel:
    """An HTTP/2 client (the h2 library) inside a CONNECT tunnel through the proxy, which intercepts TLS."""

    def __init__(self, proxy: Proxy, port: int, ca: Path) -> None:
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        raw.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += raw.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200"), reply
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        # Client-side validation off: the point is what the proxy does with what a hostile client sends.
        config = h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.authority = f"127.0.0.1:{port}".encode()
        self.sock.sendall(self.conn.data_to_send())

    def request(
        self,
        path: bytes,
        fields: list[tuple[bytes, bytes]],
        body: bytes | None = None,
        authority: bytes | None = None,
    ) -> tuple[int | None, bytes]:
        """Send one request; the response status (None if the stream was reset) and body."""
        sid = self.conn.get_next_available_stream_id()
        head = [(b":method", b"POST" if body is not None else b"GET"), (b":scheme", b"https")]
        head += [(b":authority", authority or self.authority), (b":path", path), *fields]
        self.conn.send_headers(sid, head, end_stream=body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        status, data = None, b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return status, data
            for event in self.conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                    data += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif (
                    isinstance(event, h2.events.StreamEnded | h2.events.StreamReset)
                    and event.stream_id == sid
                ):
                    self.sock.sendall(self.conn.data_to_send())
                    return status, data
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return status, data
            self.sock.sendall(self.conn.data_to_send())

    def close(self) -> None:
        self.sock.close()


H2_CASES = [
    pytest.param(b"/a b", [], id="9113 8.3.1 space in :path"),
    pytest.param(b"/a\r\nX-Smuggled: 1", [], id="9113 8.3.1 CRLF in :path"),
    pytest.param(b"/a HTTP/1.1\r\nHost: evil\r\n\r\nGET /b", [], id="9113 8.3.1 request line in :path"),
    pytest.param(b"/a\tb", [], id="9113 8.3.1 HTAB in :path"),
    pytest.param(b"/a#frag", [], id="9113 8.3.1 fragment in :path"),
    pytest.param(b"/c", [(b"X-Upper", b"v")], id="9113 8.2.1 uppercase name"),
    pytest.param(b"/c", [(b"x\x01y", b"v")], id="9113 8.2.1 control in name"),
    pytest.param(b"/c", [(b"x-a", b"v\r\nX-Smuggled: 1")], id="9113 8.2.1 CRLF in value"),
    pytest.param(b"/c", [(b"x-a", b"v\x00w")], id="9113 8.2.1 NUL in value"),
    pytest.param(b"/c", [(b"connection", b"close")], id="9113 8.2.2 Connection"),
    pytest.param(b"/c", [(b"transfer-encoding", b"chunked")], id="9113 8.2.2 Transfer-Encoding"),
    pytest.param(b"/c", [(b"keep-alive", b"timeout=5")], id="9113 8.2.2 Keep-Alive"),
    pytest.param(b"/c", [(b"upgrade", b"websocket")], id="9113 8.2.2 Upgrade"),
    pytest.param(b"/c", [(b"te", b"gzip")], id="9113 8.2.2 TE not trailers"),
]


@pytest.fixture(scope="module")
def h2_env(
    tmp_path_factory: pytest.TempPathFactory, confdir: Path, origin_ca: trustme.CA, origin_ca_file: Path
) -> Iterator[tuple[Proxy, Origin]]:
    """One intercepting proxy and one TLS origin for all the HTTP/2 cases (starting a proxy is the slow part)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("127.0.0.1").configure_cert(ctx)
    origin = Origin(tls=ctx)
    origin.route("/ok", Reply(200, {"Content-Type": "text/plain", "Cache-Control": "no-store"}, b"fine"))
    tmp = tmp_path_factory.mktemp("h2")
    argv = ["run", "--listen-port", "0", "--admin-port", "0", "--confdir", str(confdir), "--cache-dir"]
    argv += [str(tmp / "cache"), "--upstream-ca", str(origin_ca_file), "--connect-port", str(origin.port)]
    proxy = Proxy(fwdproxy_argv(*argv), tmp)
    yield proxy, origin
    proxy.stop()
    origin.close()


@pytest.mark.parametrize("path, fields", H2_CASES)
def test_h2_request_unsafe_as_http1_is_refused(
    h2_env: tuple[Proxy, Origin], proxy_ca_file: Path, path: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    proxy, origin = h2_env
    origin.requests.clear()
    tunnel = H2Tunnel(proxy, origin.port, proxy_ca_file)
    try:
        status, body = tunnel.request(path, fields)
    finally:
        tunnel.close()
    # Refused by h2 itself (stream reset: no status) or by fwdproxy (400); either way the origin saw nothing.
    assert status in (None, 400), (status, body)
    if status == 400:
        assert body.startswith(b"fwdproxy: "), body
    assert origin.requests == []
    # The proxy serves on: a well-formed HTTP/2 request on a new connection reaches the origin.
    tunnel = H2Tunnel(proxy, origin.port, proxy_ca_file)
    try:
        assert tunnel.request(b"/ok", [(b"x-fine", b"yes")]) == (200, b"fine")
    finally:
        tunnel.close()
    assert [r.path for r in origin.requests] == ["/ok"]
    assert origin.requests[0].headers["x-fine"] == "yes"


@pytest.mark.parametrize("authority", [b"127.0.0.1 evil", b"user@127.0.0.1", b"127.0.0.1:99999"])
def test_h2_bad_authority_is_refused(
    h2_env: tuple[Proxy, Origin], proxy_ca_file: Path, authority: bytes
) -> None:
    proxy, origin = h2_env
    origin.requests.clear()
    tunnel = H2Tunnel(proxy, origin.port, proxy_ca_file)
    try:
        status, body = tunnel.request(b"/c", [], authority=authority)
    finally:
        tunnel.close()
    assert status in (None, 400), (status, body)
    assert origin.requests == []


def test_h2_content_length_mismatch_is_refused(h2_env: tuple[Proxy, Origin], proxy_ca_file: Path) -> None:
    proxy, tls_origin = h2_env
    tls_origin.requests.clear()
    for declared, body in [(b"10", b"hello"), (b"2", b"hello")]:
        tunnel = H2Tunnel(proxy, tls_origin.port, proxy_ca_file)
        try:
            status, _ = tunnel.request(b"/upload", [(b"content-length", declared)], body=body)
        finally:
            tunnel.close()
        assert status in (None, 400), status  # RFC 9113 §8.1.1: malformed; the stream is reset
    assert tls_origin.requests == []


def test_partial_head_gets_408_and_others_are_served(start_proxy, origin: Origin) -> None:
    proxy = start_proxy("--header-timeout", "1s")
    url = origin.url("/")
    with client(proxy) as normal:
        assert normal.get(url).status_code == 200
        slow = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        started = time.monotonic()
        slow.sendall(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\nX-Slow: ".encode())
        # The client keeps trickling bytes (slowloris); the timeout counts from its first byte, not its last.
        reply = b""
        slow.settimeout(0.3)
        while time.monotonic() - started < 5:
            try:
                chunk = slow.recv(65536)
            except TimeoutError:
                try:
                    slow.sendall(b"a")
                except OSError:
                    break
                continue
            if not chunk:
                break
            reply += chunk
        elapsed = time.monotonic() - started
        slow.close()
        assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply
        assert b"Connection: close\r\n" in reply
        assert reply.endswith(b"fwdproxy: the request head did not arrive within 1s\n")
        assert 0.9 <= elapsed <= 3.5, elapsed
        # A normal client on a kept-alive connection is unaffected, even after idling less than the timeout.
        time.sleep(0.5)
        assert normal.get(url).status_code == 200
    assert origin.hits["/"] == 2


def test_slow_second_request_on_a_kept_alive_connection_gets_408(start_proxy, origin: Origin) -> None:
    proxy = start_proxy("--header-timeout", "1s")
    request = f"GET {origin.url('/')} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b"hello from origin\n"):
            reply += sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 ")
        time.sleep(0.6)  # idle, within the timeout: the connection stays
        started = time.monotonic()
        sock.sendall(request[:20])  # the next head's clock starts with its first byte
        time.sleep(0.6)
        sock.sendall(request[20:30])  # more bytes do not restart it
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert 0.9 <= elapsed <= 3.5, elapsed
    assert origin.hits["/"] == 1


def test_silent_and_idle_connections_are_closed(start_proxy, origin: Origin) -> None:
    proxy = start_proxy("--header-timeout", "1s")
    silent = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    started = time.monotonic()
    assert silent.recv(100) == b""  # no bytes at all: closed without a word
    assert 0.9 <= time.monotonic() - started <= 3.5
    silent.close()

    idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    idle.sendall(f"GET {origin.url('/')} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode())
    reply = b""
    while not reply.endswith(b"hello from origin\n"):
        reply += idle.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200 ")
    answered = time.monotonic()
    # Kept alive and idle: closed silently once the timeout has passed since the response.
    assert idle.recv(100) == b""
    assert 0.9 <= time.monotonic() - answered <= 3.5
    idle.close()
    with client(proxy) as c:
        assert c.get(origin.url("/")).status_code == 200


def test_header_timeout_inside_a_tunnel(start_proxy, tls_origin: Origin, proxy_ca_file: Path) -> None:
    proxy = start_proxy("--header-timeout", "1s", "--connect-port", str(tls_origin.port))
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    raw.sendall(
        f"CONNECT 127.0.0.1:{tls_origin.port} HTTP/1.1\r\nHost: 127.0.0.1:{tls_origin.port}\r\n\r\n".encode()
    )
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    tls = ssl.create_default_context(cafile=str(proxy_ca_file)).wrap_socket(raw, server_hostname="127.0.0.1")
    started = time.monotonic()
    tls.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    reply = b""
    while chunk := tls.recv(65536):
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert 0.9 <= time.monotonic() - started <= 3.5
    tls.close()
    assert tls_origin.requests == []
