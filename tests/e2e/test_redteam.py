"""Attacks from outside on the request-path code of the origin pool (HTTPS and plain), partial entries and the
fast hit layer: each test checks what a victim client is served and what the origin received."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.conftest import StartProxy
from tests.e2e.test_origins import CountingOrigin
from tests.e2e.test_origins import counting as counting  # noqa: F401  (the fixture)
from tests.e2e.test_origins_tls import CountingTlsOrigin
from tests.e2e.test_origins_tls import tls_counting as tls_counting  # noqa: F401  (the fixture)
from tests.e2e.test_ranges_partial import Ranged, blob
from tests.support import Origin, Recorded, Reply, client

SMUGGLED = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 8\r\n\r\nSMUGGLED"


def _own_path(head: bytes, extra: bytes = b"") -> bytes:
    path = head.split(b" ", 2)[1]
    return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: %d\r\n\r\n%s%s" % (
        len(path),
        path,
        extra,
    )


def _smuggling(conn_no: int, req_no: int, head: bytes) -> bytes | None:
    """Two responses to one request in one write when the path asks for it; else the path as the body."""
    if b"/smuggle" in head.split(b"\r\n", 1)[0]:
        return _own_path(head, SMUGGLED)
    if head.startswith(b"HEAD"):
        # A body after a HEAD answer (RFC 9110 §9.3.2 forbids it): the bytes look like a response.
        return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 83\r\n\r\n" + SMUGGLED
    return _own_path(head)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_second_response_to_one_request_never_reaches_another_client(
    start_proxy: StartProxy,
    counting: Callable[..., CountingOrigin],
    tls_counting: Callable[..., CountingTlsOrigin],
    proxy_ca_file: Path,
    scheme: str,
) -> None:
    origin = counting(_smuggling) if scheme == "http" else tls_counting(_smuggling)
    url = origin.url if scheme == "http" else lambda p: origin.url(p, host="localhost")
    proxy = start_proxy("--connect-port", str(origin.port))
    got: list[bytes] = []
    for i in range(6):
        with client(proxy, verify=proxy_ca_file) as c:
            if i % 3 == 0:
                r = c.get(url(f"/smuggle{i}"))
            elif i % 3 == 1:
                r = c.head(url(f"/head{i}"))
                assert r.status_code == 200 and r.content == b""
                continue
            else:
                r = c.get(url(f"/victim{i}"))
                assert (r.status_code, r.content) == (200, f"/victim{i}".encode())
            got.append(r.content)
    # Every victim got its own path; nothing anyone got is the stray response, and it was not stored.
    assert all(b"SMUGGLED" not in b for b in got), got
    with client(proxy, verify=proxy_ca_file) as c:
        again = c.get(url("/victim2"))
    assert again.content == b"/victim2"
    assert [h.split(b" ", 2)[1] for h in origin.heads].count(b"/victim2") == 2


class _LateStray:
    """A keep-alive origin that answers ``/late`` correctly, then 0.2 s later writes a stray response on the
    same connection; every other path gets its own path as the body. Records (connection, path)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bytes]] = []
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        n = 0
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.socks.append(conn)
            threading.Thread(target=self._serve, args=(conn, n), daemon=True).start()
            n += 1

    def _serve(self, conn: socket.socket, n: int) -> None:
        buf = b""
        with contextlib.suppress(OSError), conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                self.seen.append((n, path))
                conn.sendall(_own_path(head))
                if path == b"/late":
                    time.sleep(0.2)
                    conn.sendall(SMUGGLED)

    def stop(self) -> None:
        self.srv.close()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def late_stray() -> Iterator[_LateStray]:
    o = _LateStray()
    yield o
    o.stop()


def test_a_stray_response_written_while_the_connection_idles_is_never_served(
    start_proxy: StartProxy, late_stray: _LateStray
) -> None:
    proxy = start_proxy()
    with client(proxy) as c:
        assert c.get(late_stray.url("/late")).content == b"/late"
    time.sleep(0.6)  # the stray bytes arrive while the connection idles in the pool
    for i in range(3):
        with client(proxy) as c:
            r = c.get(late_stray.url(f"/after{i}"))
        assert (r.status_code, r.content) == (200, f"/after{i}".encode())
    # The connection that carried the stray bytes carried nothing after them.
    late_conn = next(n for n, p in late_stray.seen if p == b"/late")
    assert [p for n, p in late_stray.seen if n == late_conn] == [b"/late"]


