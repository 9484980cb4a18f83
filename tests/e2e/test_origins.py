"""Origin connections shared by all clients, and cached DNS, through the real proxy (issue 17 points 3 and 4).

The origin here counts the TCP connections it accepts and the requests each one carries. Connections that
carry no request at all are the connect probes of addons/errors.py (opened and closed at once); the pool's
figures are about the connections that carry requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import StartProxy
from tests.support import Origin, Reply, client

Answer = Callable[[int, int, bytes], bytes | None]
"""(connection number, request number on that connection, request head) -> response bytes, or None to close."""


def revalidating(conn_no: int, req_no: int, head: bytes) -> bytes | None:
    """An ETag'd page that is always stale (max-age=0), so every request after the first revalidates: 304."""
    path = head.split(b" ", 2)[1]
    etag = b'"' + hashlib.sha1(path).hexdigest()[:12].encode() + b'"'
    if b"if-none-match: " + etag.lower() in head.lower():
        return b"HTTP/1.1 304 Not Modified\r\nETag: " + etag + b"\r\nCache-Control: max-age=0\r\n\r\n"
    body = b"page " + path
    return (
        b"HTTP/1.1 200 OK\r\nETag: " + etag + b"\r\nCache-Control: max-age=0\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


class CountingOrigin:
    """A keep-alive HTTP/1.1 origin on loopback that counts accepted connections and requests per connection."""

    def __init__(self, answer: Answer = revalidating, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.lock = threading.Lock()
        self.requests_per_conn: list[int] = []
        self.heads: list[bytes] = []
        self.open_now = 0
        self.most_open = 0
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(128)
        self.port = self.srv.getsockname()[1]
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def accepted(self) -> int:
        return len(self.requests_per_conn)

    @property
    def carrying(self) -> int:
        """Connections that carried at least one request."""
        return sum(1 for n in self.requests_per_conn if n)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            with self.lock:
                number = len(self.requests_per_conn)
                self.requests_per_conn.append(0)
                self.socks.append(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        counted: list[bool] = []
        try:
            self._exchange(conn, number, counted)
        finally:
            conn.close()
            if counted:
                with self.lock:
                    self.open_now -= 1

    def _exchange(self, conn: socket.socket, number: int, counted: list[bool]) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        size = int(line.split(b":")[1])
                        while len(buf) < size:
                            buf += conn.recv(65536)
                        buf = buf[size:]
                with self.lock:
                    if not counted:
                        counted.append(True)
                        self.open_now += 1
                        self.most_open = max(self.most_open, self.open_now)
                    req_no = self.requests_per_conn[number]
                    self.requests_per_conn[number] += 1
                    self.heads.append(head)
                if self.delay:
                    time.sleep(self.delay)
                reply = self.answer(number, req_no, head)
                if reply is None:
                    break
                conn.sendall(reply)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.srv.close()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def counting() -> Iterator[Callable[..., CountingOrigin]]:
    made: list[CountingOrigin] = []

    def make(answer: Answer = revalidating, delay: float = 0.0) -> CountingOrigin:
        made.append(CountingOrigin(answer, delay))
        return made[-1]

    yield make
    for o in made:
        o.stop()


def test_sequential_revalidations_from_short_lived_clients_share_few_origin_connections(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin]
) -> None:
    origin = counting()
    proxy = start_proxy()
    url = origin.url("/page")
    bodies = []
    for _ in range(20):  # 20 client connections, 10 requests each, then disconnect
        with client(proxy) as c:
            for _ in range(10):
                r = c.get(url)
                assert r.status_code == 200
                bodies.append(r.content)
    assert bodies == [b"page /page"] * 200
    revalidations = sum(1 for h in origin.heads if b"if-none-match" in h.lower())
    assert len(origin.heads) == 200 and revalidations == 199  # every request reached the origin
    # mitmproxy alone: one origin connection per client connection (20). Shared: one or two.
    assert origin.carrying <= 4, origin.requests_per_conn


def test_concurrent_cold_misses_open_at_most_the_limit(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin]
) -> None:
    origin = counting(delay=0.05)
    proxy = start_proxy()

    def fetch(i: int) -> bytes:
        with client(proxy) as c:
            r = c.get(origin.url(f"/cold/{i}"))
            assert r.status_code == 200
            return r.content

    with ThreadPoolExecutor(50) as ex:
        bodies = list(ex.map(fetch, range(50)))
    assert bodies == [f"page /cold/{i}".encode() for i in range(50)]
    assert len(origin.heads) == 50
    assert origin.carrying <= 16, origin.requests_per_conn
    assert origin.most_open <= 16


def test_limit_is_an_option(start_proxy: StartProxy, counting: Callable[..., CountingOrigin]) -> None:
    origin = counting(delay=0.05)
    proxy = start_proxy("--origin-max-connections", "3")

    def fetch(i: int) -> int:
        with client(proxy) as c:
            return c.get(origin.url(f"/lim/{i}")).status_code

    with ThreadPoolExecutor(12) as ex:
        assert list(ex.map(fetch, range(12))) == [200] * 12
    assert origin.most_open <= 3 and origin.carrying <= 3, origin.requests_per_conn


def test_idle_timeout_zero_turns_sharing_off(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin]
) -> None:
    origin = counting()
    proxy = start_proxy("--origin-idle-timeout", "0")
    for _ in range(3):
        with client(proxy) as c:
            assert c.get(origin.url("/x")).status_code == 200
            assert c.get(origin.url("/x")).status_code == 200
    assert origin.carrying == 3  # one per client connection, mitmproxy's own behaviour


