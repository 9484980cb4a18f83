"""Red team, round 2: attacks on the day's new request-path code, each checked by its effect.

- Origin connections pooled through an ``https://`` upstream proxy (addons/_mitm/pool.py, origintls.py): one
  client's bytes, a response it abandoned, or credentials must never reach another client or the wrong hop.
- The fast hit layer's memo of a connection's last head, its kept responses and access-log records
  (addons/fasthit.py): every repeat is checked, answered from the entry as stored now, and logged as itself.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
import trustme

from tests.conftest import StartProxy
from tests.e2e.fastwire import Wire, get, plain, stats, tunnel
from tests.e2e.test_poisoning import h2_tunnel
from tests.e2e.test_redteam import _ConnectionAuth
from tests.support import Origin, Proxy, Recorded, Reply, client, pattern, slow_chunks
from tests.support_upstream import UpstreamProxy

CACHED = {"Cache-Control": "max-age=600", "Content-Type": "text/plain"}


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def secured_upstream(origin_ca: trustme.CA) -> Iterator[UpstreamProxy]:
    """An https:// upstream proxy that demands its own Basic credentials."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    up = UpstreamProxy("T", credentials=("up", "secret"), tls=ctx)
    yield up
    up.close()


# -- pooled connections through an https:// upstream proxy --------------------------------------------------


def test_response_abandoned_by_a_client_through_an_https_upstream_never_reaches_the_next_one(
    start_proxy: StartProxy,
    tls_origin: Origin,
    secured_upstream: UpstreamProxy,
    proxy_ca_file: Path,
) -> None:
    """Client A (its own credentials for us) hangs up 256 KiB into a slow 4 MiB response carried TLS in TLS
    through the upstream proxy; clients B then ask for their own small pages. Each B gets exactly its page
    (no byte of A's body, no leftover of A's response head), the upstream proxy sees only our credentials for
    it on every CONNECT (never the clients'), and the origin sees no Proxy-Authorization at all."""
    big = pattern(4 * 1024 * 1024, seed=7)
    tls_origin.route(
        "/big",
        Reply(
            200,
            {"Cache-Control": "no-store", "Content-Type": "application/octet-stream"},
            chunks=slow_chunks(big, chunk=64 * 1024, delay=0.02),
            length=len(big),
        ),
    )
    tls_origin.route("/b", lambda r: Reply(200, {"Cache-Control": "no-store"}, f"for B {r.path}\n".encode()))
    proxy = start_proxy(
        "--upstream",
        f"https://up:secret@localhost:{secured_upstream.port}",
        "--connect-port",
        str(tls_origin.port),
        "--auth",
        "alice:wonder",
    )
    authority = f"localhost:{tls_origin.port}"
    alice = _basic("alice", "wonder")
    with tunnel(proxy, authority, proxy_ca_file, auth=alice) as a:
        a.send(get(f"https://{authority}/big", target="/big"))
        got = b""
        while len(got) < 256 * 1024:
            chunk = a.sock.recv(65536)
            assert chunk, "the proxy closed A's connection early"
            got += chunk
    assert big[:1000] in got  # A really was mid-body
    bodies = []
    for i in range(6):
        with tunnel(proxy, authority, proxy_ca_file, auth=alice) as b:
            answer = b.exchange(get(f"https://{authority}/b?{i}", target=f"/b?{i}"))
            b.sock.settimeout(0.3)
            try:
                trailing = b.sock.recv(65536)
            except (TimeoutError, OSError):
                trailing = b""
        bodies.append((answer.status, answer.body, trailing))
    assert bodies == [(200, f"for B /b?{i}\n".encode(), b"") for i in range(6)]
    connects = [s for s in secured_upstream.seen if s.method == "CONNECT"]
    assert connects
    assert {s.proxy_authorization for s in secured_upstream.seen} == {_basic("up", "secret")}
    assert [r.headers.get("Proxy-Authorization") for r in tls_origin.requests] == [None] * 7
    assert [r.path for r in tls_origin.requests].count("/big") == 1  # never replayed for someone else


def test_a_pooled_tunnel_through_an_https_upstream_is_never_reused_for_another_origin_name(
    start_proxy: StartProxy,
    tls_origin: Origin,
    secured_upstream: UpstreamProxy,
    proxy_ca_file: Path,
) -> None:
    """Two names of one origin (localhost and 127.0.0.1, the same port): each gets its own CONNECT and its own
    TLS name, and each request arrives with its own Host, however the requests interleave."""
    tls_origin.route("/who", lambda r: Reply(200, {"Cache-Control": "no-store"}, r.headers["Host"].encode()))
    proxy = start_proxy(
        "--upstream",
        f"https://up:secret@localhost:{secured_upstream.port}",
        "--connect-port",
        str(tls_origin.port),
    )
    got = []
    for i in range(8):
        authority = f"{'localhost' if i % 2 else '127.0.0.1'}:{tls_origin.port}"
        with tunnel(proxy, authority, proxy_ca_file) as w:
            got.append(w.exchange(get(f"https://{authority}/who", target="/who")).body)
    assert got == [f"{'localhost' if i % 2 else '127.0.0.1'}:{tls_origin.port}".encode() for i in range(8)]
    lines = sorted({s.line.split()[1] for s in secured_upstream.seen if s.method == "CONNECT"})
    assert lines == sorted({f"127.0.0.1:{tls_origin.port}", f"localhost:{tls_origin.port}"})
    assert [r.headers["Host"] for r in tls_origin.requests] == [g.decode() for g in got]


# -- the fast hit layer's memo ---------------------------------------------------------------------------------


def _tenant_origin(origin: Origin, path: str = "/t") -> str:
    """A page varying on X-Tenant whose body names the tenant the origin was asked for (and how often)."""

    def reply(r: Recorded) -> Reply:
        tenant = r.headers.get("X-Tenant", "-")
        return Reply(200, {**CACHED, "Vary": "X-Tenant"}, f"tenant={tenant} n={origin.hits[path]}\n".encode())

    return origin.route(path, reply)


def _drain(w: Wire, timeout: float = 1.5) -> bytes:
    w.sock.settimeout(timeout)
    data = b""
    try:
        while chunk := w.sock.recv(65536):
            data += chunk
    except (TimeoutError, OSError):
        pass
    return data


