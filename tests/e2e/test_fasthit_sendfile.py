"""Disk hits whose body the fast hit layer writes from its kept file to a plain client's socket with sendfile
(addons/fasthit.py FastLayer._writable, fwdproxy/store/openfiles.py OpenFiles.send), attacked end to end on
both event loops: every response is parsed strictly and compared byte for byte, on keep-alive, pipelined and
slowly read connections, a client that hangs up mid-body, plain http inside a CONNECT tunnel, an intercepted
TLS tunnel (which must keep the bytes path), and body files damaged, replaced or cut while being sent."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.fastwire import Answer, get, plain, stats
from tests.support import Origin, Proxy, Reply, pattern

KIB = 1024
MIB = 1024 * KIB
CACHED = {"Cache-Control": "max-age=600", "Content-Type": "application/octet-stream"}
BODY = pattern(100 * KIB, seed=1)  # a body file, read whole (under the default --memory-object-max)
OTHER = pattern(100 * KIB, seed=2)
HUGE = pattern(8 * MIB, seed=3)  # far more than any socket buffer between the proxy and a client
DISK_ONLY = ("--memory-cache-size", "0")
BIG_WHOLE = ("--memory-object-max", "16MiB")  # the fast layer takes disk bodies up to this (read_whole_max)
LOOPS = ["uvloop", "asyncio"]

_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+): ?([^\r\n]*)")


@pytest.fixture(params=LOOPS)
def loop(request: pytest.FixtureRequest) -> tuple[str, str]:
    return ("--event-loop", str(request.param))


@dataclass
class Response:
    status: int
    fields: list[tuple[bytes, bytes]]
    body: bytes

    def one(self, name: str) -> str:
        values = [v for k, v in self.fields if k.lower() == name.lower().encode()]
        assert len(values) == 1, (name, self.fields)
        return values[0].decode("latin-1")

    def absent(self, name: str) -> bool:
        return not any(k.lower() == name.lower().encode() for k, _ in self.fields)


class Client:
    """A raw client connection that parses responses strictly: one status line, well-formed fields, exactly
    one Content-Length and exactly that many body bytes; ``slow`` reads the first bytes a little at a time
    (with a tiny receive buffer the proxy's sendfile then stops part way and its writer sends the rest)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self, n: int = 256 * KIB) -> bool:
        chunk = self.sock.recv(n)
        self.buf += chunk
        return bool(chunk)

    def slow(self, total: int, step: int = 4 * KIB, pause: float = 0.002) -> None:
        """Read ``total`` bytes ``step`` at a time with pauses (kept in the buffer for ``response``), then
        open the receive buffer wide so the rest comes at full speed."""
        while len(self.buf) < total:
            if not self._more(step):
                return
            time.sleep(pause)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)

    def _head(self) -> tuple[Response, int | None]:
        """The next response head, parsed strictly, and its Content-Length (None: absent)."""
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                raise ConnectionError(f"closed before a response head: {self.buf[:200]!r}")
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        line, *lines = raw.split(b"\r\n")
        m = _STATUS.fullmatch(line)
        assert m is not None, line
        fields = []
        for f in lines:
            fm = _FIELD.fullmatch(f)
            assert fm is not None, f
            fields.append((fm[1], fm[2]))
        response = Response(int(m[1]), fields, b"")
        lengths = [v for k, v in fields if k.lower() == b"content-length"]
        assert len(lengths) <= 1, fields
        return response, int(lengths[0]) if lengths else None

    def response(self, *, head: bool = False) -> Response:
        response, length = self._head()
        if head or response.status in (204, 304):
            return response
        assert length is not None, response.fields
        while len(self.buf) < length:
            if not self._more():
                raise ConnectionError(f"closed inside a body after {len(self.buf)} of {length} bytes")
        response.body, self.buf = self.buf[:length], self.buf[length:]
        return response

    def short(self) -> tuple[Response, bool]:
        """A response that may end short: (what came, whether it was whole). It ends short only where the
        connection is closed."""
        response, length = self._head()
        assert length is not None, response.fields
        while len(self.buf) < length and self._more():
            pass
        response.body, self.buf = self.buf[:length], self.buf[length:]
        return response, len(response.body) == length

    def quiet(self, wait: float = 0.3) -> bool:
        """Nothing more arrives within ``wait``, not even a close (no stray bytes after the last response)."""
        if self.buf:
            return False
        self.sock.settimeout(wait)
        try:
            self._more()
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(30)
        return False

    def ended(self, wait: float = 5.0) -> bool:
        """The proxy closed the connection with nothing more to read."""
        self.sock.settimeout(wait)
        try:
            return not self.buf and not self._more()
        except TimeoutError:
            return False
        except ConnectionResetError:
            return not self.buf

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(proxy: Proxy, *, rcvbuf: int = 0) -> Client:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window follows
    sock.settimeout(30)
    sock.connect((proxy.host, proxy.port))
    return Client(sock)


