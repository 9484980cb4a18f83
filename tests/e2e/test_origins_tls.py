"""Shared origin connections for HTTPS origins and through upstream proxies (issue 17 point 3).

The origins here count the TCP connections they accept and the requests each carries (TLS inside intercepted
tunnels: the proxy does the origin's TLS on the socket, addons/_mitm/origintls.py); the upstream proxy of
tests/support_upstream.py counts the connections that carried a request (the egress probes carry none).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trustme

from tests.conftest import StartProxy
from tests.e2e.test_origins import Answer, CountingOrigin, closes_reused, revalidating
from tests.e2e.test_origins import counting as counting  # noqa: F401  (the fixture)
from tests.support import Proxy, client
from tests.support_upstream import UpstreamProxy


class CountingTlsOrigin(CountingOrigin):
    """:class:`CountingOrigin` behind TLS (no ALPN: HTTP/1.1, as most origins a cache talks to)."""

    def __init__(self, ctx: ssl.SSLContext, answer: Answer = revalidating, delay: float = 0.0) -> None:
        self.ctx = ctx
        self.handshakes = 0
        super().__init__(answer, delay)

    def _serve(self, conn: socket.socket, number: int) -> None:
        try:
            conn = self.ctx.wrap_socket(conn, server_side=True)
        except OSError:
            conn.close()
            return
        with self.lock:
            self.handshakes += 1
        super()._serve(conn, number)

    def url(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}"


def _server_ctx(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


@pytest.fixture
def tls_counting(origin_ca: trustme.CA) -> Iterator[Callable[..., CountingTlsOrigin]]:
    made: list[CountingTlsOrigin] = []

    def make(
        answer: Answer = revalidating,
        delay: float = 0.0,
        names: tuple[str, ...] = ("localhost", "secure.test"),
    ) -> CountingTlsOrigin:
        made.append(CountingTlsOrigin(_server_ctx(origin_ca, *names), answer, delay))
        return made[-1]

    yield make
    for o in made:
        o.stop()


@pytest.fixture
def upstream() -> Iterator[UpstreamProxy]:
    up = UpstreamProxy("U")
    yield up
    up.close()


def _twenty_short_clients(proxy: Proxy, url: str, verify: Path | bool = True) -> list[bytes]:
    bodies = []
    for _ in range(20):  # 20 client connections, 10 requests each, then disconnect
        with client(proxy, verify=verify) as c:
            for _ in range(10):
                r = c.get(url)
                assert r.status_code == 200, r.text
                bodies.append(r.content)
    return bodies


def _fifty_cold_misses(proxy: Proxy, url: Callable[[int], str], verify: Path | bool = True) -> list[bytes]:
    def fetch(i: int) -> bytes:
        with client(proxy, verify=verify) as c:
            r = c.get(url(i))
            assert r.status_code == 200, r.text
            return r.content

    with ThreadPoolExecutor(50) as ex:
        return list(ex.map(fetch, range(50)))


# -- HTTPS origins inside intercepted tunnels -----------------------------------------------------------------


def test_https_revalidations_from_short_lived_clients_share_few_connections(
    start_proxy: StartProxy, tls_counting: Callable[..., CountingTlsOrigin], proxy_ca_file: Path
) -> None:
    origin = tls_counting()
    proxy = start_proxy("--connect-port", str(origin.port))
    bodies = _twenty_short_clients(proxy, origin.url("/page"), proxy_ca_file)
    assert bodies == [b"page /page"] * 200
    revalidations = sum(1 for h in origin.heads if b"if-none-match" in h.lower())
    assert len(origin.heads) == 200
    assert revalidations == 199
    # mitmproxy's own TLS: one origin connection per client connection (20). Pooled: one or two.
    print(
        f"HTTPS origin, 200 revalidations from 20 clients: {origin.accepted} connections {origin.requests_per_conn}"
    )
    assert origin.accepted <= 4, origin.requests_per_conn


def test_https_concurrent_cold_misses_open_at_most_the_limit(
    start_proxy: StartProxy, tls_counting: Callable[..., CountingTlsOrigin], proxy_ca_file: Path
) -> None:
    origin = tls_counting(delay=0.05)
    proxy = start_proxy("--connect-port", str(origin.port))
    bodies = _fifty_cold_misses(proxy, lambda i: origin.url(f"/cold/{i}"), proxy_ca_file)
    assert bodies == [f"page /cold/{i}".encode() for i in range(50)]
    assert len(origin.heads) == 50
    print(
        f"HTTPS origin, 50 concurrent cold misses: {origin.accepted} connections, {origin.most_open} at once"
    )
    assert origin.accepted <= 16, origin.requests_per_conn
    assert origin.most_open <= 16


def test_https_idempotent_request_on_a_connection_the_origin_closed_is_replayed(
    start_proxy: StartProxy, tls_counting: Callable[..., CountingTlsOrigin], proxy_ca_file: Path
) -> None:
    origin = tls_counting(closes_reused)
    proxy = start_proxy("--connect-port", str(origin.port), "-v")
    for i in range(3):
        with client(proxy, verify=proxy_ca_file) as c:
            r = c.get(origin.url(f"/r{i}"))
            assert (r.status_code, r.content) == (200, b"GET answered"), proxy.log()[-3000:]
    # Requests 2 and 3 each went out on the pooled TLS connection, found it closed, and were sent again.
    assert [h.split(b" ", 2)[1] for h in origin.heads] == [b"/r0", b"/r1", b"/r1", b"/r2", b"/r2"]
    assert proxy.log().count("request replayed") == 2


def test_https_post_is_not_replayed(
    start_proxy: StartProxy, tls_counting: Callable[..., CountingTlsOrigin], proxy_ca_file: Path
) -> None:
    origin = tls_counting(closes_reused)
    proxy = start_proxy("--connect-port", str(origin.port))
    with client(proxy, verify=proxy_ca_file) as c:
        assert c.post(origin.url("/p0"), content=b"one").content == b"POST answered"
    with client(proxy, verify=proxy_ca_file) as c:
        r = c.post(origin.url("/p1"), content=b"two")
    assert r.status_code == 502  # the origin closed the pooled connection: a POST is never sent twice
    assert r.text.startswith(f"fwdproxy: localhost:{origin.port} closed the connection")
    assert [h.split(b" ", 2)[1] for h in origin.heads] == [b"/p0", b"/p1"]


def _cacheable(conn_no: int, req_no: int, head: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 6\r\n\r\nsecret"


def test_certificate_for_another_name_is_502_and_nothing_is_stored(
    start_proxy: StartProxy, tls_counting: Callable[..., CountingTlsOrigin], proxy_ca_file: Path
) -> None:
    origin = tls_counting(_cacheable, names=("other.test",))
    proxy = start_proxy("--connect-port", str(origin.port))
    for _ in range(2):
        with client(proxy, verify=proxy_ca_file) as c:
            r = c.get(origin.url("/wrong"))
        assert r.status_code == 502
        assert r.text == (
            f"fwdproxy: localhost:{origin.port} presented a certificate that is not trusted (hostname mismatch)\n"
        )
        assert b"secret" not in r.content
    # Both attempts reached the origin (nothing was stored) and no request was ever sent over TLS to it.
    assert origin.accepted == 2
    assert origin.heads == []


def test_untrusted_origin_is_refused_unless_upstream_insecure(
    start_proxy: StartProxy, tls_counting: Callable[..., CountingTlsOrigin], proxy_ca_file: Path
) -> None:
    origin = tls_counting(_cacheable)
    strict = start_proxy("--connect-port", str(origin.port), upstream_ca=False)
    with client(strict, verify=proxy_ca_file) as c:
        r = c.get(origin.url("/s"))
    assert r.status_code == 502
    assert "presented a certificate that is not trusted (unable to get local issuer certificate)" in r.text
    assert origin.heads == []
    insecure = start_proxy("--connect-port", str(origin.port), "--upstream-insecure", upstream_ca=False)
    for i in range(3):
        with client(insecure, verify=proxy_ca_file) as c:
            r = c.get(origin.url(f"/i{i}"))
        assert (r.status_code, r.content) == (200, b"secret")
    assert len(origin.heads) == 3
    assert sum(1 for n in origin.requests_per_conn if n) == 1  # pooled with --upstream-insecure too


def test_passthrough_tunnel_is_not_touched(
    start_proxy: StartProxy, tls_counting: Callable[..., CountingTlsOrigin], origin_ca_file: Path
) -> None:
    origin = tls_counting(_cacheable)
    proxy = start_proxy("--connect-port", str(origin.port), "--passthrough", "localhost")
    for _ in range(2):
        # Trusting only the origin's CA proves the tunnel was relayed, not decrypted.
        with client(proxy, verify=origin_ca_file) as c:
            r = c.get(origin.url("/pt"))
        assert (r.status_code, r.content) == (200, b"secret")
    assert len(origin.heads) == 2  # not cached: each went to the origin, on its own client's connection
    assert origin.accepted == 2


def test_http2_client_in_a_tunnel_uses_the_pool(
    start_proxy: StartProxy, tls_counting: Callable[..., CountingTlsOrigin], proxy_ca_file: Path
) -> None:
    origin = tls_counting()
    proxy = start_proxy("--connect-port", str(origin.port))
    versions: list[str] = []
    for run in range(4):  # four curl processes, five cold misses each on one HTTP/2 connection
        urls = [origin.url(f"/h2/{run}/{i}") for i in range(5)]
        argv = [
            "curl",
            "-sS",
            "--max-time",
            "30",
            "--http2",
            "--proxy",
            proxy.url,
            "--cacert",
            str(proxy_ca_file),
        ]
        argv += ["-w", "%{http_version} %{http_code}\n", *(x for u in urls for x in ("-o", "/dev/null", u))]
        out = subprocess.run(argv, capture_output=True, timeout=60, check=True, text=True).stdout
        versions += out.split("\n")[:-1]
    assert versions == ["2 200"] * 20
    assert len(origin.heads) == 20
    # mitmproxy gives an HTTP/2 client talking to an HTTP/1.1 origin a new connection per request (20).
    print(f"HTTPS origin, HTTP/2 client, 20 misses in 4 runs: {origin.accepted} connections")
    assert origin.accepted <= 2, origin.requests_per_conn


# -- through an upstream proxy ---------------------------------------------------------------------------------


def test_plain_http_through_an_upstream_shares_connections_to_it(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin], upstream: UpstreamProxy
) -> None:
    origin = counting()
    proxy = start_proxy("--upstream", upstream.url)
    bodies = _twenty_short_clients(proxy, origin.url("/page", host="plain.test"))
    assert bodies == [b"page /page"] * 200
    assert upstream.count("plain.test", "GET") == 200
    print(f"plain HTTP via upstream, 200 revalidations from 20 clients: {len(upstream.carrying)} connections")
    assert len(upstream.carrying) <= 4


def test_plain_http_through_an_upstream_concurrent_misses_open_at_most_the_limit(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin], upstream: UpstreamProxy
) -> None:
    origin = counting(delay=0.05)
    proxy = start_proxy("--upstream", upstream.url)
    bodies = _fifty_cold_misses(proxy, lambda i: origin.url(f"/cold/{i}", host="plain.test"))
    assert bodies == [f"page /cold/{i}".encode() for i in range(50)]
    print(f"plain HTTP via upstream, 50 concurrent cold misses: {len(upstream.carrying)} connections")
    assert len(upstream.carrying) <= 16


def test_https_through_an_upstream_shares_tunnels(
    start_proxy: StartProxy,
    tls_counting: Callable[..., CountingTlsOrigin],
    upstream: UpstreamProxy,
    proxy_ca_file: Path,
) -> None:
    origin = tls_counting()
    proxy = start_proxy("--upstream", upstream.url, "--connect-port", str(origin.port))
    bodies = _twenty_short_clients(proxy, origin.url("/page", host="secure.test"), proxy_ca_file)
    assert bodies == [b"page /page"] * 200
    assert len(origin.heads) == 200
    connects = upstream.count("secure.test", "CONNECT")
    print(
        f"HTTPS via upstream, 200 revalidations from 20 clients: {connects} CONNECTs, {origin.accepted} at origin"
    )
    assert connects <= 4
    assert origin.accepted <= 4, origin.requests_per_conn


def test_https_through_an_upstream_concurrent_misses_open_at_most_the_limit(
    start_proxy: StartProxy,
    tls_counting: Callable[..., CountingTlsOrigin],
    upstream: UpstreamProxy,
    proxy_ca_file: Path,
) -> None:
    origin = tls_counting(delay=0.05)
    proxy = start_proxy("--upstream", upstream.url, "--connect-port", str(origin.port))
    bodies = _fifty_cold_misses(proxy, lambda i: origin.url(f"/cold/{i}", host="secure.test"), proxy_ca_file)
    assert bodies == [f"page /cold/{i}".encode() for i in range(50)]
    connects = upstream.count("secure.test", "CONNECT")
    print(
        f"HTTPS via upstream, 50 concurrent cold misses: {connects} CONNECTs, {origin.most_open} open at once"
    )
    assert connects <= 16
    assert origin.most_open <= 16


def test_https_through_an_upstream_that_refuses_connect_is_a_502(
    start_proxy: StartProxy, proxy_ca_file: Path
) -> None:
    up = UpstreamProxy("P", credentials=("user", "pw"))  # we give no credentials: 407 to the CONNECT
    try:
        proxy = start_proxy("--upstream", up.url, "--connect-port", "9")
        with client(proxy, verify=proxy_ca_file) as c:
            r = c.get("https://secure.test:9/x")
        assert r.status_code == 502
        assert "refused HTTP CONNECT request: 407" in r.text
        assert up.count("secure.test", "CONNECT") == 1
    finally:
        with contextlib.suppress(Exception):
            up.close()


def test_client_certificate_is_presented_to_the_origin(
    start_proxy: StartProxy, origin_ca: trustme.CA, proxy_ca_file: Path, tmp_path: Path
) -> None:
    """mitmproxy's ``client_certs`` option still reaches the origin's handshake (now done by origintls.py)."""
    ctx = _server_ctx(origin_ca, "localhost")
    ctx.verify_mode = ssl.CERT_REQUIRED
    origin_ca.configure_trust(ctx)
    origin = CountingTlsOrigin(ctx, _cacheable)
    try:
        pem = tmp_path / "client.pem"
        origin_ca.issue_cert("fwdproxy-client.test").private_key_and_cert_chain_pem.write_to_path(str(pem))
        without = start_proxy("--connect-port", str(origin.port))
        with client(without, verify=proxy_ca_file) as c:
            assert c.get(origin.url("/no-cert")).status_code == 502
        assert origin.heads == []  # the origin refused the handshake: no request reached it
        proxy = start_proxy("--connect-port", str(origin.port), "--set", f"client_certs={pem}")
        for i in range(2):
            with client(proxy, verify=proxy_ca_file) as c:
                r = c.get(origin.url(f"/cert{i}"))
            assert (r.status_code, r.content) == (200, b"secret")
        assert origin.handshakes == 1  # one handshake with the certificate, then the pooled connection
    finally:
        origin.stop()


def test_idle_tls_connections_close_after_the_idle_timeout(
    start_proxy: StartProxy, tls_counting: Callable[..., CountingTlsOrigin], proxy_ca_file: Path
) -> None:
    origin = tls_counting()
    proxy = start_proxy("--connect-port", str(origin.port), "--origin-idle-timeout", "1s")
    with client(proxy, verify=proxy_ca_file) as c:
        assert c.get(origin.url("/idle")).status_code == 200
    deadline = time.monotonic() + 10
    while origin.open_now and time.monotonic() < deadline:
        time.sleep(0.1)
    assert origin.open_now == 0  # the proxy closed its idle TLS connection
    with client(proxy, verify=proxy_ca_file) as c:
        assert c.get(origin.url("/idle")).status_code == 200
    assert origin.accepted == 2


def test_tls_failure_on_revalidation_serves_the_stored_response_stale(
    start_proxy: StartProxy,
    tls_counting: Callable[..., CountingTlsOrigin],
    origin_ca: trustme.CA,
    proxy_ca_file: Path,
) -> None:
    def once(conn_no: int, req_no: int, head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0\r\nConnection: close\r\nContent-Length: 6\r\n\r\nstored"

    origin = tls_counting(once)
    proxy = start_proxy("--connect-port", str(origin.port))
    with client(proxy, verify=proxy_ca_file) as c:
        assert c.get(origin.url("/stale")).content == b"stored"
    origin.ctx = _server_ctx(origin_ca, "other.test")  # from now on a certificate for another name
    with client(proxy, verify=proxy_ca_file) as c:
        r = c.get(origin.url("/stale"))
    assert (r.status_code, r.content) == (200, b"stored")
    assert "fwd=stale" in r.headers["Cache-Status"]
    assert origin.accepted == 2
    assert len(origin.heads) == 1  # the revalidation never got past the handshake


def test_https_through_an_upstream_replays_once_on_a_fresh_tunnel(
    start_proxy: StartProxy,
    tls_counting: Callable[..., CountingTlsOrigin],
    upstream: UpstreamProxy,
    proxy_ca_file: Path,
) -> None:
    origin = tls_counting(closes_reused)
    proxy = start_proxy("--upstream", upstream.url, "--connect-port", str(origin.port), "-v")
    for i in range(3):
        with client(proxy, verify=proxy_ca_file) as c:
            r = c.get(origin.url(f"/v{i}", host="secure.test"))
            assert (r.status_code, r.content) == (200, b"GET answered")
    assert [h.split(b" ", 2)[1] for h in origin.heads] == [b"/v0", b"/v1", b"/v1", b"/v2", b"/v2"]
    assert proxy.log().count("request replayed") == 2
    assert upstream.count("secure.test", "CONNECT") == 3  # the first tunnel, then one fresh one per replay


# -- one client, many requests, one tunnel (issue 17: uv's tunnel per request is uv's concurrency) -------------


@pytest.mark.parametrize("version", ["1.1", "2"])
def test_sequential_requests_of_one_client_share_one_tunnel(
    start_proxy: StartProxy,
    tls_counting: Callable[..., CountingTlsOrigin],
    proxy_ca_file: Path,
    tmp_path: Path,
    version: str,
) -> None:
    """Ten requests of one curl process (misses, then hits and revalidations of the same URLs) go through one
    CONNECT tunnel and one TLS handshake with the proxy, over HTTP/1.1 and over HTTP/2: the proxy never ends
    the tunnel, the h2 connection or the keep-alive after a request (no GOAWAY, no ``Connection: close``)."""
    origin = tls_counting()
    access = tmp_path / "access.log"
    proxy = start_proxy(
        "--connect-port", str(origin.port), "--access-log", str(access), "--log-format", "json"
    )
    paths = [f"/seq/{i % 5}" for i in range(10)]
    argv = ["curl", "-sS", "--max-time", "30", f"--http{version}", "--proxy", proxy.url]
    argv += ["--cacert", str(proxy_ca_file), "-w", "%{num_connects} %{http_version} %{http_code}\n"]
    for i, path in enumerate(paths):
        argv += ["-o", str(tmp_path / f"body{i}"), origin.url(path)]
    out = subprocess.run(argv, capture_output=True, timeout=60, check=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()]
    assert [(v, code) for _, v, code in rows] == [(version, "200")] * 10
    assert [(tmp_path / f"body{i}").read_bytes() for i in range(10)] == [f"page {p}".encode() for p in paths]
    # curl counts a new connection (to the proxy, with its CONNECT and TLS) on the transfer that made it.
    assert sum(int(n) for n, _, _ in rows) == 1, rows
    proxy.stop()  # flushes the access log: a tunnel's line is written when it closes
    lines = [json.loads(line) for line in access.read_text().splitlines()]
    assert [x["method"] for x in lines].count("CONNECT") == 1, lines
    assert [x["method"] for x in lines].count("GET") == 10
    assert len(origin.heads) == 10  # 5 misses, 5 revalidations (max-age=0): all reached the origin
    assert origin.accepted == 1, origin.requests_per_conn


# -- through an https:// upstream proxy (TLS to the proxy, and the origin's TLS inside it for HTTPS) -----------


@pytest.fixture
def tls_upstream(origin_ca: trustme.CA) -> Iterator[UpstreamProxy]:
    """An https:// upstream proxy whose certificate comes from the CA the proxy trusts (``--upstream-ca``)."""
    up = UpstreamProxy("T", tls=_server_ctx(origin_ca, "localhost", "127.0.0.1"))
    yield up
    up.close()