def _summary(raw: bytes) -> list[tuple[str, str, str]]:
    """(status line, Cache-Status without ttl, body) of each response in ``raw``."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = 0
        cache = ""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            if name.lower() == b"cache-status":
                cache = re.sub(r"ttl=-?\d+", "ttl=*", value.strip().decode())
        out.append((lines[0].decode(), cache, rest[:length].decode("latin-1")))
        raw = rest[length:]
    return out


def _ttl_free(cache_status: str | None) -> str:
    return re.sub(r"ttl=-?\d+", "ttl=*", cache_status or "")


VARIANTS = {
    "identical": "X-Tenant: a",
    "value case": "X-Tenant: A",
    "trailing space": "X-Tenant: a ",
    "name case": "x-tenant: a",
    "duplicate": "X-Tenant: a\r\nX-Tenant: b",
    "added directive": "X-Tenant: a\r\nCache-Control: no-cache",
    "added unrelated": "X-Tenant: a\r\nX-Other: 1",
    "other tenant": "X-Tenant: b",
    "no tenant": "X-Unrelated: a",
    "obs-fold": "X-Tenant: a\r\n b",
    "host field case": "X-Tenant: a",
    "target host case": "X-Tenant: a",
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_pipelined_request_one_byte_off_a_repeated_head_gets_what_the_full_path_gives(
    start_proxy: StartProxy, origin: Origin, tmp_path: Path, variant: str
) -> None:
    """A connection repeats its head (the memo is set), then pipelines a near copy differing in a field the
    cache must not ignore (or may): the fast proxy's bytes, as far as the answers go, and the origin's
    requests match a --no-fast-hits proxy's."""
    url = _tenant_origin(origin).replace("127.0.0.1", "localhost")  # a name, so that its case can differ
    fast = start_proxy(cache_dir=tmp_path / "f")
    full = start_proxy("--no-fast-hits", cache_dir=tmp_path / "n")
    base = get(url, "X-Tenant: a")
    host = url.split("/")[2]
    probe = get(url, VARIANTS[variant])
    if variant == "host field case":
        probe = get(url, "X-Tenant: a", host=host.upper())
    elif variant == "target host case":
        probe = get(url.replace("localhost", "LOCALHOST"), "X-Tenant: a", host=host)
    results = []
    for proxy in (fast, full):
        with plain(proxy) as w:
            w.exchange(base)  # stored
        before = origin.hits["/t"]
        with plain(proxy) as w:
            w.exchange(base)
            w.exchange(base)  # the same bytes alone twice: the connection's memo holds this head
            w.send(base + probe + base)
            raw = _drain(w)
        results.append((_summary(raw), origin.hits["/t"] - before))
    fast_result, full_result = results
    # The tenant the origin answered and the count differ between the runs only by n=: compare without it.
    strip = [[(s, c, re.sub(r" n=\d+", "", b)) for s, c, b in r[0]] for r in results]
    assert strip[0] == strip[1], results
    assert fast_result[1] == full_result[1]
    assert len(fast_result[0]) == len(full_result[0])
    assert fast_result[0][0][2].startswith("tenant=a ")


def test_a_repeated_head_after_the_entry_is_replaced_under_another_vary_gets_the_new_one(
    start_proxy: StartProxy, origin: Origin, tmp_path: Path
) -> None:
    """The memo holds a head and its response; another client makes the origin answer again (no-cache),
    now varying on something else with another body. The next identical bytes on the first connection get
    what a --no-fast-hits proxy gives for the same sequence (the entry as stored now)."""
    state = {"vary": "X-Tenant", "body": b"first\n"}

    def reply(r: Recorded) -> Reply:
        return Reply(200, {**CACHED, "Vary": state["vary"]}, state["body"])

    url = origin.route("/rv", reply)
    fast = start_proxy(cache_dir=tmp_path / "f")
    full = start_proxy("--no-fast-hits", cache_dir=tmp_path / "n")
    outcome = []
    for proxy in (fast, full):
        state.update(vary="X-Tenant", body=b"first\n")
        head = get(url, "X-Tenant: a")
        with plain(proxy) as w, plain(proxy) as other:
            w.exchange(head)
            first = [w.exchange(head).body, w.exchange(head).body]
            state.update(vary="X-Other", body=b"second\n")
            refreshed = other.exchange(get(url, "X-Tenant: a", "Cache-Control: no-cache"))
            after = [w.exchange(head).body, w.exchange(head).body]
        outcome.append((first, refreshed.body, after))
    assert outcome[0] == outcome[1]
    assert outcome[0][2] == [b"second\n", b"second\n"]


def _bind(proxy: Proxy, source: str) -> Wire:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(15)
    sock.bind((source, 0))
    sock.connect((proxy.host, proxy.port))
    return Wire(sock)


def _log_lines(text: str, fmt: str) -> list[dict[str, object]]:
    """Each access log line as time (epoch seconds), duration (seconds), client, status, bytes and url."""
    out: list[dict[str, object]] = []
    for line in text.splitlines():
        if fmt == "json":
            x = json.loads(line)
            when = (
                calendar.timegm(time.strptime(x["time"][:19], "%Y-%m-%dT%H:%M:%S"))
                + int(x["time"][20:23]) / 1000
            )
            out.append({**x, "time": when})
        else:
            stamp, elapsed, client_, code, size, _method, url, *_ = line.split()
            out.append(
                {
                    "time": float(stamp),
                    "duration": int(elapsed) / 1000,
                    "client": client_,
                    "status": int(code.split("/")[1]),
                    "bytes": int(size),
                    "url": url,
                }
            )
    return out


