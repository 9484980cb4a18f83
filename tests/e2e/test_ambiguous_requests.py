"""Differential test (issue 16, point 3): a malformed or ambiguous HTTP/1 request is either refused by the proxy
(the origin receives nothing) or reaches the origin as bytes that h11, a strict parser, reads as exactly one
request with the method, target, fields and body the client sent."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import h11
import pytest

from tests.support import Proxy, RawOrigin, fwdproxy_argv

HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"}


@dataclass
class Received:
    """What one origin connection got: the raw bytes and h11's reading of them."""

    raw: bytes
    events: list[object]
    error: str | None


class RecordingOrigin:
    """A raw origin that reads each request with h11, records it and answers ``ok`` with Connection: close."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.raw = RawOrigin(self._serve)
        self.port = self.raw.port

    def _serve(self, head: bytes, sock: socket.socket) -> None:
        conn = h11.Connection(h11.SERVER)
        raw, events, error = head, [], None
        conn.receive_data(head)
        sock.settimeout(3)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = sock.recv(65536)
                    raw += chunk
                    conn.receive_data(chunk)
                    if not chunk:
                        break
                    continue
                events.append(event)
                if isinstance(event, h11.EndOfMessage):
                    break
            # Anything after the end of the first request is a second request the proxy let through.
            sock.settimeout(0.2)
            try:
                while extra := sock.recv(65536):
                    raw += extra
                    conn.receive_data(extra)
            except OSError:
                pass
            if conn.trailing_data[0]:
                error = f"bytes after the request: {conn.trailing_data[0]!r}"
        except (h11.RemoteProtocolError, OSError) as e:
            error = repr(e)
        with self.lock:
            self.received.append(Received(raw, events, error))
        try:
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nok"
            )
        finally:
            sock.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, confdir: Path) -> Iterator[tuple[Proxy, RecordingOrigin]]:
    tmp = tmp_path_factory.mktemp("ambiguous")
    origin = RecordingOrigin()
    argv = ["run", "--listen-port", "0", "--admin-port", "0", "--confdir", str(confdir)]
    proxy = Proxy(fwdproxy_argv(*argv, "--cache-dir", str(tmp / "cache")), tmp)
    yield proxy, origin
    proxy.stop()
    origin.raw.stop()


def send(proxy: Proxy, data: bytes, *, piece: int = 0, timeout: float = 10) -> bytes:
    """Send ``data`` in one write (or in writes of ``piece`` bytes) and read until the proxy closes."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if piece:
            for i in range(0, len(data), piece):
                sock.sendall(data[i : i + piece])
                time.sleep(0.0005)
        else:
            sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