def test_idle_connections_close_after_the_idle_timeout(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin]
) -> None:
    origin = counting()
    proxy = start_proxy("--origin-idle-timeout", "1s")
    with client(proxy) as c:
        assert c.get(origin.url("/idle")).status_code == 200
    deadline = time.monotonic() + 10
    while origin.open_now and time.monotonic() < deadline:
        time.sleep(0.1)
    assert origin.open_now == 0  # the proxy closed its idle connection
    with client(proxy) as c:
        assert c.get(origin.url("/idle")).status_code == 200
    assert origin.carrying == 2


def closes_reused(conn_no: int, req_no: int, head: bytes) -> bytes | None:
    """Answers the first request of each connection; a second one finds the connection closed (as when an
    origin's keep-alive timeout fires just as the proxy reuses the connection)."""
    if req_no > 0:
        return None
    body = head.split(b" ", 1)[0] + b" answered"
    return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_idempotent_request_on_a_connection_the_origin_closed_is_replayed(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin]
) -> None:
    origin = counting(closes_reused)
    proxy = start_proxy("-v")
    for i in range(3):
        with client(proxy) as c:
            r = c.get(origin.url(f"/r{i}"))
            assert (r.status_code, r.content) == (200, b"GET answered")
    # Requests 2 and 3 each went out on the pooled connection, found it closed, and were sent again on a new one.
    assert [h.split(b" ", 2)[1] for h in origin.heads] == [b"/r0", b"/r1", b"/r1", b"/r2", b"/r2"]
    assert proxy.log().count("request replayed") == 2


def test_non_idempotent_request_is_not_replayed(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin]
) -> None:
    origin = counting(closes_reused)
    proxy = start_proxy()
    with client(proxy) as c:
        assert c.post(origin.url("/p0"), content=b"one").content == b"POST answered"
    with client(proxy) as c:
        r = c.post(origin.url("/p1"), content=b"two")
        assert r.status_code == 502  # the origin closed the connection: a POST is never sent twice
    assert [h.split(b" ", 2)[1] for h in origin.heads] == [b"/p0", b"/p1"]


def test_pooled_connection_is_clean_for_the_next_client(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin]
) -> None:
    """Chunked, HEAD and 304 answers leave no bytes behind: each client gets exactly its own response."""

    def varied(conn_no: int, req_no: int, head: bytes) -> bytes | None:
        path = head.split(b" ", 2)[1]
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\nCache-Control: no-store\r\n\r\n"
        if path.startswith(b"/chunked"):
            return (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCache-Control: no-store\r\n\r\n"
                b"5\r\nchunk\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(path), path)
            )
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nCache-Control: no-store\r\n\r\n%s" % (
            len(path),
            path,
        )

    origin = counting(varied)
    proxy = start_proxy()
    for i in range(12):
        with client(proxy) as c:
            kind = i % 3
            if kind == 0:
                r = c.get(origin.url(f"/chunked{i}"))
                assert r.content == f"chunk/chunked{i}".encode()
            elif kind == 1:
                r = c.head(origin.url(f"/head{i}"))
                assert r.status_code == 200 and r.content == b""
            else:
                assert c.get(origin.url(f"/plain{i}")).content == f"/plain{i}".encode()
    assert origin.carrying == 1, origin.requests_per_conn


def test_burst_to_a_cold_host_name_makes_one_dns_lookup(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin]
) -> None:
    origin = counting(delay=0.02)
    proxy = start_proxy("-v")  # -v: the DNS cache logs each resolver call

    def fetch(i: int) -> int:
        with client(proxy) as c:
            return c.get(origin.url(f"/dns/{i}", host="localhost")).status_code

    with ThreadPoolExecutor(50) as ex:
        assert list(ex.map(fetch, range(50))) == [200] * 50
    assert len(origin.heads) == 50
    assert proxy.log().count("DNS lookup of localhost") == 1