@pytest.mark.parametrize("fmt", ["json", "squid"])
def test_identical_bytes_from_two_clients_are_each_checked_and_logged_as_their_own(
    start_proxy: StartProxy, origin: Origin, tmp_path: Path, fmt: str
) -> None:
    """The kept head, response and log record are shared by every connection sending the same bytes: a
    client outside --allow sending them right after an admitted one is still refused, and each line of the
    access log names its own client, status and byte count, with a sane duration."""
    url = origin.route("/shared", Reply(200, CACHED, b"shared body\n"))
    log = tmp_path / "access.log"
    proxy = start_proxy(
        "--allow",
        "127.0.0.1/32",
        "--allow",
        "127.0.0.3/32",
        "--listen-host",
        "0.0.0.0",
        "--access-log",
        str(log),
        "--log-format",
        fmt,
    )
    head = get(url)
    with _bind(proxy, "127.0.0.1") as w:
        assert w.exchange(head).status == 200  # stored
    answers = []
    with _bind(proxy, "127.0.0.1") as a, _bind(proxy, "127.0.0.2") as b, _bind(proxy, "127.0.0.3") as c:
        for _ in range(3):
            answers.append(("127.0.0.1", a.exchange(head)))
            answers.append(("127.0.0.2", b.exchange(head)))
            answers.append(("127.0.0.3", c.exchange(head)))
            time.sleep(1.1)  # each round in its own second
    for source, answer in answers:
        if source == "127.0.0.2":
            assert (answer.status, b"shared body" in answer.body) == (403, False)
        else:
            assert (answer.status, answer.body) == (200, b"shared body\n")
    assert origin.hits["/shared"] == 1
    counted = stats(proxy)
    assert counted["fast_hits"] == 6  # the six admitted repeats, not the three refused
    proxy.stop()
    ours = [x for x in _log_lines(log.read_text(), fmt) if x["url"] == url][1:]  # after the miss
    assert [(x["client"], x["status"]) for x in ours] == [
        (s, 403 if s == "127.0.0.2" else 200) for s, _ in answers
    ]
    sizes = {x["bytes"] for x in ours if x["status"] == 200}
    assert len(sizes) == 1
    assert sizes.pop() > len(b"shared body\n")
    now = time.time()
    for x in ours:
        assert x["duration"] >= 0  # type: ignore[operator]
        assert x["duration"] < 5  # type: ignore[operator]
        assert abs(now - x["time"]) < 120  # type: ignore[operator]
    # Each line's time is its own request's: in order, and the last round after the first by the time the
    # exchanges between them took (never one stamp kept from the first line).
    times = [x["time"] for x in ours]
    assert times == sorted(times)  # type: ignore[type-var]
    assert times[-1] - times[0] >= 2.0  # type: ignore[operator]


# -- a client that leaves while its origin exchange is unfinished --------------------------------------------


def _victim_routes(origin: Origin) -> None:
    def slow(r: Recorded) -> Reply:
        time.sleep(1.5)
        return Reply(200, {"Cache-Control": "no-store"}, b"for A (slow)\n")

    def upload(r: Recorded) -> Reply:
        return Reply(200, {"Cache-Control": "no-store"}, f"for A (upload of {len(r.body)})\n".encode())

    origin.route("/slow", slow)
    origin.route("/up", upload)
    origin.route("/b", lambda r: Reply(200, {"Cache-Control": "no-store"}, f"for B {r.path}\n".encode()))


@pytest.mark.parametrize(
    "route", ["tls-direct", "tls-https-upstream", "plain-direct", "plain-https-upstream"]
)
@pytest.mark.parametrize("leave", ["before the response", "mid-upload"])
def test_a_client_leaving_mid_exchange_never_hands_its_connection_to_the_next_client(
    start_proxy: StartProxy,
    origin: Origin,
    tls_origin: Origin,
    secured_upstream: UpstreamProxy,
    proxy_ca_file: Path,
    route: str,
    leave: str,
) -> None:
    """Client A leaves while its exchange on a (pooled) origin connection is unfinished: before a slow origin
    answers, or 1000 bytes into a 100000-byte upload. Clients B asking meanwhile and afterwards each get their
    own page: never A's response, and the origin never reads B's request as part of A's body. HTTPS origins
    (in intercepted tunnels) and plain ones, directly and through an https:// upstream proxy."""
    tls = route.startswith("tls")
    target = tls_origin if tls else origin
    _victim_routes(target)
    args = ["--connect-port", str(tls_origin.port)]
    if route.endswith("https-upstream"):
        args += ["--upstream", f"https://up:secret@localhost:{secured_upstream.port}"]
    proxy = start_proxy(*args)
    authority = f"localhost:{target.port}"
    base = f"{'https' if tls else 'http'}://{authority}"

    def connect() -> Wire:
        return tunnel(proxy, authority, proxy_ca_file) if tls else plain(proxy)

    def request(path: str, *extra: str, method: str = "GET") -> bytes:
        return get(f"{base}{path}", *extra, method=method, target=path if tls else None)

    with connect() as a:
        if leave == "before the response":
            a.send(request("/slow"))
        else:
            a.send(request("/up", "Content-Length: 100000", method="POST") + b"x" * 1000)
        time.sleep(0.3)
    got = []
    for i in range(8):
        with connect() as b:
            answer = b.exchange(request(f"/b?{i}"))
            got.append((answer.status, answer.body))
        time.sleep(0.25)
    assert got == [(200, f"for B /b?{i}\n".encode()) for i in range(8)]
    seen = [(r.method, r.path) for r in target.requests]
    assert seen.count(("GET", "/slow")) <= 1
    assert [p for m, p in seen if p.startswith("/b")] == [f"/b?{i}" for i in range(8)]
    for r in target.requests:
        assert b"GET /b" not in r.body
    if route.endswith("https-upstream"):
        assert {s.proxy_authorization for s in secured_upstream.seen} == {_basic("up", "secret")}


# -- an origin that writes more than its response ---------------------------------------------------------------


class JunkOrigin:
    """A keep-alive HTTP/1.1 origin answering each request with its path and its connection's number; after
    the response to ``/first`` it writes a whole extra response (``POISON``), at once or ``delay`` later."""

    POISON = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nCache-Control: max-age=600\r\n\r\nPOISON"

    def __init__(self, delay: float, tls: ssl.SSLContext | None = None) -> None:
        self.delay, self.tls = delay, tls
        self.paths: list[tuple[int, str]] = []
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            number += 1
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                self.conns.append(conn)
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ", 2)[1].decode()
                self.paths.append((number, path))
                body = f"{path} conn={number}\n".encode()
                cache = "no-store" if path == "/first" else "max-age=600"
                response = (
                    f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nCache-Control: {cache}\r\n\r\n".encode()
                    + body
                )
                if path == "/first" and self.delay == 0:
                    conn.sendall(response + self.POISON)
                    continue
                conn.sendall(response)
                if path == "/first":
                    time.sleep(self.delay)
                    conn.sendall(self.POISON)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.srv.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("delay", [0.0, 0.15], ids=["at-once", "later"])