def test_tls_connection_verified_for_one_name_never_carries_another(
    start_proxy: StartProxy, tls_counting: Callable[..., CountingTlsOrigin], proxy_ca_file: Path
) -> None:
    """The origin's certificate covers ``localhost`` only: a pooled connection verified for it must not carry
    a request for ``https://127.0.0.1:PORT`` (same socket address), which must fail verification."""
    origin = tls_counting(lambda c, r, h: _own_path(h), names=("localhost",))
    proxy = start_proxy("--connect-port", str(origin.port))
    with client(proxy, verify=proxy_ca_file) as c:
        assert c.get(origin.url("/a", host="localhost")).content == b"/a"
    for _ in range(2):
        with client(proxy, verify=proxy_ca_file) as c:
            r = c.get(origin.url("/b", host="127.0.0.1"))
        assert r.status_code == 502
        assert b"/b" not in r.content
    with client(proxy, verify=proxy_ca_file) as c:
        assert c.get(origin.url("/c", host="localhost")).content == b"/c"
    assert [h.split(b" ", 2)[1] for h in origin.heads] == [b"/a", b"/c"]


# -- partial entries -------------------------------------------------------------------------------------------


def test_a_206_fetched_with_credentials_is_never_served_to_another_client(
    start_proxy: StartProxy, origin: Origin
) -> None:
    secret = blob(4096, 7)

    def guarded(req: Recorded) -> Reply:
        if req.headers.get("Authorization") != "Bearer owner":
            return Reply(401, {"Content-Length": "6"}, b"denied")
        return Ranged(secret)(req)

    url = origin.route("/private", guarded)
    proxy = start_proxy()
    with client(proxy) as owner:
        r = owner.get(url, headers={"Range": "bytes=0-999", "Authorization": "Bearer owner"})
        assert (r.status_code, r.content) == (206, secret[:1000])
    with client(proxy) as thief:
        inside = thief.get(url, headers={"Range": "bytes=100-199"})
        whole = thief.get(url)
    assert (inside.status_code, inside.content) == (401, b"denied")
    assert (whole.status_code, whole.content) == (401, b"denied")
    assert [r.headers.get("Authorization") for r in origin.requests] == ["Bearer owner", None, None]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_pieces_do_not_survive_an_unsafe_method(start_proxy: StartProxy, origin: Origin, method: str) -> None:
    v1, v2 = blob(4096, 8), blob(4096, 9)
    current = {"obj": Ranged(v1, '"v1"')}

    def versioned(req: Recorded) -> Reply:
        if req.method != "GET":
            current["obj"] = Ranged(v2, '"v2"')
            return Reply(200, {"Content-Length": "2"}, b"ok")
        return current["obj"](req)

    url = origin.route("/doc", versioned)
    proxy = start_proxy()
    with client(proxy) as c:
        assert c.get(url, headers={"Range": "bytes=0-999"}).content == v1[:1000]
        assert c.request(method, url, content=b"x").status_code == 200
        inside = c.get(url, headers={"Range": "bytes=100-199"})
        whole = c.get(url)
    assert (inside.status_code, inside.content) == (206, v2[100:200])
    assert (whole.status_code, whole.content) == (200, v2)


def test_a_whole_get_never_assembles_two_versions_with_the_same_length(
    start_proxy: StartProxy, origin: Origin
) -> None:
    """Version 2 has the length of version 1 and a new strong ETag: the rest fetched with If-Range "v1" must be
    answered whole by the origin, and the client gets version 2 only."""
    v1, v2 = blob(4096, 10), blob(4096, 11)
    current = {"obj": Ranged(v1, '"v1"')}
    url = origin.route("/swap", lambda req: current["obj"](req))
    proxy = start_proxy()
    with client(proxy) as c:
        assert c.get(url, headers={"Range": "bytes=0-1999"}).content == v1[:2000]
        current["obj"] = Ranged(v2, '"v2"')
        whole = c.get(url)
        again = c.get(url)
        tail = c.get(url, headers={"Range": "bytes=3000-3099"})
    assert (whole.status_code, whole.content) == (200, v2)
    assert again.content == v2
    assert tail.content == v2[3000:3100]