def test_https_origin_still_works_with_cached_dns(
    start_proxy: StartProxy, tls_origin: Origin, proxy_ca_file: Path
) -> None:
    """TLS connections are not pooled, but resolve through the cache: SNI and the certificate check still
    use the host name, not the IP the socket went to."""
    tls_origin.route("/tls", Reply(200, {"Cache-Control": "no-store"}, b"over tls"))
    url = tls_origin.url("/tls", host="localhost")
    proxy = start_proxy("--connect-port", str(tls_origin.port))
    with client(proxy, verify=proxy_ca_file) as c:
        r = c.get(url)
    assert (r.status_code, r.content) == (200, b"over tls")


def test_connection_the_origin_closes_is_not_pooled(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin]
) -> None:
    """`Connection: close` (RFC 9112 §9.6) keeps a connection out of the pool, also when the body ends well
    after the head (the response hooks have run by then)."""

    def closing(conn_no: int, req_no: int, head: bytes) -> bytes | None:
        body = b"x" * 200_000
        head_out = (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nCache-Control: max-age=60\r\nContent-Length: %d\r\n\r\n"
        )
        return head_out % len(body) + body

    origin = counting(closing)
    proxy = start_proxy("-v")
    for i in range(3):
        with client(proxy) as c:
            r = c.get(origin.url(f"/close{i}"))
            assert (r.status_code, len(r.content)) == (200, 200_000)
    assert origin.carrying == 3, origin.requests_per_conn
    assert "(reused)" not in proxy.log() and "replayed" not in proxy.log()


def _read_response(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes, bytes]:
    """One Content-Length-framed response from ``sock``: (head, body, bytes left over)."""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, buf = buf.partition(b"\r\n\r\n")
    size = int(
        next(x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")).split(b":")[1]
    )
    while len(buf) < size:
        buf += sock.recv(65536)
    return head, buf[:size], buf[size:]


def test_pipelined_raw_client_gets_each_answer_in_order(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin]
) -> None:
    def answer(conn_no: int, req_no: int, head: bytes) -> bytes:
        body = head.split(b" ", 2)[1] + b" answered"
        return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )

    origin = counting(answer)
    proxy = start_proxy()
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(
            b"".join(f"GET {origin.url(f'/pipe{i}')} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(3))
        )
        buf = b""
        bodies = []
        for _ in range(3):
            _, body, buf = _read_response(s, buf)
            bodies.append(body)
    assert bodies == [b"/pipe0 answered", b"/pipe1 answered", b"/pipe2 answered"]
    assert origin.carrying == 1, origin.requests_per_conn


def test_client_leaving_mid_body_never_leaks_bytes_to_the_next_client(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin]
) -> None:
    """A connection whose response was cut off by its client is closed, not pooled: otherwise the rest of
    that body would be read as the next client's response."""
    big = b"L" * 4_000_000

    def answer(conn_no: int, req_no: int, head: bytes) -> bytes | None:
        body = big if b"/big" in head else b"small and exact"
        return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )

    origin = counting(answer)
    proxy = start_proxy()
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(f"GET {origin.url('/big')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    for _ in range(3):
        with client(proxy) as c:
            r = c.get(origin.url("/after"))
            assert (r.status_code, r.content) == (200, b"small and exact")
    heads = [h.split(b" ", 2)[1] for h in origin.heads]
    assert heads == [b"/big", b"/after", b"/after", b"/after"]
    assert origin.carrying == 2, origin.requests_per_conn  # the cut one, then one shared by the three


def test_http2_client_through_the_pool_and_dns_cache(
    start_proxy: StartProxy, tls_origin: Origin, proxy_ca_file: Path
) -> None:
    """An HTTP/2 client (to the proxy, inside CONNECT) reaching an HTTP/1 TLS origin by host name."""
    tls_origin.route("/h2", Reply(200, {"Cache-Control": "no-store"}, b"h2 to h1"))
    proxy = start_proxy("--connect-port", str(tls_origin.port), "-v")
    url = tls_origin.url("/h2", host="localhost")
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2",
            "-w",
            " %{http_version}\n",
            "-x",
            proxy.url,
            "--cacert",
            str(proxy_ca_file),
        ]
        + [url] * 5,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.splitlines() == ["h2 to h1 2"] * 5, out.stderr
    assert proxy.log().count("DNS lookup of localhost") == 1
