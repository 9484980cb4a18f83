"""Faults, end to end (issue 9, point 2): silent and dying origins, slow clients, a full or vanishing cache
disk, and SIGTERM. The proxy keeps answering, and never serves or keeps a wrong byte."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Origin, RawOrigin, Recorded, Reply, client, pattern, slow_chunks


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.fixture
def raw_origins() -> Iterator[list[RawOrigin]]:
    made: list[RawOrigin] = []
    yield made
    for o in made:
        o.stop()


def silent(head: bytes, sock: socket.socket) -> None:
    """Accept the request and never answer (the connection stays open until the test ends)."""


def test_silent_origin_is_504_after_the_read_timeout(start_proxy, raw_origins: list[RawOrigin]) -> None:
    raw = RawOrigin(silent)
    raw_origins.append(raw)
    proxy = start_proxy("--read-timeout", "1")
    with client(proxy) as c:
        started = time.monotonic()
        r = c.get(raw.url("/never"))
        waited = time.monotonic() - started
    assert r.status_code == 504
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text == f"fwdproxy: 127.0.0.1:{raw.port} sent no response within 1 s (read timeout)\n"
    assert 1 <= waited < 3, waited
    assert "read timeout" in proxy.log()


def test_silent_https_origin_is_504_too(start_proxy, tls_origin: Origin, proxy_ca_file: Path) -> None:
    def hang(_: Recorded) -> Reply:
        time.sleep(10)
        return Reply(200, {}, b"too late\n")

    url = tls_origin.route("/hang", hang).replace("127.0.0.1", "localhost")
    proxy = start_proxy("--read-timeout", "1", "--connect-port", str(tls_origin.port))
    with client(proxy, verify=proxy_ca_file) as c:
        r = c.get(url)
    assert r.status_code == 504 and "sent no response within 1 s" in r.text


def test_origin_stalling_mid_body_is_cut_and_not_stored(start_proxy, raw_origins: list[RawOrigin]) -> None:
    def stall(head: bytes, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 4000000\r\n\r\n")
        sock.sendall(pattern(2_000_000))  # then nothing more

    raw = RawOrigin(stall)
    raw_origins.append(raw)
    proxy = start_proxy("--read-timeout", "1")
    started = time.monotonic()
    with client(proxy) as c, pytest.raises(httpx.RemoteProtocolError):
        c.get(raw.url("/stall"))
    assert time.monotonic() - started < 4
    with client(proxy) as c, pytest.raises(httpx.RemoteProtocolError):
        c.get(raw.url("/stall"))
    assert raw.hits["/stall"] == 2  # the cut body was not stored
    assert "stopped sending the body for 1 s (read timeout); transfer cut" in proxy.log()


def test_origin_reset_mid_body_is_never_stored(
    start_proxy, origin: Origin, raw_origins: list[RawOrigin]
) -> None:
    body = pattern(4 * 1024**2, seed=3)

    def reset(head: bytes, sock: socket.socket) -> None:
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        sock.sendall(body[: len(body) // 2])
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # linger 0: a TCP reset, not a FIN

    raw = RawOrigin(reset)
    raw_origins.append(raw)
    proxy = start_proxy()
    for _ in range(2):
        with client(proxy) as c, pytest.raises(httpx.RemoteProtocolError):
            c.get(raw.url("/reset"))
    assert raw.hits["/reset"] == 2
    with client(proxy) as c:
        assert c.get(origin.url("/")).status_code == 200  # and the proxy serves on


def test_slow_client_is_no_read_timeout_and_nothing_piles_up(start_proxy, origin: Origin) -> None:
    """A client that stops reading holds the origin back through TCP (no unbounded buffering in the proxy),
    and the read timeout blames nobody: the origin waits on us, not we on it."""
    size = 48 * 1024**2
    body = pattern(size, seed=5)
    url = origin.route("/slow-reader", Reply(200, {"Cache-Control": "max-age=60"}, body))
    proxy = start_proxy("--read-timeout", "1")
    with client(proxy) as c:
        c.get(origin.url("/"))  # warm up
    idle = vm_kib(proxy.proc.pid, "VmRSS")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", proxy.port))
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    received = bytearray()
    while len(received) < 1024**2:
        received += sock.recv(65536)
    time.sleep(3)  # three read timeouts without reading a byte
    grown = vm_kib(proxy.proc.pid, "VmRSS") - idle
    while chunk := sock.recv(1024**2):
        received += chunk
    sock.close()
    head, _, got = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    assert grown < 24 * 1024, f"the proxy buffered {grown // 1024} MiB for a client that did not read"
    assert "read timeout" not in proxy.log()


def test_slow_origin_within_the_read_timeout_is_fine(start_proxy, origin: Origin) -> None:
    body = pattern(3 * 1024**2)
    url = origin.route(
        "/trickle",
        Reply(200, {"Cache-Control": "max-age=60"}, chunks=slow_chunks(body, delay=0.4), length=len(body)),
    )
    proxy = start_proxy("--read-timeout", "1")
    with client(proxy) as c:
        assert c.get(url).content == body  # 12 pauses of 0.4 s: 4.8 s in all, never 1 s of silence
        assert c.get(url).headers["Cache-Status"].startswith("fwdproxy; hit")