# -- connection-based authentication (NTLM, Negotiate) ---------------------------------------------------------


class _ConnectionAuth:
    """An origin whose authentication belongs to the TCP connection, as NTLM and Negotiate do (RFC 4559 §6.1:
    the handshake takes two round trips on one connection, which stays authenticated afterwards): ``/private``
    is Alice's secret on a connection she authenticated, a 401 challenge on any other."""

    def __init__(self, scheme: str, tls: ssl.SSLContext | None = None, proxy: bool = False) -> None:
        self.scheme, self.tls = scheme, tls
        self.asks, self.challenges, self.refusal = (
            ("proxy-authorization", "Proxy-Authenticate", "407 Proxy Authentication Required")
            if proxy
            else ("authorization", "WWW-Authenticate", "401 Unauthorized")
        )
        self.seen: list[tuple[int, str | None]] = []
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port}{path}"
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        n = 0
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.socks.append(conn)
            threading.Thread(target=self._serve, args=(conn, n), daemon=True).start()
            n += 1

    def _serve(self, conn: socket.socket, n: int) -> None:
        state = "new"
        buf = b""
        with contextlib.suppress(OSError), contextlib.closing(conn):
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                self.socks.append(conn)
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                auth = None
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == self.asks:
                        auth = value.strip()
                self.seen.append((n, auth))
                if auth == f"{self.scheme} alice-1":
                    state = "challenged"
                    status, extra, body = self.refusal, f"{self.scheme} challenge", b"again"
                elif (auth == f"{self.scheme} alice-3" and state == "challenged") or (
                    auth is None and state == "alice"
                ):
                    state = "alice"
                    status, extra, body = "200 OK", "", b"alice's secret"
                else:
                    status, extra, body = self.refusal, self.scheme, b"who are you"
                lines = [f"HTTP/1.1 {status}", "Cache-Control: private", f"Content-Length: {len(body)}"]
                if extra:
                    lines.append(f"{self.challenges}: {extra}")
                conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def stop(self) -> None:
        self.srv.close()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("scheme", ["NTLM", "Negotiate"])
def test_a_connection_another_client_authenticated_is_never_handed_on(
    start_proxy: StartProxy, origin_ca: trustme.CA, proxy_ca_file: Path, scheme: str, tls: bool
) -> None:
    ctx = None
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        origin_ca.issue_cert("localhost").configure_cert(ctx)
    origin = _ConnectionAuth(scheme, ctx)
    try:
        proxy = start_proxy("--connect-port", str(origin.port))
        url = origin.url("/private")
        with client(proxy, verify=proxy_ca_file) as alice:
            first = alice.get(url, headers={"Authorization": f"{scheme} alice-1"})
            assert (first.status_code, first.headers["WWW-Authenticate"]) == (401, f"{scheme} challenge")
            second = alice.get(url, headers={"Authorization": f"{scheme} alice-3"})
            # The handshake's two legs went on one origin connection: Alice is in.
            assert (second.status_code, second.content) == (200, b"alice's secret")
            # Bob arrives while Alice is still connected, then after she left.
            with client(proxy, verify=proxy_ca_file) as bob:
                during = bob.get(url)
        with client(proxy, verify=proxy_ca_file) as bob:
            after = bob.get(url)
        assert (during.status_code, during.content) == (401, b"who are you")
        assert (after.status_code, after.content) == (401, b"who are you")
        alice_conn = origin.seen[1][0]
        assert origin.seen[0][0] == alice_conn
        assert [auth for n, auth in origin.seen if n == alice_conn] == [
            f"{scheme} alice-1",
            f"{scheme} alice-3",
        ]
    finally:
        origin.stop()