def test_bytes_an_origin_writes_after_its_response_never_answer_another_request(
    start_proxy: StartProxy, origin_ca: trustme.CA, proxy_ca_file: Path, tls: bool, delay: float
) -> None:
    """A second, unasked-for response after the first one's end (in the same write, or while the
    connection idles in the pool) is never taken as the answer to the next request on that connection, and
    never stored for its URL: the next clients get the page their request asked for."""
    ctx = None
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        origin_ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    junk = JunkOrigin(delay, ctx)
    try:
        proxy = start_proxy("--connect-port", str(junk.port))
        authority = f"localhost:{junk.port}"
        base = f"{'https' if tls else 'http'}://{authority}"

        def ask(path: str) -> bytes:
            with tunnel(proxy, authority, proxy_ca_file) if tls else plain(proxy) as w:
                answer = w.exchange(get(f"{base}{path}", target=path if tls else None))
                assert answer.status == 200
                return answer.body

        first = ask("/first")
        time.sleep(1.0)  # the delayed junk has long arrived (the attack is on the idle connection)
        victims = [ask("/victim"), ask("/victim"), ask("/other")]
    finally:
        junk.close()
    assert first.startswith(b"/first conn=")
    conns = dict((path, number) for number, path in junk.paths)
    assert conns["/victim"] != conns["/first"]  # the connection that wrote too much was not used again
    assert conns["/other"] == conns["/victim"]  # while a clean one was (the pool was in play)
    assert b"POISON" not in b"".join(victims)
    assert victims[0].startswith(b"/victim conn=")
    assert victims[1] == victims[0]  # the stored copy is the origin's answer
    assert victims[2].startswith(b"/other conn=")


def test_kept_fast_answers_in_every_worker_follow_a_purge_and_a_new_body_from_another(
    start_proxy: StartProxy, origin: Origin
) -> None:
    """With --workers 2, twelve kept-alive connections (spread over both workers) repeat the same bytes, so
    each worker keeps the response; one more connection purges the URL and stores a new body. The next
    repeat on every connection gets the new body at once (the entry as stored now), in both workers;
    and again when a reload (no-cache) replaces the entry in place."""
    state = {"body": b"first body\n"}
    url = origin.route("/w", lambda r: Reply(200, CACHED, state["body"]))
    proxy = start_proxy("--workers", "2")
    head = get(url)
    with plain(proxy) as w:
        assert w.exchange(head).body == b"first body\n"  # stored
    conns = [plain(proxy) for _ in range(12)]
    try:
        before = [[c.exchange(head).body for _ in range(3)] for c in conns]
        state["body"] = b"second body\n"
        with plain(proxy) as other:
            assert other.exchange(get(url, method="PURGE")).status == 200
            refetched = other.exchange(head)
        after = [c.exchange(head).body for c in conns]
        # Replaced in place (a reload stores the origin's new answer over the entry): the same again.
        state["body"] = b"third body\n"
        with plain(proxy) as other:
            assert other.exchange(get(url, "Cache-Control: no-cache")).body == b"third body\n"
        replaced = [c.exchange(head).body for c in conns]
    finally:
        for c in conns:
            c.close()
    assert before == [[b"first body\n"] * 3] * 12
    assert refetched.body == b"second body\n"
    assert after == [b"second body\n"] * 12
    assert replaced == [b"third body\n"] * 12
    assert origin.hits["/w"] == 3


GOOD = _basic("u", "p")
CREDENTIALS = {
    "good": f"Proxy-Authorization: {GOOD}",
    "good twice": f"Proxy-Authorization: {GOOD}\r\nProxy-Authorization: {GOOD}",
    "good then bad": f"Proxy-Authorization: {GOOD}\r\nProxy-Authorization: {_basic('u', 'x')}",
    "bad then good": f"Proxy-Authorization: {_basic('u', 'x')}\r\nProxy-Authorization: {GOOD}",
    "lower-case name": f"proxy-authorization: {GOOD}",
    "lower-case scheme": f"Proxy-Authorization: basic {GOOD.split()[1]}",
    "two spaces": f"Proxy-Authorization: Basic  {GOOD.split()[1]}",
    "trailing space": f"Proxy-Authorization: {GOOD} ",
    "padding dropped": f"Proxy-Authorization: Basic {GOOD.split()[1].rstrip('=')}",
    "other user": f"Proxy-Authorization: {_basic('v', 'p')}",
    "bearer": "Proxy-Authorization: Bearer dTpw",
    "empty": "Proxy-Authorization: ",
    "none": "X-No-Credentials: 1",
}


def test_odd_credentials_on_a_repeating_connection_get_what_the_full_path_gives(
    start_proxy: StartProxy, origin: Origin, tmp_path: Path
) -> None:
    """With --auth, a connection whose memo holds a good head sends each odd form of Proxy-Authorization
    (duplicates, case, spacing, other schemes), twice: the fast proxy answers each exactly as a
    --no-fast-hits proxy does (status and body), and a refused one never gets the stored body."""
    url = origin.route("/auth", Reply(200, CACHED, b"members only\n"))
    fast = start_proxy("--auth", "u:p", cache_dir=tmp_path / "f")
    full = start_proxy("--auth", "u:p", "--no-fast-hits", cache_dir=tmp_path / "n")
    good = get(url, CREDENTIALS["good"])
    results: list[dict[str, list[tuple[int, bytes]]]] = []
    for proxy in (fast, full):
        with plain(proxy) as w:
            assert w.exchange(good).body == b"members only\n"  # stored
        outcome: dict[str, list[tuple[int, bytes]]] = {}
        for name, field in CREDENTIALS.items():
            with plain(proxy) as w:
                w.exchange(good)
                w.exchange(good)  # the memo holds the good head
                probe = get(url, field)
                answers = []
                for _ in range(2):
                    a = w.exchange(probe)
                    answers.append((a.status, a.body if a.status == 200 else b""))
                    if a.get("connection") == "close":
                        break
                outcome[name] = answers
        results.append(outcome)
    assert results[0] == results[1]
    for name, answers in results[0].items():
        for status, body in answers:
            assert (status == 200) == (body == b"members only\n"), name
    assert results[0]["good"] == [(200, b"members only\n")] * 2
    assert all(s == 407 for s, _ in results[0]["other user"])
    assert origin.hits["/auth"] == 2


# -- an HTTP/2 client resetting its stream on a pooled HTTP/1.1 origin connection -----------------------------