def test_plain_http_through_an_https_upstream_shares_connections_to_it(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin], tls_upstream: UpstreamProxy
) -> None:
    origin = counting()
    proxy = start_proxy("--upstream", tls_upstream.url)
    bodies = _twenty_short_clients(proxy, origin.url("/page", host="plain.test"))
    assert bodies == [b"page /page"] * 200
    assert tls_upstream.count("plain.test", "GET") == 200
    assert all(s.line.startswith("GET http://plain.test:") for s in tls_upstream.seen)  # absolute form
    print(
        f"plain HTTP via https upstream, 200 revalidations from 20 clients: {len(tls_upstream.carrying)}"
        f" connections, {tls_upstream.handshakes} TLS handshakes"
    )
    assert len(tls_upstream.carrying) <= 4
    assert tls_upstream.handshakes <= 4


def test_plain_http_through_an_https_upstream_concurrent_misses_open_at_most_the_limit(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin], tls_upstream: UpstreamProxy
) -> None:
    origin = counting(delay=0.05)
    proxy = start_proxy("--upstream", tls_upstream.url)
    bodies = _fifty_cold_misses(proxy, lambda i: origin.url(f"/cold/{i}", host="plain.test"))
    assert bodies == [f"page /cold/{i}".encode() for i in range(50)]
    assert tls_upstream.count("plain.test", "GET") == 50
    print(
        f"plain HTTP via https upstream, 50 concurrent cold misses: {tls_upstream.handshakes} TLS handshakes"
    )
    assert len(tls_upstream.carrying) <= 16
    assert tls_upstream.handshakes <= 16


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_https_through_an_https_upstream_shares_tunnels(
    start_proxy: StartProxy,
    tls_counting: Callable[..., CountingTlsOrigin],
    tls_upstream: UpstreamProxy,
    proxy_ca_file: Path,
    loop: str,
) -> None:
    """TLS in TLS (the origin's inside the proxy's) on both event loops."""
    origin = tls_counting()
    proxy = start_proxy(
        "--upstream", tls_upstream.url, "--connect-port", str(origin.port), "--event-loop", loop, "-v"
    )
    bodies = _twenty_short_clients(proxy, origin.url("/page", host="secure.test"), proxy_ca_file)
    assert bodies == [b"page /page"] * 200
    assert len(origin.heads) == 200
    connects = tls_upstream.count("secure.test", "CONNECT")
    print(
        f"HTTPS via https upstream, 200 revalidations from 20 clients: {connects} CONNECTs,"
        f" {tls_upstream.handshakes} TLS handshakes with it, {origin.handshakes} with the origin"
    )
    assert connects <= 4
    assert tls_upstream.handshakes <= 4
    assert origin.handshakes <= 4, origin.requests_per_conn
    assert f"event loop: {loop} (--event-loop {loop})" in proxy.log()