def test_a_client_leaving_before_the_answer_never_hands_it_to_the_next_client(
    start_proxy: StartProxy, counting: Callable[..., CountingOrigin]
) -> None:
    """The origin answers ``/slow`` after its client left: that late answer must not be read as the next
    client's response on a shared connection."""

    def answer(conn_no: int, req_no: int, head: bytes) -> bytes | None:
        if b"/slow" in head.split(b"\r\n", 1)[0]:
            time.sleep(0.5)
        return _own_path(head)

    origin = counting(answer)
    proxy = start_proxy()
    with client(proxy) as c:
        assert c.get(origin.url("/warm")).content == b"/warm"  # one idle pooled connection
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(f"GET {origin.url('/slow')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.1)
    for i in range(4):
        with client(proxy) as c:
            r = c.get(origin.url(f"/next{i}"))
        assert (r.status_code, r.content) == (200, f"/next{i}".encode())
        time.sleep(0.15)


def test_http2_streams_on_pooled_connections_each_get_their_own_answer(
    start_proxy: StartProxy,
    tls_counting: Callable[..., CountingTlsOrigin],
    proxy_ca_file: Path,
    tmp_path: Path,
) -> None:
    """Twelve concurrent HTTP/2 streams of one client (some answered with a stray second response), then a
    second client: every stream's file is its own path."""
    origin = tls_counting(_smuggling, delay=0.02)
    proxy = start_proxy("--connect-port", str(origin.port))
    for run in range(2):
        paths = [f"/{'smuggle' if i % 4 == 0 else 'p'}{run}-{i}" for i in range(12)]
        argv = ["curl", "-sS", "--max-time", "30", "--http2", "--parallel", "--parallel-max", "12"]
        argv += ["--proxy", proxy.url, "--cacert", str(proxy_ca_file), "-w", "%{http_version}\n"]
        for p in paths:
            argv += ["-o", str(tmp_path / p.strip("/")), origin.url(p, host="localhost")]
        out = subprocess.run(argv, capture_output=True, timeout=60, check=True, text=True).stdout
        assert out.split() == ["2"] * 12
        for p in paths:
            assert (tmp_path / p.strip("/")).read_bytes() == p.encode()


def test_only_if_cached_never_reaches_the_origin_to_complete_pieces(
    start_proxy: StartProxy, origin: Origin
) -> None:
    body = blob(4096, 12)
    obj = Ranged(body)
    url = origin.route("/oic", obj)
    proxy = start_proxy()
    with client(proxy) as c:
        assert c.get(url, headers={"Range": "bytes=0-999"}).content == body[:1000]
        whole = c.get(url, headers={"Cache-Control": "only-if-cached"})
        outside = c.get(url, headers={"Cache-Control": "only-if-cached", "Range": "bytes=500-1999"})
    assert whole.status_code == 504 and whole.content != body
    assert outside.status_code == 504 and body[1000:2000] not in outside.content
    assert obj.asked == [("bytes=0-999", None)]  # §5.2.1.7: the origin was never asked for the rest


def test_purge_drops_the_pieces(start_proxy: StartProxy, origin: Origin) -> None:
    v1, v2 = blob(4096, 13), blob(4096, 14)
    current = {"obj": Ranged(v1, '"v1"')}
    url = origin.route("/purged", lambda req: current["obj"](req))
    proxy = start_proxy()
    with client(proxy) as c:
        assert c.get(url, headers={"Range": "bytes=0-999"}).content == v1[:1000]
        assert c.request("PURGE", url).status_code == 200
        current["obj"] = Ranged(v2, '"v1"')  # same validator: only the purge keeps v1's bytes out
        inside = c.get(url, headers={"Range": "bytes=100-199"})
    assert (inside.status_code, inside.content) == (206, v2[100:200])


# -- fast hit layer --------------------------------------------------------------------------------------------


def _exchange_from(source: str, port: int, raw: bytes) -> bytes:
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_memoised_hit_is_never_served_to_a_client_outside_allow(
    start_proxy: StartProxy, origin: Origin
) -> None:
    """The allowed client primes the fast layer's memo with a head; the very same bytes from a client outside
    --allow must still be refused."""
    url = origin.route(
        "/memo", Reply(200, {"Cache-Control": "max-age=600", "Content-Length": "7"}, b"members")
    )
    proxy = start_proxy("--allow", "127.0.0.2/32", "--listen-host", "127.0.0.1")
    raw = f"GET {url} HTTP/1.1\r\nHost: {url.split('/')[2]}\r\n\r\n".encode()
    for _ in range(3):
        got = _exchange_from("127.0.0.2", proxy.port, raw)
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"members")
    for _ in range(2):
        refused = _exchange_from("127.0.0.3", proxy.port, raw)
        assert refused.startswith(b"HTTP/1.1 403")
        assert b"members" not in refused
    assert origin.hits["/memo"] == 1