def _h2_conn() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return conn


def _h2_read(
    tls: ssl.SSLSocket, conn: h2.connection.H2Connection, stream: int, *, until: int = 0
) -> tuple[int, bytes]:
    """(status, body) of ``stream``; with ``until`` stop once that many body bytes came (the stream goes on)."""
    status, body = 0, b""
    while True:
        data = tls.recv(65536)
        assert data, "the proxy closed the HTTP/2 connection"
        for event in conn.receive_data(data):
            if getattr(event, "stream_id", None) != stream:
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                continue
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                tls.sendall(conn.data_to_send())
                return status, body
            elif isinstance(event, h2.events.StreamReset):
                return -1, body
        tls.sendall(conn.data_to_send())
        if until and len(body) >= until:
            return status, body


@pytest.mark.parametrize("route", ["direct", "https-upstream"])
@pytest.mark.parametrize("reset", ["mid-response", "mid-upload"])
def test_an_http2_stream_reset_mid_exchange_never_leaks_into_another_request(
    start_proxy: StartProxy,
    tls_origin: Origin,
    secured_upstream: UpstreamProxy,
    proxy_ca_file: Path,
    route: str,
    reset: str,
) -> None:
    """An HTTP/2 client cancels its stream (RST_STREAM) 256 KiB into a slow 4 MiB response, or 1000 bytes
    into a 100000-byte upload, then asks for another page on a new stream of the same connection; other
    HTTP/1.1 clients ask meanwhile. Every answer is the page its own request asked for."""
    _victim_routes(tls_origin)
    big = pattern(4 * 1024 * 1024, seed=9)
    tls_origin.route(
        "/big",
        Reply(
            200,
            {"Cache-Control": "no-store"},
            chunks=slow_chunks(big, chunk=64 * 1024, delay=0.02),
            length=len(big),
        ),
    )
    args = ["--connect-port", str(tls_origin.port)]
    if route == "https-upstream":
        args += ["--upstream", f"https://up:secret@localhost:{secured_upstream.port}"]
    proxy = start_proxy(*args)
    authority = f"localhost:{tls_origin.port}"
    base = f"https://{authority}"

    def request(
        path: str, method: str = "GET", extra: tuple[tuple[str, str], ...] = ()
    ) -> list[tuple[str, str]]:
        return [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path), *extra]

    with h2_tunnel(proxy.port, authority, proxy_ca_file) as tls:
        conn = _h2_conn()
        if reset == "mid-response":
            conn.send_headers(1, request("/big"), end_stream=True)
            tls.sendall(conn.data_to_send())
            status, partial = _h2_read(tls, conn, 1, until=256 * 1024)
            assert (status, partial[:1000]) == (200, big[:1000])
        else:
            conn.send_headers(1, request("/up", "POST", (("content-length", "100000"),)))
            conn.send_data(1, b"x" * 1000)
            tls.sendall(conn.data_to_send())
            time.sleep(0.3)
        conn.reset_stream(1)
        tls.sendall(conn.data_to_send())
        got = []
        for i, stream in enumerate((3, 5, 7)):
            others = []
            with tunnel(proxy, authority, proxy_ca_file) as b:
                others.append(b.exchange(get(f"{base}/b?h1-{i}", target=f"/b?h1-{i}")).body)
            conn.send_headers(stream, request(f"/b?h2-{i}"), end_stream=True)
            tls.sendall(conn.data_to_send())
            got.append((_h2_read(tls, conn, stream), others))
            time.sleep(0.2)
    assert got == [((200, f"for B /b?h2-{i}\n".encode()), [f"for B /b?h1-{i}\n".encode()]) for i in range(3)]
    for r in tls_origin.requests:
        assert b"GET /b" not in r.body
    paths = [r.path for r in tls_origin.requests if r.path.startswith("/b?")]
    assert sorted(paths) == sorted(f"/b?h{v}-{i}" for v in (1, 2) for i in range(3))


# -- responses without a body whose fields announce one ------------------------------------------------------------


class ScriptedOrigin(JunkOrigin):
    """A keep-alive origin whose answer to ``/a`` is ``first`` (whatever bytes), every other path's its path
    and connection number."""

    def __init__(self, first: bytes) -> None:
        self.first = first
        super().__init__(0.0)

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ", 2)[1].decode()
                self.paths.append((number, path))
                if path == "/a":
                    conn.sendall(self.first)
                    continue
                body = f"{path} conn={number}\n".encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body
                )


BODILESS = {
    "HEAD with a length": (
        "HEAD",
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nCache-Control: no-store\r\n\r\n",
    ),
    "304 with a length": ("GET", b'HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: "x"\r\n\r\n'),
    "204 with a length": ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 50\r\n\r\n"),
    "interim then final": (
        "GET",
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nCache-Control: no-store\r\n\r\nabc",
    ),
}


@pytest.mark.parametrize("case", list(BODILESS))
def test_a_bodiless_response_announcing_a_length_does_not_swallow_the_next_response(
    start_proxy: StartProxy, case: str
) -> None:
    """Client A's request gets an answer that has no body by definition (HEAD, 304, 204) but a
    Content-Length, or an interim response first. The pooled connection then carries client B's request:
    B gets its own page, never 50 bytes of its response taken as A's body nor a hang."""
    method, first = BODILESS[case]
    origin = ScriptedOrigin(first)
    try:
        proxy = start_proxy()
        base = f"http://127.0.0.1:{origin.port}"
        with plain(proxy) as a:
            extra = ('If-None-Match: "x"',) if "304" in case else ()
            answer = a.exchange(get(f"{base}/a", *extra, method=method))
            if answer.status == 103:
                answer = a.read()  # the interim response is passed on, then the final one
        with plain(proxy) as b:
            victims = [b.exchange(get(f"{base}/v{i}")).body for i in range(3)]
    finally:
        origin.close()
    final = first.rsplit(b"HTTP/1.1 ", 1)[1]
    assert answer.status == int(final.split(b" ")[0])
    assert answer.body == (b"abc" if "interim" in case else b"")
    assert victims == [f"/v{i} conn={origin.paths[i + 1][0]}\n".encode() for i in range(3)]
    assert [p for _, p in origin.paths] == ["/a", "/v0", "/v1", "/v2"]