def hit(answer: Response, body: bytes) -> None:
    """A 200 from the cache carrying exactly ``body``."""
    assert answer.status == 200, answer.fields
    assert answer.one("content-length") == str(len(body))
    assert "hit" in answer.one("cache-status"), answer.fields
    assert len(answer.body) == len(body)
    assert answer.body == body


def counters(proxy: Proxy, *extra: str) -> tuple[int, int]:
    s = stats(proxy, *extra)
    return int(s["fast_hits"]), int(s["fast_sendfile_hits"])  # type: ignore[call-overload]


def store(proxy: Proxy, url: str, body: bytes, warm: int = 2) -> None:
    """A miss that stores ``url``, then ``warm`` hits on their own connection: the first fast hit reads the
    body file whole and checks it; from the next one on the kept file may go out by sendfile."""
    with connect(proxy) as c:
        c.send(get(url))
        first = c.response()
        assert first.status == 200
        assert first.body == body
    with connect(proxy) as c:
        for _ in range(warm):
            c.send(get(url))
            hit(c.response(), body)


def fds(proxy: Proxy) -> int:
    return len(os.listdir(f"/proc/{proxy.proc.pid}/fd"))


def no_crash(proxy: Proxy) -> None:
    log = proxy.log()
    assert "Traceback" not in log, log[-3000:]
    assert "has crashed" not in log, log[-3000:]


# -- 1. repeated disk hits on one keep-alive connection ----------------------------------------------------------