def test_https_through_an_https_upstream_concurrent_misses_open_at_most_the_limit(
    start_proxy: StartProxy,
    tls_counting: Callable[..., CountingTlsOrigin],
    tls_upstream: UpstreamProxy,
    proxy_ca_file: Path,
) -> None:
    origin = tls_counting(delay=0.05)
    proxy = start_proxy("--upstream", tls_upstream.url, "--connect-port", str(origin.port))
    bodies = _fifty_cold_misses(proxy, lambda i: origin.url(f"/cold/{i}", host="secure.test"), proxy_ca_file)
    assert bodies == [f"page /cold/{i}".encode() for i in range(50)]
    connects = tls_upstream.count("secure.test", "CONNECT")
    print(
        f"HTTPS via https upstream, 50 concurrent cold misses: {connects} CONNECTs,"
        f" {tls_upstream.handshakes} TLS handshakes, {origin.most_open} open at once"
    )
    assert connects <= 16
    assert tls_upstream.handshakes <= 16
    assert origin.most_open <= 16


def test_https_upstream_with_a_wrong_certificate_is_a_502_and_nothing_is_stored(
    start_proxy: StartProxy,
    counting: Callable[..., CountingOrigin],
    tls_counting: Callable[..., CountingTlsOrigin],
    origin_ca: trustme.CA,
    proxy_ca_file: Path,
) -> None:
    plain = counting(_cacheable)
    secure = tls_counting(_cacheable)
    up = UpstreamProxy("W", tls=_server_ctx(origin_ca, "other.test"))  # not valid for localhost
    try:
        proxy = start_proxy("--upstream", up.url, "--connect-port", str(secure.port))
        texts = []
        for _ in range(2):
            with client(proxy) as c:
                r = c.get(plain.url("/wrong", host="plain.test"))
            texts.append((r.status_code, r.text))
            with client(proxy, verify=proxy_ca_file) as c:
                r = c.get(secure.url("/wrong", host="secure.test"))
            texts.append((r.status_code, r.text))
        # The same 502 as when mitmproxy's layers did the proxy's TLS (and nothing pooled it).
        failed = "failed: Certificate verify failed: hostname mismatch\n"
        expected = [
            (502, f"fwdproxy: plain.test:{plain.port} {failed}"),
            (502, f"fwdproxy: secure.test:{secure.port} {failed}"),
        ]
        assert texts == expected * 2
        # Every attempt reached the upstream proxy (nothing was stored; the egress addon's probe of the
        # member may add one), none got a request through it.
        assert up.accepted >= 4
        assert up.handshakes == 0
        assert up.seen == []
        assert plain.heads == []
        assert secure.heads == []
    finally:
        up.close()