def test_upstream_credentials_reach_only_the_upstream_proxy(
    start_proxy: StartProxy,
    origin: Origin,
    tls_origin: Origin,
    secured_upstream: UpstreamProxy,
    proxy_ca_file: Path,
    tmp_path: Path,
) -> None:
    """Our credentials for the upstream proxy (in --upstream's URL) go on its CONNECTs and absolute-form
    requests and nowhere else: not to clients (answers, the status page and its JSON and metrics), not to
    the origins, not into the access log or the proxy's own log at -v."""
    origin.route("/p", Reply(200, CACHED, b"plain page\n"))
    tls_origin.route("/s", Reply(200, CACHED, b"secure page\n"))
    log = tmp_path / "access.log"
    proxy = start_proxy(
        "--upstream",
        f"https://up:secret@localhost:{secured_upstream.port}",
        "--connect-port",
        str(tls_origin.port),
        "--access-log",
        str(log),
        "--log-format",
        "json",
        "-v",
    )
    seen_by_clients = b""
    plain_url = origin.url("/p", host="plain.test")
    authority = f"localhost:{tls_origin.port}"
    for _ in range(2):
        with plain(proxy) as w:
            a = w.exchange(get(plain_url))
            assert a.body == b"plain page\n"
            seen_by_clients += repr(a.fields).encode() + a.body
        with tunnel(proxy, authority, proxy_ca_file) as w:
            a = w.exchange(get(f"https://{authority}/s", target="/s"))
            assert a.body == b"secure page\n"
            seen_by_clients += repr(a.fields).encode() + a.body
    for page in ("/", "/stats.json", "/metrics"):
        with plain(proxy) as w:
            a = w.exchange(get(f"http://fwdproxy.local{page}"))
            assert a.status == 200, page
            seen_by_clients += a.body
    assert f"localhost:{secured_upstream.port}".encode() in seen_by_clients  # the pages do name the member
    secret = _basic("up", "secret")
    assert {s.proxy_authorization for s in secured_upstream.seen} == {secret}
    for r in [*origin.requests, *tls_origin.requests]:
        assert "secret" not in repr(r.header_list)
        assert secret.split()[1] not in repr(r.header_list)
    proxy.stop()
    for name, text in (
        ("clients", seen_by_clients.decode("latin-1")),
        ("access log", log.read_text()),
        ("proxy log", proxy.log()),
    ):
        assert "secret" not in text, name
        assert secret.split()[1] not in text, name


ANONYMIZED = {
    "other agent": "User-Agent: curl/8",
    "agent twice": "User-Agent: A/1\r\nUser-Agent: curl/8",
    "forwarded for": "User-Agent: A/1\r\nX-Forwarded-For: 10.9.9.9",
    "forwarded": "User-Agent: A/1\r\nForwarded: for=10.9.9.9",
    "via": "User-Agent: A/1\r\nVia: 1.1 other",
    "no agent": "X-Nothing: 1",
}


@pytest.mark.parametrize("level", ["off", "standard", "strict"])
def test_anonymized_variants_on_a_repeating_connection_get_what_the_full_path_gives(
    start_proxy: StartProxy, origin: Origin, tmp_path: Path, level: str
) -> None:
    """An origin varying on User-Agent, X-Forwarded-For, Forwarded and Via (the fields --anonymize rewrites
    or drops), its body naming what it was sent: a connection repeating one head, then pipelining near
    copies differing in those fields, gets from the fast proxy what a --no-fast-hits proxy gives, under
    each --anonymize level; and the origin is asked as often."""

    def reply(r: Recorded) -> Reply:
        named = ",".join(
            f"{k}={r.headers.get(k, '-')}" for k in ("User-Agent", "X-Forwarded-For", "Forwarded", "Via")
        )
        return Reply(200, {**CACHED, "Vary": "User-Agent, X-Forwarded-For, Forwarded, Via"}, named.encode())

    url = origin.route("/anon", reply)
    fast = start_proxy("--anonymize", level, cache_dir=tmp_path / "f")
    full = start_proxy("--anonymize", level, "--no-fast-hits", cache_dir=tmp_path / "n")
    base = get(url, "User-Agent: A/1")
    results = []
    for proxy in (fast, full):
        answers = []
        with plain(proxy) as w:
            w.exchange(base)  # stored
        before = origin.hits["/anon"]
        for probe in ANONYMIZED.values():
            with plain(proxy) as w:
                w.exchange(base)
                w.exchange(base)
                w.send(base + get(url, probe) + base)
                got = [w.read() for _ in range(3)]
                answers.append([(a.status, _ttl_free(a.get("cache-status")), a.body) for a in got])
        results.append((answers, origin.hits["/anon"] - before))
    assert results[0] == results[1]


@pytest.mark.parametrize("scheme", ["NTLM", "Negotiate"])
def test_a_connection_a_client_authenticated_through_an_https_upstream_is_never_handed_on(
    start_proxy: StartProxy,
    origin_ca: trustme.CA,
    secured_upstream: UpstreamProxy,
    proxy_ca_file: Path,
    scheme: str,
) -> None:
    """Connection-based origin authentication (NTLM, Negotiate) on an HTTPS origin connection carried TLS in
    TLS through an https:// upstream proxy (the tunnel is one TCP connection to the origin): Alice's logged-in
    connection never goes to the pool, so Bob, during and after her visit, is challenged instead of getting
    her secret. (Plain http through the test upstream cannot be tried: it opens an origin connection per
    request, so no handshake survives it.)"""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("localhost").configure_cert(ctx)
    origin = _ConnectionAuth(scheme, ctx)
    try:
        proxy = start_proxy(
            "--connect-port",
            str(origin.port),
            "--upstream",
            f"https://up:secret@localhost:{secured_upstream.port}",
        )
        url = origin.url("/private")
        with client(proxy, verify=proxy_ca_file) as alice:
            first = alice.get(url, headers={"Authorization": f"{scheme} alice-1"})
            assert (first.status_code, first.headers["WWW-Authenticate"]) == (401, f"{scheme} challenge")
            second = alice.get(url, headers={"Authorization": f"{scheme} alice-3"})
            assert (second.status_code, second.content) == (200, b"alice's secret")
            with client(proxy, verify=proxy_ca_file) as bob:
                during = bob.get(url)
        with client(proxy, verify=proxy_ca_file) as bob:
            after = [bob.get(url) for _ in range(3)]
        assert (during.status_code, during.content) == (401, b"who are you")
        assert [(r.status_code, r.content) for r in after] == [(401, b"who are you")] * 3
        alice_conn = origin.seen[1][0]
        assert origin.seen[0][0] == alice_conn
        assert [auth for n, auth in origin.seen if n == alice_conn] == [
            f"{scheme} alice-1",
            f"{scheme} alice-3",
        ]
        assert {s.proxy_authorization for s in secured_upstream.seen} == {_basic("up", "secret")}
    finally:
        origin.stop()