def test_a_stale_while_revalidate_hit_is_never_served_after_a_purge(
    start_proxy: StartProxy, origin: Origin
) -> None:
    """While the background refresh is in flight (slow origin), the stale copy answers; once the URL is
    purged it must answer nobody, on the fast layer or the full path."""
    served: list[bytes] = []

    def versioned(req: Recorded) -> Reply:
        n = len(served)
        body = b"version %d" % n
        served.append(body)
        if n:
            time.sleep(1.5)  # the refresh stays in flight
        headers = {"Cache-Control": "max-age=1, stale-while-revalidate=60", "Content-Length": str(len(body))}
        return Reply(200, headers, body)

    url = origin.route("/swr", versioned)
    proxy = start_proxy()
    host = url.split("/")[2]
    raw = f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    assert _exchange_from("127.0.0.1", proxy.port, raw).endswith(b"version 0")
    time.sleep(1.6)
    stale = [_exchange_from("127.0.0.1", proxy.port, raw) for _ in range(3)]
    assert all(s.endswith(b"version 0") for s in stale), stale
    purge = f"PURGE {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    assert _exchange_from("127.0.0.1", proxy.port, purge).startswith(b"HTTP/1.1 200")
    after = _exchange_from("127.0.0.1", proxy.port, raw)
    assert after.startswith(b"HTTP/1.1 200")
    assert not after.endswith(b"version 0"), after


def test_a_client_cannot_log_a_shared_upstream_connection_in(start_proxy: StartProxy) -> None:
    """An upstream proxy that authenticates the connection (NTLM): a client's own Proxy-Authorization is
    for fwdproxy (hop by hop) and never reaches the upstream, so no shared connection to it is ever logged in
    for the next client."""
    upstream = _ConnectionAuth("NTLM", proxy=True)
    try:
        proxy = start_proxy("--upstream", f"http://127.0.0.1:{upstream.port}")
        url = "http://intranet.test/private"
        with client(proxy) as alice:
            for leg in ("alice-1", "alice-3"):
                r = alice.get(url, headers={"Proxy-Authorization": f"NTLM {leg}"})
                assert (r.status_code, r.content) == (407, b"who are you")
        with client(proxy) as bob:
            after = bob.get(url)
        assert (after.status_code, after.content) == (407, b"who are you")
        assert [auth for _, auth in upstream.seen] == [None, None, None]
    finally:
        upstream.stop()


def test_a_connection_an_http2_client_authenticated_is_never_handed_on(
    start_proxy: StartProxy, origin_ca: trustme.CA, proxy_ca_file: Path
) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("localhost").configure_cert(ctx)
    origin = _ConnectionAuth("NTLM", ctx)
    try:
        proxy = start_proxy("--connect-port", str(origin.port))
        url = origin.url("/private")
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
        legs: list[str] = []
        for leg in ("alice-1", "alice-3"):
            legs += [
                *(["--next"] if legs else []),
                *argv[1:],
                "-H",
                f"Authorization: NTLM {leg}",
                "-w",
                " %{http_code}\n",
                url,
            ]
        out = subprocess.run(["curl", *legs], capture_output=True, timeout=60, text=True).stdout
        with client(proxy, verify=proxy_ca_file) as bob:
            after = bob.get(url)
        assert (after.status_code, after.content) == (401, b"who are you"), out
        assert b"alice's secret" not in after.content
        # mitmproxy never reuses an HTTP/1 origin connection for a second HTTP/2 stream, so the handshake's
        # legs go on two connections and fail, as without the pool; Bob's went on a third.
        conns = [n for n, _ in origin.seen]
        assert len(set(conns)) == 3, origin.seen
        print(f"HTTP/2 client's NTLM legs: {out!r} {origin.seen}")
    finally:
        origin.stop()