def test_origin_with_a_bad_certificate_behind_an_https_upstream_is_a_502_naming_it(
    start_proxy: StartProxy,
    tls_counting: Callable[..., CountingTlsOrigin],
    tls_upstream: UpstreamProxy,
    proxy_ca_file: Path,
) -> None:
    origin = tls_counting(_cacheable, names=("other.test",))
    proxy = start_proxy("--upstream", tls_upstream.url, "--connect-port", str(origin.port))
    for _ in range(2):
        with client(proxy, verify=proxy_ca_file) as c:
            r = c.get(origin.url("/bad", host="secure.test"))
        assert r.status_code == 502
        assert r.text == (
            f"fwdproxy: secure.test:{origin.port} presented a certificate that is not trusted (hostname mismatch)\n"
        )
    assert tls_upstream.count("secure.test", "CONNECT") == 2  # nothing stored: both went out
    assert tls_upstream.handshakes <= 2
    assert origin.heads == []


def test_https_upstream_with_credentials_gets_them_on_every_request_and_connect(
    start_proxy: StartProxy,
    counting: Callable[..., CountingOrigin],
    tls_counting: Callable[..., CountingTlsOrigin],
    origin_ca: trustme.CA,
    proxy_ca_file: Path,
) -> None:
    plain, secure = counting(), tls_counting()
    up = UpstreamProxy("A", credentials=("user", "pw"), tls=_server_ctx(origin_ca, "localhost"))
    try:
        proxy = start_proxy(
            "--upstream", f"https://user:pw@localhost:{up.port}", "--connect-port", str(secure.port)
        )
        for i in range(3):
            with client(proxy) as c:
                assert c.get(plain.url(f"/a{i}", host="plain.test")).content == f"page /a{i}".encode()
            with client(proxy, verify=proxy_ca_file) as c:
                assert c.get(secure.url(f"/s{i}", host="secure.test")).content == f"page /s{i}".encode()
        basic = "Basic dXNlcjpwdw=="
        assert [(s.method, s.proxy_authorization) for s in up.requests("plain.test")] == [("GET", basic)] * 3
        assert [(s.method, s.proxy_authorization) for s in up.requests("secure.test")] == [("CONNECT", basic)]
        assert len(secure.heads) == 3
        assert up.handshakes == 2  # one pooled TLS connection per origin (absolute form; the tunnel)
    finally:
        up.close()


