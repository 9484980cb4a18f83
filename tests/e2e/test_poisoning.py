"""Cache poisoning through targets that can be read two ways (issue 16): what is forwarded, what is stored
and what a victim is served afterwards. Attacks go over raw sockets and raw HTTP/2 frames (the ``h2``
library through a CONNECT tunnel), because ordinary clients refuse to send them."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trustme

from tests.support import Origin, Recorded, Reply, client

MAX_AGE = {"Cache-Control": "max-age=600", "Content-Type": "text/plain"}


def vhost(rec: Recorded) -> Reply:
    """A virtual-hosting origin: the body names the Host it was asked for (a CDN serving many sites)."""
    return Reply(200, MAX_AGE, f"site={rec.headers.get('Host')} path={rec.path}\n".encode())


def seen(origin: Origin) -> list[tuple[str | None, str]]:
    """(Host, request target) of every request the origin received."""
    return [(r.headers.get("Host"), r.path) for r in origin.requests]


def _connect(proxy_port: int, authority: str) -> socket.socket:
    """A socket through ``CONNECT authority`` (asserting the proxy said 200)."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=15)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and (chunk := sock.recv(4096)):
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _tls(sock: socket.socket, ca: Path, sni: str, alpn: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # the proxy's certificate is not the point here; its CA still is checked
    ctx.set_alpn_protocols([alpn])
    return ctx.wrap_socket(sock, server_hostname=sni)


@contextlib.contextmanager
def h2_tunnel(proxy_port: int, authority: str, ca: Path, sni: str = "localhost") -> Iterator[ssl.SSLSocket]:
    tls = _tls(_connect(proxy_port, authority), ca, sni, "h2")
    assert tls.selected_alpn_protocol() == "h2"
    try:
        yield tls
    finally:
        tls.close()


def h2_get(tls: ssl.SSLSocket, headers: list[tuple[str, str]]) -> tuple[int | None, bytes]:
    """Send one request with exactly these pseudo-headers and fields (no client-side validation); the
    status and body, or None and what ended the exchange instead (b"RST_STREAM", b"GOAWAY", b"")."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    conn.initiate_connection()
    conn.send_headers(1, [(k.encode(), v.encode()) for k, v in headers], end_stream=True)
    tls.sendall(conn.data_to_send())
    status: int | None = None
    body = b""
    while True:
        data = tls.recv(65536)
        if not data:
            return None, b""
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                return status, body
            elif isinstance(event, h2.events.StreamReset):
                return None, b"RST_STREAM"
            elif isinstance(event, h2.events.ConnectionTerminated):
                return None, b"GOAWAY"
        tls.sendall(conn.data_to_send())


def raw_exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send raw bytes, read the whole answer (the request says Connection: close)."""
    sock.sendall(request)
    reply = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def h1_in_tunnel(proxy_port: int, authority: str, ca: Path, request: bytes) -> bytes:
    with _tls(_connect(proxy_port, authority), ca, "localhost", "http/1.1") as tls:
        return raw_exchange(tls, request)


def h2_fetch(proxy_url: str, ca: Path, url: str) -> httpx.Response:
    """A victim: an ordinary HTTP/2 client."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(proxy=proxy_url, verify=ctx, trust_env=False, timeout=30, http2=True) as c:
        return c.get(url)


@pytest.fixture
def site(tls_origin: Origin) -> Origin:
    """The TLS origin (certificate for localhost and 127.0.0.1) answering every path below by Host."""
    return tls_origin


def test_h2_path_with_at_sign_is_refused_and_never_stored(
    start_proxy, site: Origin, proxy_ca_file: Path
) -> None:
    # RFC 9113 §8.3.1: :path must start with "/" (or be "*"). mitmproxy builds request.url as
    # https://localhost:PORT@127.0.0.1:PORT/x from it; a key parsed back out of that string names 127.0.0.1.
    port = site.port
    evil_path = f"@127.0.0.1:{port}/x"
    site.route(evil_path, vhost)
    site.route("/x", vhost)
    proxy = start_proxy("--connect-port", str(port))
    with h2_tunnel(proxy.port, f"localhost:{port}", proxy_ca_file) as tls:
        status, body = h2_get(
            tls,
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", f"localhost:{port}"),
                (":path", evil_path),
            ],
        )
    assert status == 400 and body.startswith(b"fwdproxy: "), (status, body)
    assert seen(site) == []  # not forwarded
    victim = h2_fetch(proxy.url, proxy_ca_file, f"https://127.0.0.1:{port}/x")
    assert victim.text == f"site=127.0.0.1:{port} path=/x\n"
    assert seen(site) == [
        (f"127.0.0.1:{port}", "/x")
    ]  # the victim's request reached the origin: no poisoned hit


@pytest.mark.parametrize(
    "path", ["x", "*", "http://127.0.0.1/x"], ids=["relative", "star-for-GET", "absolute"]
)
def test_h2_path_not_origin_form_is_refused(
    start_proxy, site: Origin, proxy_ca_file: Path, path: str
) -> None:
    proxy = start_proxy("--connect-port", str(site.port))
    with h2_tunnel(proxy.port, f"localhost:{site.port}", proxy_ca_file) as tls:
        status, body = h2_get(
            tls,
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", f"localhost:{site.port}"),
                (":path", path),
            ],
        )
    assert status == 400 and body.startswith(b"fwdproxy: "), (status, body)
    assert seen(site) == []


def test_h1_origin_form_not_starting_with_slash_is_refused(
    start_proxy, site: Origin, proxy_ca_file: Path
) -> None:
    port = site.port
    site.route(f"@127.0.0.1:{port}/y", vhost)
    proxy = start_proxy("--connect-port", str(port))
    reply = h1_in_tunnel(
        proxy.port,
        f"localhost:{port}",
        proxy_ca_file,
        f"GET @127.0.0.1:{port}/y HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.1 400"), reply
    assert seen(site) == []


@pytest.mark.parametrize("field", [":authority", "host"])
def test_h2_authority_of_another_host_in_tunnel_is_misdirected(
    start_proxy, site: Origin, proxy_ca_file: Path, field: str
) -> None:
    # Tunnel to localhost, :authority (or a lone Host) 127.0.0.1: before the fix mitmproxy connected to
    # localhost and sent 127.0.0.1 to the origin, and the cache stored 127.0.0.1's page as localhost's.
    port = site.port
    site.route("/a", vhost)
    proxy = start_proxy("--connect-port", str(port))
    request = [(":method", "GET"), (":scheme", "https"), (":authority", f"127.0.0.1:{port}"), (":path", "/a")]
    if field == "host":
        request = [request[0], request[1], request[3], ("host", f"127.0.0.1:{port}")]
    with h2_tunnel(proxy.port, f"localhost:{port}", proxy_ca_file) as tls:
        status, body = h2_get(tls, request)
    assert status == 421 and body.startswith(b"fwdproxy: "), (status, body)
    assert seen(site) == []
    for host in ("localhost", "127.0.0.1"):
        assert (
            h2_fetch(proxy.url, proxy_ca_file, f"https://{host}:{port}/a").text
            == f"site={host}:{port} path=/a\n"
        )
    assert sorted(seen(site)) == [(f"127.0.0.1:{port}", "/a"), (f"localhost:{port}", "/a")]


def test_h1_host_of_another_host_in_tunnel_is_misdirected(
    start_proxy, site: Origin, proxy_ca_file: Path
) -> None:
    port = site.port
    site.route("/b", vhost)
    proxy = start_proxy("--connect-port", str(port))
    reply = h1_in_tunnel(
        proxy.port,
        f"localhost:{port}",
        proxy_ca_file,
        f"GET /b HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.1 421"), reply
    assert b"fwdproxy: " in reply
    assert seen(site) == []
    with client(proxy, proxy_ca_file) as c:
        assert c.get(f"https://localhost:{port}/b").text == f"site=localhost:{port} path=/b\n"
    assert seen(site) == [(f"localhost:{port}", "/b")]


def test_h1_same_host_other_spelling_in_tunnel_is_served(
    start_proxy, site: Origin, proxy_ca_file: Path
) -> None:
    # Case and an explicit default-less port are the same authority (RFC 9110 §4.2.3): not misdirected.
    port = site.port
    site.route("/c", vhost)
    proxy = start_proxy("--connect-port", str(port))
    reply = h1_in_tunnel(
        proxy.port,
        f"localhost:{port}",
        proxy_ca_file,
        f"GET /c HTTP/1.1\r\nHost: LocalHost:{port}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.1 200"), reply
    assert seen(site) == [(f"LocalHost:{port}", "/c")]


@pytest.mark.parametrize("where", ["connect", "absolute-form", "host-field"])
def test_userinfo_in_authority_is_refused(start_proxy, origin: Origin, site: Origin, where: str) -> None:
    origin.route("/u", vhost)
    proxy = start_proxy("--connect-port", str(site.port))
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
    with sock:
        if where == "connect":
            authority = f"victim@localhost:{site.port}"
            request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
        elif where == "absolute-form":
            request = (
                f"GET http://user@127.0.0.1:{origin.port}/u HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
            )
            request += "Connection: close\r\n\r\n"
        else:
            request = (
                f"GET http://127.0.0.1:{origin.port}/u HTTP/1.1\r\nHost: user@127.0.0.1:{origin.port}\r\n"
            )
            request += "Connection: close\r\n\r\n"
        reply = raw_exchange(sock, request.encode()) if where != "connect" else _read_head(sock, request)
    assert reply.startswith(b"HTTP/1.1 400"), reply
    assert seen(origin) == [] and seen(site) == []


def _read_head(sock: socket.socket, request: str) -> bytes:
    sock.sendall(request.encode())
    reply = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in reply and (chunk := sock.recv(4096)):
            reply += chunk
    return reply


@pytest.mark.parametrize("field", [":authority", "host"])
def test_h2_authority_with_userinfo_is_refused(
    start_proxy, site: Origin, proxy_ca_file: Path, field: str
) -> None:
    port = site.port
    site.route("/v", vhost)
    proxy = start_proxy("--connect-port", str(port))
    headers = [(":method", "GET"), (":scheme", "https"), (":authority", f"localhost:{port}"), (":path", "/v")]
    if field == ":authority":
        headers[2] = (":authority", f"x@127.0.0.1:{port}")
    else:  # Host without :authority (RFC 9113 §8.3.1 allows it); beside one, the h2 stack checks they agree
        headers = [h for h in headers if h[0] != ":authority"] + [("host", f"x@127.0.0.1:{port}")]
    with h2_tunnel(proxy.port, f"localhost:{port}", proxy_ca_file) as tls:
        status, body = h2_get(tls, headers)
    if field == ":authority":
        # RFC 9113 §8.1.1: mitmproxy's HTTP/2 parser finds this :authority malformed and ends the connection
        # (GOAWAY, PROTOCOL_ERROR) before any addon runs; the guard's own check stands behind it.
        assert (status, body) == (None, b"GOAWAY")
    else:
        assert status == 400 and b"userinfo" in body, (status, body)
    assert seen(site) == []
    for host in ("localhost", "127.0.0.1"):
        assert (
            h2_fetch(proxy.url, proxy_ca_file, f"https://{host}:{port}/v").text
            == f"site={host}:{port} path=/v\n"
        )
    assert len(seen(site)) == 2


def test_fragment_is_never_forwarded_and_key_agrees(start_proxy, site: Origin, proxy_ca_file: Path) -> None:
    # RFC 9110 §4.2.4: the fragment is not part of the target, and RFC 9113 §8.3.1 / RFC 9112 §3.2 leave no
    # room for one in :path or a request-target: a client that sends one is refused (400), so nothing is
    # forwarded under a target the cache would key differently. A client without the fragment is served.
    port = site.port
    site.route("/f", vhost)
    proxy = start_proxy("--connect-port", str(port))
    with h2_tunnel(proxy.port, f"localhost:{port}", proxy_ca_file) as tls:
        status, body = h2_get(
            tls,
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", f"localhost:{port}"),
                (":path", "/f#frag"),
            ],
        )
    assert status == 400 and b"'#'" in body, (status, body)
    assert seen(site) == []
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        reply = raw_exchange(
            sock,
            f"GET http://localhost:{port}/f#frag HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode(),
        )
    assert reply.startswith(b"HTTP/1.1 400"), reply
    assert seen(site) == []
    first = h2_fetch(proxy.url, proxy_ca_file, f"https://localhost:{port}/f")
    again = h2_fetch(proxy.url, proxy_ca_file, f"https://localhost:{port}/f")
    assert first.text == again.text == f"site=localhost:{port} path=/f\n"
    assert "hit" in again.headers["cache-status"]
    assert seen(site) == [(f"localhost:{port}", "/f")]


def test_options_star_is_forwarded_and_never_stored(start_proxy, origin: Origin) -> None:
    origin.route("*", Reply(200, {"Cache-Control": "max-age=600", "Allow": "GET"}, b"star\n"))
    proxy = start_proxy()
    for _ in range(2):
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
        with sock:
            # absolute-form with an empty path is how a proxy is asked for OPTIONS * (RFC 9112 §3.2.4)
            reply = raw_exchange(
                sock,
                f"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\nConnection: close\r\n\r\n".encode(),
            )
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"star\n"), reply
    assert [(r.method, r.path) for r in origin.requests] == [("OPTIONS", "*")] * 2  # the second was no hit


@pytest.fixture
def evil_origin(origin_ca: trustme.CA) -> Iterator[Origin]:
    """A TLS origin whose certificate names only evil.test (not localhost, not 127.0.0.1)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("evil.test").configure_cert(ctx)
    o = Origin(tls=ctx)
    o.route("/t", Reply(200, MAX_AGE, b"evil body\n"))
    yield o
    o.close()


@pytest.mark.parametrize("http2", [True, False], ids=["h2", "http1"])
def test_client_sni_cannot_choose_the_verified_name(
    start_proxy, evil_origin: Origin, proxy_ca_file: Path, http2: bool
) -> None:
    # CONNECT localhost:PORT with SNI evil.test: the origin's certificate covers the SNI, not the host the
    # cache stores under. Verifying the SNI would store evil.test's answer as https://localhost:PORT/t.
    port = evil_origin.port
    proxy = start_proxy("--connect-port", str(port))
    request = [(":method", "GET"), (":scheme", "https"), (":authority", f"localhost:{port}"), (":path", "/t")]
    if http2:
        with h2_tunnel(proxy.port, f"localhost:{port}", proxy_ca_file, sni="evil.test") as tls:
            status, body = h2_get(tls, request)
    else:
        with _tls(_connect(proxy.port, f"localhost:{port}"), proxy_ca_file, "evil.test", "http/1.1") as tls:
            reply = raw_exchange(
                tls, f"GET /t HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode()
            )
        status = int(reply.split(b" ", 2)[1]) if reply else None
        body = reply.partition(b"\r\n\r\n")[2]
    assert status == 502 and body.startswith(b"fwdproxy: "), (status, body)
    assert b"evil body" not in body
    assert seen(evil_origin) == []  # the handshake failed before any request was sent
    # A victim asking for the same URL (with the right SNI) is not served a stored copy either.
    victim = h2_fetch(proxy.url, proxy_ca_file, f"https://localhost:{port}/t")
    assert victim.status_code == 502 and b"evil body" not in victim.content
    assert seen(evil_origin) == []


def _issuer(proxy_port: int, authority: str, sni: str) -> str:
    """The issuer of the certificate a client sees through ``CONNECT authority`` with this SNI."""
    from cryptography import x509

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(_connect(proxy_port, authority), server_hostname=sni) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


def test_sni_cannot_get_a_passthrough_host_decrypted(start_proxy, site: Origin) -> None:
    # --intercept '*.test' and --passthrough localhost: CONNECT localhost with SNI evil.test must stay blind.
    proxy = start_proxy(
        "--connect-port", str(site.port), "--passthrough", "localhost", "--intercept", "*.test"
    )
    assert "mitmproxy" not in _issuer(proxy.port, f"localhost:{site.port}", "evil.test")
    assert "mitmproxy" in _issuer(
        proxy.port, f"evil.test:{site.port}", "evil.test"
    )  # the glob still decrypts
