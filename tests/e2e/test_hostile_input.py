"""Hostile and broken input, end to end (issue 9, point 1): the proxy answers clearly, never crashes, and never
stores or serves a wrong byte."""

from __future__ import annotations

import gzip
import socket
import time
from pathlib import Path

from tests.support import Origin, Proxy, RawOrigin, Recorded, Reply, client


def exchange(proxy: Proxy, data: bytes, *, timeout: float = 10) -> bytes:
    """Send raw bytes to the proxy and read until it closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_request_head_over_64_kib_is_431_and_the_proxy_serves_on(start_proxy, origin: Origin) -> None:
    proxy = start_proxy()
    target = origin.url("/")
    one_huge_field = (
        f"GET {target} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode() + b"a" * (1024 * 1024) + b"\r\n\r\n"
    )
    reply = exchange(proxy, one_huge_field)
    assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), reply[:200]
    assert reply.endswith(b"fwdproxy: the request head exceeds 64 KiB (start line and header fields)\n")
    assert origin.hits["/"] == 0

    # A head that never ends: refused once past the limit, then the connection is dropped after at most
    # 1 MiB more, however long the client keeps sending.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\n".encode())
        sent, closed = 0, False
        try:
            while sent < 16 * 1024**2:
                sock.sendall(b"X-More: " + b"b" * 8000 + b"\r\n")
                sent += 8010
        except OSError:
            closed = True
        assert closed, "the proxy kept reading an endless head"
    with client(proxy) as c:
        assert c.get(target).status_code == 200
    assert "request head exceeds 64 KiB" in proxy.log()


def test_too_many_fields_is_431_and_two_hosts_400(start_proxy, origin: Origin) -> None:
    proxy = start_proxy()
    target = origin.url("/echo")
    fields = "".join(f"X-F{i}: v\r\n" for i in range(300))  # 3 KiB: within the byte limit
    reply = exchange(proxy, f"GET {target} HTTP/1.1\r\nHost: x\r\n{fields}\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b"fwdproxy: the request has 301 header fields; at most 256 are accepted\n" in reply
    reply = exchange(
        proxy,
        f"GET {target} HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"the request has 2 Host fields; send exactly one" in reply
    assert origin.hits["/echo"] == 0


def test_response_head_over_64_kib_is_a_plain_502(start_proxy, raw_origins: list[RawOrigin]) -> None:
    def huge_head(head: bytes, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n")
        for _ in range(200):
            sock.sendall(b"X-Junk: " + b"j" * 1000 + b"\r\n")  # never ends the head within 64 KiB

    raw = RawOrigin(huge_head)
    raw_origins.append(raw)
    proxy = start_proxy()
    with client(proxy) as c:
        r = c.get(raw.url("/big-head"))
    assert r.status_code == 502
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "the response head exceeds 64 KiB" in r.text and f"127.0.0.1:{raw.port}" in r.text


def test_absolute_url_wins_over_host(start_proxy, origin: Origin) -> None:
    """RFC 9112 §3.2.2: the origin sees the URL's authority, so a Host field cannot put one site's page under
    another site's URL in the shared cache."""

    def virtual_hosts(req: Recorded) -> Reply:  # like a server hosting several sites on one address
        return Reply(200, {"Cache-Control": "max-age=60"}, f"site {req.headers.get('Host')}\n".encode())

    url = origin.route("/vhost", virtual_hosts)
    proxy = start_proxy()
    poison = f"GET {url} HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n".encode()
    reply = exchange(proxy, poison)
    assert reply.endswith(f"site 127.0.0.1:{origin.port}\n".encode()), reply
    with client(proxy) as c:
        victim = c.get(url)
    assert victim.text == f"site 127.0.0.1:{origin.port}\n"
    assert victim.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert [r.headers["Host"] for r in origin.requests] == [f"127.0.0.1:{origin.port}"]


def test_body_longer_than_content_length_is_stored_as_framed_on_a_fresh_connection(
    start_proxy, raw_origins: list[RawOrigin]
) -> None:
    """RFC 9112 §6.3: the first Content-Length bytes are the whole message; the rest is dropped with the
    connection, so it never becomes the next request's response."""

    def too_long(head: bytes, sock: socket.socket) -> None:
        if b" /long " in head:
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\n"
                b"helloHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
            )
        else:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nright")

    raw = RawOrigin(too_long)
    raw_origins.append(raw)
    proxy = start_proxy()
    with client(proxy) as c:  # one client connection: the proxy would reuse its origin connection if it could
        first = c.get(raw.url("/long"))
        other = c.get(raw.url("/other"))
        second = c.get(raw.url("/long"))
    assert first.content == second.content == b"hello"
    assert "stored" in first.headers["Cache-Status"]
    assert (
        second.headers["Cache-Status"].startswith("fwdproxy; hit") and second.headers["Content-Length"] == "5"
    )
    assert other.content == b"right"  # not the "smuggled" tail of /long
    assert raw.hits["/long"] == 1 and raw.hits["/other"] == 1
    assert raw.accepts == 2  # /other went over a new connection
    assert "more bytes than its framing announced" in proxy.log()
    assert "Unexpected data from server" not in proxy.log()