def test_https_through_an_https_upstream_replays_once_on_a_fresh_tunnel(
    start_proxy: StartProxy,
    tls_counting: Callable[..., CountingTlsOrigin],
    tls_upstream: UpstreamProxy,
    proxy_ca_file: Path,
) -> None:
    origin = tls_counting(closes_reused)
    proxy = start_proxy("--upstream", tls_upstream.url, "--connect-port", str(origin.port), "-v")
    for i in range(3):
        with client(proxy, verify=proxy_ca_file) as c:
            r = c.get(origin.url(f"/v{i}", host="secure.test"))
            assert (r.status_code, r.content) == (200, b"GET answered")
    assert [h.split(b" ", 2)[1] for h in origin.heads] == [b"/v0", b"/v1", b"/v1", b"/v2", b"/v2"]
    assert proxy.log().count("request replayed") == 2
    assert (
        tls_upstream.count("secure.test", "CONNECT") == 3
    )  # the first tunnel, then one fresh one per replay
    assert tls_upstream.handshakes == 3


def test_http2_client_through_an_https_upstream_uses_the_pool(
    start_proxy: StartProxy,
    tls_counting: Callable[..., CountingTlsOrigin],
    tls_upstream: UpstreamProxy,
    proxy_ca_file: Path,
) -> None:
    origin = tls_counting()
    proxy = start_proxy("--upstream", tls_upstream.url, "--connect-port", str(origin.port))
    versions: list[str] = []
    for run in range(3):  # three curl processes, four cold misses each on one HTTP/2 connection
        argv = [
            "curl",
            "-sS",
            "--max-time",
            "30",
            "--http2",
            "--proxy",
            proxy.url,
            "--cacert",
            str(proxy_ca_file),
        ]
        argv += ["-w", "%{http_version} %{http_code}\n"]
        for i in range(4):
            argv += ["-o", "/dev/null", origin.url(f"/h2/{run}/{i}", host="secure.test")]
        out = subprocess.run(argv, capture_output=True, timeout=60, check=True, text=True).stdout
        versions += out.split("\n")[:-1]
    assert versions == ["2 200"] * 12
    assert len(origin.heads) == 12
    assert tls_upstream.count("secure.test", "CONNECT") <= 2
    assert tls_upstream.handshakes <= 2
    assert origin.handshakes <= 2, origin.requests_per_conn


def test_https_upstream_named_by_ip_address_is_checked_against_it(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin], origin_ca: trustme.CA, tmp_path: Path
) -> None:
    origin = counting(_cacheable)
    good = UpstreamProxy("G", tls=_server_ctx(origin_ca, "127.0.0.1"))
    bad = UpstreamProxy("B", tls=_server_ctx(origin_ca, "localhost"))  # no IP address in it
    try:
        proxy = start_proxy("--upstream", f"https://127.0.0.1:{good.port}")
        for i in range(3):
            with client(proxy) as c:
                assert c.get(origin.url(f"/ip{i}", host="plain.test")).content == b"secret"
        assert good.handshakes == 1
        other = start_proxy("--upstream", f"https://127.0.0.1:{bad.port}", cache_dir=tmp_path / "other")
        with client(other) as c:
            r = c.get(origin.url("/ip-bad", host="plain.test"))
        assert r.status_code == 502
        assert "Certificate verify failed: IP address mismatch" in r.text
        assert bad.seen == []
    finally:
        good.close()
        bad.close()