def test_repeated_disk_hits_on_one_connection_are_exact_and_go_by_sendfile(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    url = origin.route("/one", Reply(200, CACHED, BODY))
    other = origin.route("/two", Reply(200, CACHED, OTHER))
    proxy = start_proxy(*DISK_ONLY, *loop, cache_dir=tmp_path / "c")
    store(proxy, url, BODY, warm=1)
    store(proxy, other, OTHER, warm=1)
    fast0, sf0 = counters(proxy)
    with connect(proxy) as c:
        for i in range(10):
            c.send(get(url if i % 3 else other))
            hit(c.response(), BODY if i % 3 else OTHER)
        assert c.quiet()
    fast1, sf1 = counters(proxy)
    assert fast1 - fast0 == 10
    # Each kept head is good for the second it was worked out in (Age): at most a few are worked out anew.
    assert sf1 - sf0 >= 6
    assert sf1 - sf0 <= 10
    assert origin.hits["/one"] == 1
    assert origin.hits["/two"] == 1
    no_crash(proxy)


# -- 2. a body far bigger than the socket buffers, read slowly ------------------------------------------------------


def test_a_huge_body_read_slowly_goes_part_direct_part_through_the_writer(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    url = origin.route("/huge", Reply(200, CACHED, HUGE))
    small = origin.route("/small", Reply(200, CACHED, BODY))
    proxy = start_proxy(*DISK_ONLY, *BIG_WHOLE, *loop, cache_dir=tmp_path / "c")
    store(proxy, url, HUGE)
    store(proxy, small, BODY)
    direct = 0
    with connect(proxy, rcvbuf=4 * KIB) as c:
        for _ in range(3):
            store(
                proxy, url, HUGE, warm=1
            )  # a hit just now: its kept head is good for the rest of this second
            _, sf0 = counters(proxy)
            c.send(get(url))
            time.sleep(0.2)  # the proxy fills the socket and hands the rest to its writer meanwhile
            c.slow(256 * KIB)
            hit(c.response(), HUGE)
            _, sf1 = counters(proxy)
            direct += sf1 - sf0
            c.send(get(small))  # the same connection after it
            hit(c.response(), BODY)
        assert c.quiet()
    assert direct >= 1
    assert origin.hits["/huge"] == 1
    no_crash(proxy)


def test_a_request_arriving_while_the_writer_still_sends_the_last_body_waits_its_turn(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    """The second request is read once mitmproxy's writer has drained below its low-water mark, but not to
    nothing: its answer must not be written to the socket directly, ahead of the rest of the first body."""
    url = origin.route("/huge", Reply(200, CACHED, HUGE))
    small = origin.route("/small", Reply(200, CACHED, BODY))
    proxy = start_proxy(*DISK_ONLY, *BIG_WHOLE, *loop, cache_dir=tmp_path / "c")
    store(proxy, url, HUGE)
    store(proxy, small, BODY)
    with connect(proxy, rcvbuf=4 * KIB) as c:
        for follow in (small, url, small):
            c.send(get(url))
            time.sleep(0.1)
            c.slow(64 * KIB)
            c.send(get(follow))  # a separate write, while most of the first body is still on its way
            c.slow(len(HUGE) // 2, step=64 * KIB, pause=0.0005)
            hit(c.response(), HUGE)
            hit(c.response(), BODY if follow == small else HUGE)
        assert c.quiet()
    assert origin.hits["/huge"] == 1
    no_crash(proxy)


def test_pipelined_huge_bodies_arrive_whole_and_in_order(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    url = origin.route("/huge", Reply(200, CACHED, HUGE))
    small = origin.route("/small", Reply(200, CACHED, BODY))
    proxy = start_proxy(*DISK_ONLY, *BIG_WHOLE, *loop, cache_dir=tmp_path / "c")
    store(proxy, url, HUGE)
    store(proxy, small, BODY)
    with connect(proxy, rcvbuf=4 * KIB) as c:
        c.send(get(url) + get(small) + get(url) + get(small))
        time.sleep(0.2)
        c.slow(128 * KIB)
        for body in (HUGE, BODY, HUGE, BODY):
            hit(c.response(), body)
        assert c.quiet()
    no_crash(proxy)


# -- 3. pipelined disk hits mixed with a miss, a HEAD and a Range request -------------------------------------------


def test_pipelined_disk_hits_with_a_miss_head_and_range_arrive_in_order(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    a = origin.route("/a", Reply(200, CACHED, BODY))
    b = origin.route("/b", Reply(200, CACHED, OTHER))
    proxy = start_proxy(*DISK_ONLY, *loop, cache_dir=tmp_path / "c")
    store(proxy, a, BODY)
    store(proxy, b, OTHER)
    _, sf0 = counters(proxy)
    for attempt in range(3):
        miss = origin.route(
            f"/miss{attempt}", Reply(200, {"Content-Type": "text/plain"}, b"m%d" % attempt * 999)
        )
        batch = [
            (get(a), "a"),
            (get(a), "a"),
            (get(b), "b"),
            (get(a, method="HEAD"), "head"),
            (get(a, "Range: bytes=1000-2999"), "range"),
            (get(b), "b"),
            (get(miss), "miss"),
            (get(a), "a"),
            (get(b, method="HEAD"), "head-b"),
            (get(b), "b"),
        ]
        if attempt == 1:  # the HEAD first: nothing of the batch goes direct after a buffered answer
            batch = [batch[3], *batch[:3], *batch[4:]]
        with connect(proxy) as c:
            c.send(b"".join(raw for raw, _ in batch))
            for _, what in batch:
                answer = c.response(head=what.startswith("head"))
                if what == "a":
                    hit(answer, BODY)
                elif what == "b":
                    hit(answer, OTHER)
                elif what.startswith("head"):
                    assert answer.status == 200
                    assert answer.one("content-length") == str(len(BODY))
                    assert "hit" in answer.one("cache-status")
                elif what == "range":
                    assert answer.status == 206
                    assert answer.one("content-range") == f"bytes 1000-2999/{len(BODY)}"
                    assert answer.body == BODY[1000:3000]
                else:
                    assert answer.status == 200
                    assert answer.body == b"m%d" % attempt * 999
            assert c.quiet()
        assert origin.hits[f"/miss{attempt}"] == 1
    assert origin.hits["/a"] == 1
    assert origin.hits["/b"] == 1
    _, sf1 = counters(proxy)
    assert sf1 - sf0 >= 1  # the first answers of a batch went direct (unless each crossed a second)
    no_crash(proxy)


def test_pipelined_requests_and_a_half_close_get_every_answer(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    url = origin.route("/huge", Reply(200, CACHED, HUGE))
    proxy = start_proxy(*DISK_ONLY, *BIG_WHOLE, *loop, cache_dir=tmp_path / "c")
    store(proxy, url, HUGE)
    with connect(proxy, rcvbuf=4 * KIB) as c:
        c.send(get(url) * 3)
        c.sock.shutdown(socket.SHUT_WR)  # the client has nothing more to say; it still reads
        time.sleep(0.2)
        c.slow(64 * KIB)
        for _ in range(3):
            hit(c.response(), HUGE)
        assert c.ended()
    no_crash(proxy)


# -- 4. clients that hang up in the middle of a body ----------------------------------------------------------------


def test_clients_hanging_up_mid_body_leak_nothing_and_others_get_exact_bytes(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    url = origin.route("/huge", Reply(200, CACHED, HUGE))
    small = origin.route("/small", Reply(200, CACHED, BODY))
    proxy = start_proxy(*DISK_ONLY, *BIG_WHOLE, *loop, cache_dir=tmp_path / "c")
    store(proxy, url, HUGE)
    store(proxy, small, BODY)
    time.sleep(0.3)
    before = fds(proxy)
    _, sf0 = counters(proxy)
    for i in range(8):
        c = connect(proxy, rcvbuf=4 * KIB)
        c.send(get(url) * (1 + i % 2) + (get(small) if i % 3 == 0 else b""))
        time.sleep(0.05)
        c.slow(32 * KIB * (1 + i))
        if i % 2:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
        c.close()
    with connect(proxy) as c:  # meanwhile and after: exact bytes for everyone else
        for _ in range(3):
            c.send(get(url))
            hit(c.response(), HUGE)
            c.send(get(small))
            hit(c.response(), BODY)
        assert c.quiet()
    _, sf1 = counters(proxy)
    # Most went direct: a kept head is good for the second it was made in, so a second's turn during these
    # six hits works each of the two heads out anew once (through memory).
    assert sf1 - sf0 >= 4
    deadline = time.monotonic() + 15
    while fds(proxy) > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fds(proxy) <= before
    assert origin.hits["/huge"] == 1
    no_crash(proxy)


# -- 5. an intercepted TLS tunnel keeps the bytes path -------------------------------------------------------------


def _tls_client(proxy: Proxy, authority: str, ca: Path) -> Client:
    raw = socket.create_connection((proxy.host, proxy.port), timeout=30)
    raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and (chunk := raw.recv(1)):
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["http/1.1"])
    return Client(ctx.wrap_socket(raw, server_hostname="localhost"))


def test_inside_an_intercepted_tunnel_nothing_goes_direct_and_bytes_are_exact(
    start_proxy, tls_origin: Origin, proxy_ca_file: Path, tmp_path: Path, loop: tuple[str, str]
) -> None:
    tls_origin.route("/t", Reply(200, CACHED, BODY))
    tls_origin.route("/h", Reply(200, CACHED, HUGE))
    proxy = start_proxy(
        *DISK_ONLY, *BIG_WHOLE, *loop, "--connect-port", str(tls_origin.port), cache_dir=tmp_path / "c"
    )
    authority = f"localhost:{tls_origin.port}"
    t, h = f"https://{authority}/t", f"https://{authority}/h"
    for url, path, body in ((t, "/t", BODY), (h, "/h", HUGE)):
        with _tls_client(proxy, authority, proxy_ca_file) as c:
            c.send(get(url, target=path))
            assert c.response().body == body  # stored
    fast0, sf0 = counters(proxy)
    with _tls_client(proxy, authority, proxy_ca_file) as c:
        for _ in range(4):
            c.send(get(t, target="/t"))
            hit(c.response(), BODY)
        c.send(get(t, target="/t") + get(h, target="/h") + get(t, target="/t") + get(h, target="/h"))
        for body in (BODY, HUGE, BODY, HUGE):
            hit(c.response(), body)
        assert c.quiet()
    fast1, sf1 = counters(proxy)
    assert fast1 - fast0 == 8
    assert sf1 == sf0  # mitmproxy's TLS layer makes the records: never raw bytes on the socket
    no_crash(proxy)


# -- 6. plain http inside a CONNECT tunnel -------------------------------------------------------------------------


def _plain_tunnel(proxy: Proxy, authority: str, first: bytes = b"", *, rcvbuf: int = 0) -> Client:
    """A CONNECT tunnel that speaks plain HTTP; ``first`` goes in the same write as the CONNECT."""
    c = connect(proxy, rcvbuf=rcvbuf)
    c.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode() + first)
    answer = c.response(head=True)  # a 2xx to CONNECT has no body
    assert answer.status == 200, answer.fields
    return c


def test_plain_http_inside_a_connect_tunnel_goes_direct_and_is_exact(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    origin.route("/p", Reply(200, CACHED, BODY))
    origin.route("/ph", Reply(200, CACHED, HUGE))
    proxy = start_proxy(
        *DISK_ONLY, *BIG_WHOLE, *loop, "--connect-port", str(origin.port), cache_dir=tmp_path / "c"
    )
    authority = f"127.0.0.1:{origin.port}"
    p, ph = f"http://{authority}/p", f"http://{authority}/ph"
    for url, path, body in ((p, "/p", BODY), (ph, "/ph", HUGE)):
        with _plain_tunnel(proxy, authority) as c:
            c.send(get(url, target=path))
            assert c.response().body == body  # stored
        with _plain_tunnel(proxy, authority) as c:
            c.send(get(url, target=path))
            hit(c.response(), body)  # read whole and checked once
    fast0, sf0 = counters(proxy)
    with _plain_tunnel(proxy, authority) as c:
        for _ in range(4):
            c.send(get(p, target="/p"))
            hit(c.response(), BODY)
        assert c.quiet()
    fast1, sf1 = counters(proxy)
    assert fast1 - fast0 == 4
    assert sf1 - sf0 >= 2
    # The request in the CONNECT's own write: its answer must follow the 200, whichever goes out first.
    with _plain_tunnel(proxy, authority, get(p, target="/p") + get(ph, target="/ph"), rcvbuf=4 * KIB) as c:
        time.sleep(0.2)
        c.slow(64 * KIB)
        hit(c.response(), BODY)
        hit(c.response(), HUGE)
        c.send(get(ph, target="/ph") + get(p, target="/p"))
        hit(c.response(), HUGE)
        hit(c.response(), BODY)
        assert c.quiet()
    assert origin.hits["/p"] == 1
    assert origin.hits["/ph"] == 1
    no_crash(proxy)


# -- 7. body files changed between hits, and cut while they are sent ----------------------------------------------


def _body_file(cache_dir: Path) -> Path:
    files = sorted((cache_dir / "store").rglob("*.val"), key=lambda p: p.stat().st_ctime_ns)
    assert files
    return files[-1]  # the entry's current file (a dropped one may not be unlinked yet)


def test_body_files_damaged_replaced_or_truncated_between_direct_hits_are_never_served(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    url = origin.route("/d", Reply(200, CACHED, BODY))
    cache_dir = tmp_path / "c"
    proxy = start_proxy(*DISK_ONLY, *loop, cache_dir=cache_dir)
    store(proxy, url, BODY)
    expected_origin = 1

    def flip(path: Path) -> None:
        with open(path, "r+b") as f:  # in place: same inode, same size
            f.seek(len(BODY) // 2)
            f.write(bytes([BODY[len(BODY) // 2] ^ 0xFF]))

    def replace(path: Path) -> None:
        other = tmp_path / "other"
        other.write_bytes(b"X" * len(BODY))
        os.replace(other, path)

    def truncate(path: Path) -> None:
        os.truncate(path, len(BODY) // 3)

    def extend(path: Path) -> None:
        with open(path, "ab") as f:
            f.write(b"EXTRA" * 100)

    for change in (flip, replace, truncate, extend, flip):
        _, sf0 = counters(proxy)
        with connect(proxy) as c:
            for _ in range(2):
                c.send(get(url))
                hit(c.response(), BODY)
        _, sf1 = counters(proxy)
        assert sf1 - sf0 >= 1  # the direct path is the one under attack
        time.sleep(0.02)  # past the file system's timestamp granularity
        change(_body_file(cache_dir))
        with connect(proxy) as c:
            for _ in range(3):
                c.send(get(url))
                answer = c.response()
                assert answer.status == 200
                assert answer.body == BODY
            assert c.quiet()
        expected_origin += 1  # found, dropped and fetched again: never served
        assert origin.hits["/d"] == expected_origin, change
        with connect(proxy) as c:  # the refetched entry: read whole and checked once more
            c.send(get(url))
            hit(c.response(), BODY)
    no_crash(proxy)


def test_a_body_file_cut_while_being_sent_ends_short_never_wrong(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    """The file truncated by another hand at about the moment the proxy sends it: the client gets the whole
    body (the cut came before the check, or after the copy) or a prefix of it and the connection closed."""
    url = origin.route("/cut", Reply(200, CACHED, HUGE))
    cache_dir = tmp_path / "c"
    proxy = start_proxy(*DISK_ONLY, *BIG_WHOLE, *loop, cache_dir=cache_dir)
    outcomes = {"whole": 0, "short": 0}
    for i in range(8):
        store(proxy, url, HUGE, warm=2)
        path = _body_file(cache_dir)
        with connect(proxy, rcvbuf=4 * KIB) as c:
            cutter = threading.Timer(0.0005 * (i % 4), os.truncate, (path, len(HUGE) // 4))
            c.send(get(url))
            cutter.start()
            cutter.join()
            time.sleep(0.1)
            c.slow(64 * KIB)
            answer, whole = c.short()
            assert answer.status == 200
            assert answer.one("content-length") == str(len(HUGE))
            assert answer.body == HUGE[: len(answer.body)]  # never a wrong byte
            if whole:
                assert answer.body == HUGE
                c.send(get(url))  # the connection still works: the truncated file is found
                nxt = c.response()
                assert nxt.status == 200
                assert nxt.body == HUGE
                outcomes["whole"] += 1
            else:
                assert c.ended()  # short, and closed right after: never extra bytes
                outcomes["short"] += 1
    with connect(proxy) as c:
        c.send(get(url))
        assert c.response().body == HUGE
    # Every round's cut file was found and fetched anew (once), never served again.
    assert origin.hits["/cut"] == 1 + 8, outcomes
    no_crash(proxy)


# -- the direct path answers as the full path does ----------------------------------------------------------------

VALIDATED = {**CACHED, "ETag": '"v1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
SIZE = len(BODY)
DIRECT_CORPUS: list[tuple[str, tuple[str, ...], str]] = [
    ("get", (), "GET"),
    ("lower-case names", ("accept: */*", "user-agent: t/1"), "GET"),
    ("keep-alive field", ("Connection: keep-alive",), "GET"),
    ("whole range", ("Range: bytes=0-",), "GET"),  # a 206 whose body is the stored body itself
    ("suffix past the start", (f"Range: bytes=-{SIZE * 2}",), "GET"),
    ("open range", ("Range: bytes=100-",), "GET"),
    ("range past end", (f"Range: bytes={SIZE - 10}-{SIZE * 2}",), "GET"),
    ("if-range match", ("Range: bytes=0-", 'If-Range: "v1"'), "GET"),
    ("if-range other", ("Range: bytes=5-9", 'If-Range: "v9"'), "GET"),
    ("inm other", ('If-None-Match: "v2"',), "GET"),
    ("inm match", ('If-None-Match: "v1"',), "GET"),
    ("ims earlier", ("If-Modified-Since: Sun, 31 Dec 2023 00:00:00 GMT",), "GET"),
    ("head", (), "HEAD"),
    ("accept-encoding", ("Accept-Encoding: gzip, br",), "GET"),
]


def test_direct_disk_hits_answer_exactly_as_the_full_path(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    """Each request three times on one connection to a proxy with the fast layer and to one without
    (--no-fast-hits), body files only (--memory-cache-size 0): the same status, fields (Date, Age and the
    ttl aside), bodies and access log lines, with the repeats going out by sendfile."""
    url = origin.route("/v", Reply(200, VALIDATED, BODY))
    fast = start_proxy(*DISK_ONLY, *loop, "--access-log", str(tmp_path / "f.log"), cache_dir=tmp_path / "c1")
    full = start_proxy(
        *DISK_ONLY,
        *loop,
        "--no-fast-hits",
        "--access-log",
        str(tmp_path / "n.log"),
        cache_dir=tmp_path / "c2",
    )
    for proxy in (fast, full):
        store(proxy, url, BODY, warm=0)
    _, sf0 = counters(fast)
    for name, extra, method in DIRECT_CORPUS:
        request = get(url, *extra, method=method)
        got: list[list[Answer]] = []
        for proxy in (fast, full):
            with plain(proxy) as w:
                got.append([w.exchange(request) for _ in range(3)])
        for i, (a, b) in enumerate(zip(got[0], got[1], strict=True)):
            x, y = a.comparable(), b.comparable()
            assert x[:4] == y[:4], (name, i)
            if x[4] is not None or y[4] is not None:
                assert x[4] is not None and y[4] is not None, (name, i)
                assert abs(x[4] - y[4]) <= 1, (name, i)
    _, sf1 = counters(fast)
    assert sf1 - sf0 >= 4  # the repeated whole bodies (200s and whole 206s) went out by sendfile
    assert counters(full)[1] == 0
    assert origin.hits["/v"] == 2
    fast.stop(), full.stop()

    def lines(path: Path) -> list[str]:
        out = [line.split(None, 2)[2] for line in path.read_text().splitlines()]
        return [line for line in out if "fwdproxy.local" not in line]

    assert lines(tmp_path / "f.log") == lines(tmp_path / "n.log")


def test_workers_send_disk_hits_directly_and_the_counts_add_up(
    start_proxy, origin: Origin, tmp_path: Path
) -> None:
    """--workers 2 over one cache directory: each worker's fast layer writes the shared body file to its own
    clients, and the status page adds up every worker's fast_sendfile_hits."""
    url = origin.route("/w", Reply(200, CACHED, BODY))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        admin = int(s.getsockname()[1])
    proxy = start_proxy(*DISK_ONLY, "--workers", "2", "--admin-port", str(admin), cache_dir=tmp_path / "c")
    with connect(proxy) as c:
        c.send(get(url))
        assert c.response().body == BODY  # stored
    for _ in range(20):  # new connections: the kernel spreads them over both workers
        with connect(proxy) as c:
            for _ in range(3):
                c.send(get(url))
                hit(c.response(), BODY)
            assert c.quiet(0.05)
    deadline = time.monotonic() + 15
    while True:
        with socket.create_connection(("127.0.0.1", admin), timeout=10) as s:
            w = Client(s)
            w.send(b"GET /stats.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            page = json.loads(w.response().body)
        if page["requests"]["total"] == 61 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert page["requests"]["total"] == 61
    assert page["fast_hits"] == 60
    assert page["fast_sendfile_hits"] >= 20  # the repeats on each connection went out by sendfile
    assert page["fast_sendfile_hits"] <= 58  # each worker read the entry whole once at least
    assert origin.hits["/w"] == 1
    no_crash(proxy)


def test_many_clients_at_once_fast_and_slow_each_get_their_own_bytes(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    """Clients in parallel on the direct path, some reading slowly through a tiny window (their rest waits
    in the writer) beside fast ones; a memory tier too small for the bodies (64 KiB) leaves them on disk."""
    urls = {
        origin.route("/c1", Reply(200, CACHED, BODY)): BODY,
        origin.route("/c2", Reply(200, CACHED, OTHER)): OTHER,
        origin.route("/c3", Reply(200, CACHED, HUGE)): HUGE,
    }
    proxy = start_proxy("--memory-cache-size", "64KiB", *BIG_WHOLE, *loop, cache_dir=tmp_path / "c")
    for url, body in urls.items():
        store(proxy, url, body)
    _, sf0 = counters(proxy)
    errors: list[BaseException] = []
    order = list(urls.items())

    def client(n: int) -> None:
        try:
            with connect(proxy, rcvbuf=4 * KIB if n % 3 == 0 else 0) as c:
                for i in range(6):
                    url, body = order[(n + i) % len(order)]
                    if i % 2:
                        c.send(get(url) + get(order[0][0]))  # and a pipelined one behind it
                    else:
                        c.send(get(url))
                    if n % 3 == 0:
                        c.slow(32 * KIB)
                    hit(c.response(), body)
                    if i % 2:
                        hit(c.response(), order[0][1])
                assert c.quiet(0.05)
        except BaseException as e:  # noqa: BLE001 (reported below, with the others)
            errors.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    _, sf1 = counters(proxy)
    assert sf1 - sf0 >= 9
    assert all(origin.hits[p] == 1 for p in ("/c1", "/c2", "/c3"))
    no_crash(proxy)


def test_a_client_slower_than_the_header_timeout_still_gets_the_whole_body(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    """The idle clock starts when the answer is handed over (as on the full path), so it may close the
    connection while the body is still on its way: what was written directly and what the writer holds
    must both reach the client before the close."""
    url = origin.route("/huge", Reply(200, CACHED, HUGE))
    proxy = start_proxy(*DISK_ONLY, *BIG_WHOLE, *loop, "--header-timeout", "1s", cache_dir=tmp_path / "c")
    direct = 0
    for _ in range(3):  # until one went direct (a kept head is good for the second it was made in)
        store(proxy, url, HUGE)
        _, sf0 = counters(proxy)
        with connect(proxy, rcvbuf=4 * KIB) as c:
            c.send(get(url))
            started = time.monotonic()
            c.slow(len(HUGE) // 3, pause=0.003)
            assert time.monotonic() - started > 1.2  # past the header timeout
            answer, whole = c.short()
            assert whole
            hit(answer, HUGE)
            assert c.ended()  # then closed as idle
        _, sf1 = counters(proxy)
        direct += sf1 - sf0
        if direct:
            break
    assert direct == 1
    no_crash(proxy)


def test_direct_hits_stop_when_the_entry_goes_stale(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    """A kept head is sent again only while Age and ttl read the same and the entry is fresh: across the
    entry's expiry every answer still carries an Age within its max-age, and the origin is asked again."""
    short = {**CACHED, "Cache-Control": "max-age=2", "ETag": '"e1"'}
    url = origin.route("/exp", Reply(200, short, BODY))
    proxy = start_proxy(*DISK_ONLY, *loop, cache_dir=tmp_path / "c")
    store(proxy, url, BODY)
    _, sf0 = counters(proxy)
    ages = []
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        with connect(proxy) as c:
            for _ in range(3):
                c.send(get(url))
                answer = c.response()
                assert answer.status == 200
                assert answer.body == BODY
                ages.append(0 if answer.absent("age") else int(answer.one("age")))
        time.sleep(0.05)
    _, sf1 = counters(proxy)
    assert sf1 - sf0 >= 3
    assert max(ages) <= 2  # never served past its freshness (RFC 9111 §4.2)
    assert origin.hits["/exp"] >= 2  # asked again once it went stale
    no_crash(proxy)


def test_direct_hits_are_still_asked_for_credentials_each_time(
    start_proxy, origin: Origin, tmp_path: Path, loop: tuple[str, str]
) -> None:
    """--auth: a kept head with good credentials goes direct; the same URL without them, or with wrong
    ones, pipelined behind it gets the full path's 407 and never a body byte, in order."""
    url = origin.route("/auth", Reply(200, CACHED, BODY))
    proxy = start_proxy(*DISK_ONLY, *loop, "--auth", "u:p", cache_dir=tmp_path / "c")
    good, bad = "Proxy-Authorization: Basic dTpw", "Proxy-Authorization: Basic dTpx"
    for _ in range(2):  # stored (the full path from then on), then read whole: the head is kept
        with connect(proxy) as c:
            c.send(get(url, good))
            assert c.response().body == BODY
    _, sf0 = counters(proxy, good)
    with connect(proxy) as c:
        c.send(get(url, good) + get(url, good) + get(url) + get(url, good) + get(url, bad))
        hit(c.response(), BODY)
        hit(c.response(), BODY)
        refused = c.response()
        assert refused.status == 407
        assert BODY[:64] not in refused.body
        after = c.response()  # the full path's, after the 407
        assert after.status == 200
        assert after.body == BODY
        assert c.response().status == 407
        assert c.quiet()
    with connect(proxy) as c:
        c.send(get(url, bad))
        assert c.response().status == 407
    with connect(proxy) as c:  # (a kept head lasts a second: one of these batches went direct)
        c.send(get(url, good))
        hit(c.response(), BODY)
    _, sf1 = counters(proxy, good)
    assert sf1 - sf0 >= 1
    assert [r.headers.get("Proxy-Authorization") for r in origin.requests] == [None]
    no_crash(proxy)