def client_reading(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    """h11's reading of what the client sent: method, origin-form target, fields, body."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data.lstrip(b"\r\n"))
    request = conn.next_event()
    assert isinstance(request, h11.Request), request
    body = b""
    while not isinstance(event := conn.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data), event
        body += event.data
    target = request.target
    if not target.startswith(b"/"):
        parts = urlsplit(target.decode())
        target = (parts.path or "/").encode() + (f"?{parts.query}".encode() if parts.query else b"")
    return request.method, target, list(request.headers), body


# {u}: the origin's absolute URL prefix (http://127.0.0.1:PORT), {a}: its authority. None: must be forwarded.
CASES: list[tuple[str, bytes, int | None]] = [
    # Field syntax (RFC 9112 §5, RFC 9110 §5.5)
    ("obs-fold SP", b"GET {u}/c HTTP/1.1\r\nHost: {a}\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("obs-fold HTAB", b"GET {u}/c HTTP/1.1\r\nHost: {a}\r\nX-A: a\r\n\tb\r\n\r\n", 400),
    ("obs-fold after Host", b"GET {u}/c HTTP/1.1\r\nHost: {a}\r\n evil.example\r\n\r\n", 400),
    ("SP before colon", b"GET {u}/c HTTP/1.1\r\nHost: {a}\r\nContent-Length : 5\r\n\r\nhello", 400),
    (
        "HTAB before colon",
        b"GET {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("NUL in value", b"GET {u}/c HTTP/1.1\r\nHost: {a}\r\nX-A: a\x00b\r\n\r\n", 400),
    ("bare CR in value", b"GET {u}/c HTTP/1.1\r\nHost: {a}\r\nX-A: a\rX-B: b\r\n\r\n", 400),
    (
        "VT in TE value",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("control in name", b"GET {u}/c HTTP/1.1\r\nHost: {a}\r\nX\x01A: b\r\n\r\n", 400),
    ("empty name", b"GET {u}/c HTTP/1.1\r\nHost: {a}\r\n: b\r\n\r\n", 400),
    ("line without colon", b"GET {u}/c HTTP/1.1\r\nHost: {a}\r\nGarbage\r\n\r\n", 400),
    # Line endings (RFC 9112 §2.2)
    ("bare LF in fields", b"GET {u}/c HTTP/1.1\r\nHost: {a}\nX-A: b\r\n\r\n", 400),
    ("bare LF everywhere", b"GET {u}/c HTTP/1.1\nHost: {a}\n\n", 400),
    ("bare LF hides CL", b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nX: y\nContent-Length: 5\r\n\r\nhello", 400),
    # Request line (RFC 9112 §3, RFC 9110 §9.1, §15.6.6)
    ("space in target", b"GET {u}/a b HTTP/1.1\r\nHost: {a}\r\n\r\n", 400),
    ("double space", b"GET  {u}/c HTTP/1.1\r\nHost: {a}\r\n\r\n", 400),
    ("HTAB separator", b"GET\t{u}/c HTTP/1.1\r\nHost: {a}\r\n\r\n", 400),
    ("bad method token", b"G@T {u}/c HTTP/1.1\r\nHost: {a}\r\n\r\n", 400),
    ("HTTP/2.0 as text", b"GET {u}/c HTTP/2.0\r\nHost: {a}\r\n\r\n", 505),
    ("HTTP/1.2", b"GET {u}/c HTTP/1.2\r\nHost: {a}\r\n\r\n", 505),
    ("lowercase version", b"GET {u}/c http/1.1\r\nHost: {a}\r\n\r\n", 400),
    ("fragment", b"GET {u}/c#x HTTP/1.1\r\nHost: {a}\r\n\r\n", 400),
    ("non-ASCII target", b"GET {u}/\xc3\xa9 HTTP/1.1\r\nHost: {a}\r\n\r\n", 400),
    # Authorities (RFC 9110 §4.2, §7.2)
    ("userinfo", b"GET http://user@{a}/c HTTP/1.1\r\nHost: {a}\r\n\r\n", 400),
    ("percent in host", b"GET http://%31%32%37.0.0.1:{p}/c HTTP/1.1\r\nHost: {a}\r\n\r\n", 400),
    ("port out of range", b"GET http://127.0.0.1:99999/c HTTP/1.1\r\nHost: {a}\r\n\r\n", 400),
    ("Host with space", b"GET {u}/c HTTP/1.1\r\nHost: {a} evil\r\n\r\n", 400),
    ("Host with userinfo", b"GET {u}/c HTTP/1.1\r\nHost: x@{a}\r\n\r\n", 400),
    ("no Host in HTTP/1.1", b"GET {u}/c HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    ("CONNECT without port", b"CONNECT 127.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    # Framing (RFC 9112 §6)
    (
        "CL and TE",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE and CL",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "differing CLs",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    (
        "equal CLs",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        400,
    ),
    ("CL list", b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    ("signed CL", b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("negative CL", b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nContent-Length: -1\r\n\r\n", 400),
    ("hex CL", b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nContent-Length: 0x5\r\n\r\nhello", 400),
    (
        "huge CL",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nContent-Length: 18446744073709551621\r\n\r\nhello",
        400,
    ),
    (
        "gzip, chunked",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunked, identity",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "unknown coding",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "two TE lines",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE in HTTP/1.0",
        b"POST {u}/c HTTP/1.0\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    # Chunked bodies: the proxy decodes and re-chunks, so what it accepts reaches the origin re-framed.
    (
        "chunk size 0x",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "negative chunk size",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "over-long chunk size",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"0" * 30
        + b"5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk ext bare LF",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk without CRLF",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunked trailer",
        b"POST {u}/c HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        400,
    ),
    # Accepted: must reach the origin as the same single request.
    ("plain GET", b"GET {u}/ok?q=1 HTTP/1.1\r\nHost: {a}\r\nAccept: */*\r\n\r\n", None),
    ("POST with CL", b"POST {u}/ok HTTP/1.1\r\nHost: {a}\r\nContent-Length: 5\r\n\r\nhello", None),
    (
        "POST chunked",
        b"POST {u}/ok HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
        None,
    ),
    (
        "TE in another case",
        b"PUT {u}/ok HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding:  Chunked \r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        None,
    ),
    ("HTAB and obs-text", b"GET {u}/ok HTTP/1.1\r\nHost: {a}\r\nX-A:\tx\ty\t\r\nX-B: caf\xe9\r\n\r\n", None),
    ("empty line first", b"\r\nGET {u}/ok HTTP/1.1\r\nHost: {a}\r\n\r\n", None),
    ("HTTP/1.0 with CL", b"POST {u}/ok HTTP/1.0\r\nHost: {a}\r\nContent-Length: 2\r\n\r\nhi", None),
]
PIECEWISE = {
    "obs-fold SP",
    "bare LF hides CL",
    "CL and TE",
    "NUL in value",
    "space in target",
    "POST chunked",
    "plain GET",
    "empty line first",
    "chunk size 0x",
}


def materialise(template: bytes, port: int) -> bytes:
    a = f"127.0.0.1:{port}".encode()
    return template.replace(b"{u}", b"http://" + a).replace(b"{a}", a).replace(b"{p}", str(port).encode())


def check(proxy: Proxy, origin: RecordingOrigin, data: bytes, expected: int | None, piece: int) -> None:
    before = len(origin.received)
    reply = send(proxy, data, piece=piece)
    time.sleep(0.05)
    got = origin.received[before:]
    if expected is not None:
        assert reply.startswith(b"HTTP/1.1 %d " % expected), reply[:300]
        assert got == [], f"refused, yet the origin received {[r.raw for r in got]}"
        return
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]
    assert reply.endswith(b"\r\n\r\nok"), reply[-100:]
    assert len(got) == 1, [r.raw for r in got]
    (received,) = got
    assert received.error is None, (received.error, received.raw)
    request, *rest = received.events
    assert isinstance(request, h11.Request), received.raw
    assert isinstance(rest[-1], h11.EndOfMessage), received.raw
    body = b"".join(bytes(e.data) for e in rest if isinstance(e, h11.Data))
    method, target, fields, sent_body = client_reading(data)
    assert (request.method, request.target, body) == (method, target, sent_body), received.raw
    # Names and values as sent, in order; the proxy may drop hop-by-hop fields (RFC 9110 §7.6.1).
    forwarded = [(n, v) for n, v in request.headers if n not in HOP_BY_HOP]
    sent = [(n, v) for n, v in fields if n not in HOP_BY_HOP]
    assert forwarded == sent, received.raw


@pytest.mark.parametrize("name, template, expected", CASES, ids=[c[0] for c in CASES])
def test_one_write(
    setup: tuple[Proxy, RecordingOrigin], name: str, template: bytes, expected: int | None
) -> None:
    proxy, origin = setup
    check(proxy, origin, materialise(template, origin.port), expected, piece=0)


@pytest.mark.parametrize(
    "name, template, expected",
    [c for c in CASES if c[0] in PIECEWISE],
    ids=sorted(PIECEWISE, key=[c[0] for c in CASES].index),
)
def test_byte_by_byte(
    setup: tuple[Proxy, RecordingOrigin], name: str, template: bytes, expected: int | None
) -> None:
    proxy, origin = setup
    check(proxy, origin, materialise(template, origin.port), expected, piece=1)


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 40 and len(PIECEWISE) >= 8
    assert all(name in {c[0] for c in CASES} for name in PIECEWISE)


def test_head_over_64_kib_in_a_thousand_writes_is_431(setup: tuple[Proxy, RecordingOrigin]) -> None:
    proxy, origin = setup
    before = len(origin.received)
    fields = b"".join(b"X-F%03d: %s\r\n" % (i, b"v" * 90) for i in range(200))  # 200 x 100 bytes
    head = materialise(b"GET {u}/big HTTP/1.1\r\nHost: {a}\r\n", origin.port) + fields * 4  # ~80 KiB
    piece = len(head) // 1000 + 1
    reply = send(proxy, head + b"\r\n", piece=piece)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:300]
    assert b"fwdproxy: the request head exceeds 64 KiB" in reply
    assert origin.received[before:] == []