def test_a_tunnel_verified_for_one_name_through_an_https_upstream_never_carries_another(
    start_proxy: StartProxy, origin_ca: trustme.CA, secured_upstream: UpstreamProxy, proxy_ca_file: Path
) -> None:
    """TLS in TLS: the origin's certificate covers ``localhost`` only. A pooled tunnel verified for it (the
    same upstream proxy, the same origin socket address) never carries a request for ``127.0.0.1``, which
    fails verification on its own tunnel: a 502 without the origin's page, and the origin never asked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("localhost").configure_cert(ctx)
    origin = Origin(tls=ctx)
    origin.route("/a", Reply(200, {"Cache-Control": "no-store"}, b"page a\n"))
    origin.route("/b", Reply(200, {"Cache-Control": "no-store"}, b"page b\n"))
    try:
        proxy = start_proxy(
            "--connect-port",
            str(origin.port),
            "--upstream",
            f"https://up:secret@localhost:{secured_upstream.port}",
        )
        with client(proxy, verify=proxy_ca_file) as c:
            assert c.get(f"https://localhost:{origin.port}/a").content == b"page a\n"
            wrong = [c.get(f"https://127.0.0.1:{origin.port}/b") for _ in range(2)]
            again = c.get(f"https://localhost:{origin.port}/a")
    finally:
        origin.close()
    assert [(r.status_code, b"page b" in r.content) for r in wrong] == [(502, False)] * 2
    assert again.content == b"page a\n"
    assert [r.path for r in origin.requests] == ["/a", "/a"]
    assert secured_upstream.count("127.0.0.1", "CONNECT") >= 1  # the wrong name got its own tunnel


def test_a_repeated_head_after_a_304_freshened_the_entry_shows_the_new_fields(
    start_proxy: StartProxy, origin: Origin, tmp_path: Path
) -> None:
    """A 304 from the origin (another client's max-age=0 revalidation) updates the stored fields in place,
    the body unchanged: the next identical bytes on a connection whose memo holds the old answer get the
    updated fields, exactly as a --no-fast-hits proxy answers the same sequence."""
    version = {"n": 1}

    def reply(r: Recorded) -> Reply:
        fields = {**CACHED, "ETag": '"e1"', "X-Version": str(version["n"])}
        if r.headers.get("If-None-Match") == '"e1"':
            return Reply(304, fields)
        return Reply(200, fields, b"same body\n")

    url = origin.route("/fresh", reply)
    fast = start_proxy(cache_dir=tmp_path / "f")
    full = start_proxy("--no-fast-hits", cache_dir=tmp_path / "n")
    outcome = []
    for proxy in (fast, full):
        version["n"] = 1
        head = get(url)
        with plain(proxy) as w, plain(proxy) as other:
            w.exchange(head)
            before = [w.exchange(head).get("x-version") for _ in range(2)]
            version["n"] = 2
            revalidated = other.exchange(get(url, "Cache-Control: max-age=0"))
            after = [w.exchange(head) for _ in range(2)]
        outcome.append((before, revalidated.get("x-version"), [(a.get("x-version"), a.body) for a in after]))
    assert outcome[0] == outcome[1]
    assert outcome[0] == (["1", "1"], "2", [("2", b"same body\n")] * 2)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_disk_hit_repeated_after_a_same_length_replacement_is_never_a_mix(
    start_proxy: StartProxy, origin: Origin, workers: str
) -> None:
    """Without a memory tier, the layer keeps a disk hit's head and reads the body file again per repeat.
    Another connection (in any worker) replaces the entry with a body of the same length and other fields:
    every repeat after that is the new response whole (its fields with its body), never the kept head with
    the new body nor the old body."""
    size = 40 * 1024  # a body file, read whole (under --memory-object-max)
    versions = {1: pattern(size, seed=1), 2: pattern(size, seed=2)}
    current = {"v": 1}

    def reply(r: Recorded) -> Reply:
        v = current["v"]
        return Reply(200, {**CACHED, "ETag": f'"v{v}"', "X-Version": str(v)}, versions[v])

    url = origin.route("/disk", reply)
    proxy = start_proxy("--memory-cache-size", "0", "--memory-object-max", "65536", "--workers", workers)
    head = get(url)
    with plain(proxy) as w:
        assert w.exchange(head).body == versions[1]  # stored on disk only
    conns = [plain(proxy) for _ in range(6)]
    try:
        before = [
            (a.get("x-version"), a.body == versions[1])
            for c in conns
            for a in (c.exchange(head), c.exchange(head))
        ]
        current["v"] = 2
        with plain(proxy) as other:
            assert other.exchange(get(url, "Cache-Control: no-cache")).get("x-version") == "2"
        after = [c.exchange(head) for c in conns for _ in range(2)]
    finally:
        for c in conns:
            c.close()
    assert before == [("1", True)] * 12
    mixed = [(a.get("x-version"), a.get("etag"), versions[2] == a.body) for a in after]
    assert mixed == [("2", '"v2"', True)] * 12


def test_a_disk_hit_repeated_after_its_body_file_was_corrupted_never_serves_the_damage(
    start_proxy: StartProxy, origin: Origin, tmp_path: Path
) -> None:
    """The kept disk hit reads its body file again per repeat. Someone overwrites bytes in that file (same
    size): the next repeat on the same connection never carries the damaged bytes, as the full path's
    checksum would not let them out either."""
    body = pattern(40 * 1024, seed=3)
    url = origin.route("/rot", Reply(200, CACHED, body))
    cache_dir = tmp_path / "rot-cache"
    proxy = start_proxy("--memory-cache-size", "0", "--memory-object-max", "65536", cache_dir=cache_dir)
    head = get(url)
    with plain(proxy) as w:
        assert w.exchange(head).body == body
    with plain(proxy) as w:
        before = [w.exchange(head).body for _ in range(3)]
        files = [p for p in cache_dir.rglob("*") if p.is_file() and p.stat().st_size == len(body)]
        assert len(files) == 1, files
        damaged = bytearray(files[0].read_bytes())
        damaged[100:110] = b"XXXXXXXXXX"
        with files[0].open("r+b") as f:  # in place: same inode, same size
            f.write(bytes(damaged))
        after = [w.exchange(head) for _ in range(3)]
    assert before == [body] * 3
    for a in after:
        assert b"XXXXXXXXXX" not in a.body
        assert a.body == body or a.status >= 500
    assert origin.hits["/rot"] == 2  # the damage was noticed and the page fetched again


def test_two_routed_https_upstreams_never_share_a_connection_or_credentials(
    start_proxy: StartProxy, origin: Origin, origin_ca: trustme.CA, proxy_ca_file: Path, tmp_path: Path
) -> None:
    """[[routes]] send a.test through one https:// upstream proxy and b.test through another, each with its
    own credentials. Interleaved plain and HTTPS requests for both hosts: each proxy sees only its host and
    only its credentials, and every answer names the host it was asked for (no pooled connection carried a
    request of the other route)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    ups = {
        "a": UpstreamProxy("A", credentials=("ua", "pa"), tls=ctx),
        "b": UpstreamProxy("B", credentials=("ub", "pb"), tls=ctx),
    }
    tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("a.test", "b.test").configure_cert(tls_ctx)
    secure = Origin(tls=tls_ctx)

    def named(r: Recorded) -> Reply:
        return Reply(200, {"Cache-Control": "no-store"}, f"host={r.headers['Host']}".encode())

    origin.route("/n", named)
    secure.route("/n", named)
    config = tmp_path / "routes.toml"
    config.write_text(
        f"""
[upstreams.ga]
members = [ {{ url = "https://ua:pa@localhost:{ups["a"].port}" }} ]
[upstreams.gb]
members = [ {{ url = "https://ub:pb@localhost:{ups["b"].port}" }} ]
[[routes]]
match = "a.test"
upstream = "ga"
[[routes]]
match = "b.test"
upstream = "gb"
"""
    )
    try:
        proxy = start_proxy("--config", str(config), "--connect-port", str(secure.port))
        got = []
        with client(proxy, verify=proxy_ca_file) as c:
            for _ in range(4):
                for name in ("a", "b"):
                    got.append((name, "plain", c.get(f"http://{name}.test:{origin.port}/n").text))
                    got.append((name, "tls", c.get(f"https://{name}.test:{secure.port}/n").text))
    finally:
        secure.close()
        for up in ups.values():
            up.close()
    ports = {"plain": origin.port, "tls": secure.port}
    assert got == [(n, kind, f"host={n}.test:{ports[kind]}") for n, kind, _ in got]
    assert len(got) == 16
    for name, up in ups.items():
        assert up.seen
        assert {s.host for s in up.seen} == {f"{name}.test"}
        assert {s.proxy_authorization for s in up.seen} == {_basic(f"u{name}", f"p{name}")}


def test_a_clients_own_proxy_credentials_never_travel_on_a_shared_upstream_connection(
    start_proxy: StartProxy, origin: Origin, secured_upstream: UpstreamProxy
) -> None:
    """Clients authenticate to us (--auth) on plain HTTP routed through an https:// upstream proxy whose
    connections all clients share: Alice's credentials for us, or a forged second Proxy-Authorization meant
    for the upstream, never reach it or the origin; only ours for the upstream do, on every request. A
    client without credentials is refused by us, not let through on a connection Alice's request used."""
    url = origin.route("/p", Reply(200, {"Cache-Control": "no-store"}, b"page\n"))
    proxy = start_proxy(
        "--upstream", f"https://up:secret@localhost:{secured_upstream.port}", "--auth", "alice:wonder"
    )
    alice = _basic("alice", "wonder")
    forged = _basic("up", "guess")
    answers = []
    with plain(proxy) as a, plain(proxy) as b:
        for _ in range(3):
            answers.append(a.exchange(get(url, f"Proxy-Authorization: {alice}")).status)
            answers.append(
                a.exchange(get(url, f"Proxy-Authorization: {alice}", f"Proxy-Authorization: {forged}")).status
            )
            answers.append(b.exchange(get(url)).status)
    assert answers == [200, 407, 407] * 3
    assert {s.proxy_authorization for s in secured_upstream.seen} == {_basic("up", "secret")}
    assert len(secured_upstream.seen) == 3
    assert [r.headers.get("Proxy-Authorization") for r in origin.requests] == [None] * 3


@pytest.mark.parametrize("route", ["direct", "https-upstream"])
def test_clients_leaving_while_queued_for_the_only_connection_neither_leak_it_nor_get_it(
    start_proxy: StartProxy,
    tls_origin: Origin,
    secured_upstream: UpstreamProxy,
    proxy_ca_file: Path,
    route: str,
) -> None:
    """--origin-max-connections 1: X holds the only origin connection with a slow request, three clients
    queue behind it and hang up while waiting. When X is answered, the connection serves the next client
    B promptly (the queue gave nothing to the departed and lost no slot), with B's own page."""
    _victim_routes(tls_origin)
    args = ["--connect-port", str(tls_origin.port), "--origin-max-connections", "1"]
    if route == "https-upstream":
        args += ["--upstream", f"https://up:secret@localhost:{secured_upstream.port}"]
    proxy = start_proxy(*args)
    authority = f"localhost:{tls_origin.port}"
    base = f"https://{authority}"
    with tunnel(proxy, authority, proxy_ca_file) as x:
        x.send(get(f"{base}/slow", target="/slow"))
        time.sleep(0.3)
        for i in range(3):
            with tunnel(proxy, authority, proxy_ca_file) as queued:
                queued.send(get(f"{base}/b?gone-{i}", target=f"/b?gone-{i}"))
                time.sleep(0.1)
        assert x.read().body == b"for A (slow)\n"
    started = time.monotonic()
    got = []
    for i in range(3):
        with tunnel(proxy, authority, proxy_ca_file) as b:
            got.append(b.exchange(get(f"{base}/b?{i}", target=f"/b?{i}")).body)
    assert got == [f"for B /b?{i}\n".encode() for i in range(3)]
    assert time.monotonic() - started < 5