def test_junk_after_the_last_chunk_is_dropped_with_the_connection(
    start_proxy, raw_origins: list[RawOrigin]
) -> None:
    def junk(head: bytes, sock: socket.socket) -> None:
        if b" /chunked " in head:
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\njunk"
            )
        else:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nright")

    raw = RawOrigin(junk)
    raw_origins.append(raw)
    proxy = start_proxy()
    with client(proxy) as c:
        first = c.get(raw.url("/chunked"))
        other = c.get(raw.url("/other"))
        again = c.get(raw.url("/chunked"))
    assert first.content == again.content == b"hello"
    assert other.content == b"right"
    assert again.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert raw.accepts == 2 and raw.hits["/chunked"] == 1


def test_body_shorter_than_content_length_is_never_stored(start_proxy, raw_origins: list[RawOrigin]) -> None:
    def too_short(head: bytes, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 100\r\n\r\nonly this")
        sock.close()

    raw = RawOrigin(too_short)
    raw_origins.append(raw)
    proxy = start_proxy()
    with client(proxy) as c:
        first = c.get(raw.url("/short"))  # small: buffered, so the client gets a clean 502 instead
        second = c.get(raw.url("/short"))
    assert first.status_code == second.status_code == 502
    assert "received 9 bytes, expected 100" in first.text
    assert raw.hits["/short"] == 2


def test_compressed_bodies_are_stored_and_served_as_received(start_proxy, origin: Origin) -> None:
    """No decompression anywhere: a 256 MiB gzip bomb stays 256 KiB of gzip in, on disk and out."""
    bomb = gzip.compress(b"\0" * (256 * 1024**2), compresslevel=9)
    url = origin.route(
        "/bomb",
        Reply(
            200,
            {"Cache-Control": "max-age=60", "Content-Encoding": "gzip", "Content-Type": "text/plain"},
            bomb,
        ),
    )
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(origin.url("/"))  # warm up
        idle = rss_kib(proxy.proc.pid)
        bodies = []
        for _ in range(2):
            with c.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as r:
                bodies.append(
                    (b"".join(r.iter_raw()), r.headers["Content-Encoding"], r.headers["Content-Length"])
                )
                status = r.headers["Cache-Status"]
    assert bodies == [(bomb, "gzip", str(len(bomb)))] * 2
    assert status.startswith("fwdproxy; hit")
    assert origin.hits["/bomb"] == 1
    assert rss_kib(proxy.proc.pid) - idle < 64 * 1024, "the proxy inflated the body"


HOSTILE = [
    # (response headers, whether the second GET is a hit)
    ({"Cache-Control": "max-age=99999999999999999999"}, True),  # huge: saturates, still fresh
    ({"Cache-Control": 'max-age="60"'}, True),  # quoted
    ({"Cache-Control": "MAX-AGE=60, No-Store"}, False),  # contradictory: no-store wins
    ({"Cache-Control": "public, private, max-age=60"}, False),  # contradictory: private wins
    ({"Cache-Control": "max-age=60, max-age=0"}, False),  # duplicated: the smaller
    ({"Cache-Control": "max-age=-60"}, False),  # negative: stale
    ({"Cache-Control": "max-age=6 0, =, ,,, " + "x" * 8000 + ", max-age=60"}, False),  # malformed member
    ({"Cache-Control": "junk=" + "y" * 20000 + ", max-age=60"}, True),  # huge unknown directive ignored
    ({"Expires": "Thu, 18-Aug-2050 02:01:18 GMT"}, False),  # invalid date: already expired
    ({"Expires": "0", "Last-Modified": "garbage"}, False),
    ({"Date": "yesterday", "Cache-Control": "max-age=60"}, True),  # bad Date: the receipt time stands in
    ({"Cache-Control": "max-age=60", "Age": "abc"}, True),  # garbage Age ignored
    ({"Cache-Control": "max-age=60", "Age": "2147483648"}, False),  # very old, not an overflow
    ({"Cache-Control": "max-age=60", "Vary": "*"}, False),
    ({"Cache-Control": "max-age=60", "Vary": ", ".join(f"X-V{i}" for i in range(2000))}, True),  # long Vary
]


def test_hostile_cache_headers_never_break_the_proxy(start_proxy, origin: Origin) -> None:
    urls = [
        origin.route(f"/h{i}", Reply(200, {"Content-Type": "text/plain", **headers}, f"body {i}\n".encode()))
        for i, (headers, _) in enumerate(HOSTILE)
    ]
    proxy = start_proxy()
    with client(proxy) as c:
        for i, (url, (headers, hit)) in enumerate(zip(urls, HOSTILE, strict=True)):
            first, second = c.get(url), c.get(url)
            assert first.status_code == second.status_code == 200, (headers, first.text)
            assert first.text == second.text == f"body {i}\n"
            assert second.headers["Cache-Status"].startswith("fwdproxy; hit") is hit, (
                headers,
                second.headers,
            )
            assert origin.hits[f"/h{i}"] == (1 if hit else 2), headers
    time.sleep(0.1)
    assert "Traceback" not in proxy.log() and "Addon error" not in proxy.log()
