"""Interim (1xx) responses from an origin (RFC 9110 §15.2): passed on or dropped, never taken for the final one."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from tests.support import Proxy, RawOrigin, client, h2_client

FINAL = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nfinal\n"
HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"


def origin(raw_origins: list[RawOrigin], *pieces: bytes, tls: ssl.SSLContext | None = None) -> RawOrigin:
    """A raw origin that sends ``pieces`` one by one, a moment apart (separate reads at the proxy)."""

    def send(head: bytes, sock: socket.socket) -> None:
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(0.05)
            sock.sendall(piece)

    raw = RawOrigin(send, tls=tls)
    raw_origins.append(raw)
    return raw


def exchange(proxy: Proxy, data: bytes, *, timeout: float = 10) -> bytes:
    """Send raw bytes to the proxy and read until it closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("split", [True, False], ids=["103 and 200 in separate reads", "in one read"])
def test_early_hints_then_final_response_is_served_and_cached(
    start_proxy, raw_origins: list[RawOrigin], split: bool
) -> None:
    raw = origin(raw_origins, HINTS, FINAL) if split else origin(raw_origins, HINTS + FINAL)
    proxy = start_proxy()
    with client(proxy) as c:
        first = c.get(raw.url("/page"))
        second = c.get(raw.url("/page"))
    assert first.status_code == second.status_code == 200
    assert first.content == second.content == b"final\n"
    assert "stored" in first.headers["Cache-Status"]
    assert second.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert "link" not in first.headers and "link" not in second.headers  # the 103's fields stay with the 103
    assert raw.hits["/page"] == 1


def test_the_final_response_keeps_its_own_link(start_proxy, raw_origins: list[RawOrigin]) -> None:
    final = FINAL.replace(b"Content-Type", b"Link: </final.js>; rel=preload\r\nContent-Type")
    raw = origin(raw_origins, HINTS, final)
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(raw.url("/own"))
        hit = c.get(raw.url("/own"))
    assert hit.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert hit.headers.get_list("link") == ["</final.js>; rel=preload"]


def test_http11_client_gets_the_hints_before_the_response(start_proxy, raw_origins: list[RawOrigin]) -> None:
    raw = origin(raw_origins, HINTS, b"HTTP/1.1 102 Processing\r\nConnection: keep-alive\r\n\r\n", FINAL)
    proxy = start_proxy()
    reply = exchange(
        proxy, f"GET {raw.url('/hints')} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    hints = reply.index(b"HTTP/1.1 103 Early Hints\r\n")
    processing = reply.index(b"HTTP/1.1 102 Processing\r\n")
    final = reply.index(b"HTTP/1.1 200 OK\r\n")
    assert hints < processing < final
    assert b"Link: </style.css>; rel=preload\r\n" in reply[hints:processing]
    assert b"keep-alive" not in reply[processing:final].lower()  # connection-specific: not forwarded
    assert reply.endswith(b"\r\n\r\nfinal\n")


def test_http10_client_gets_no_interim_response(start_proxy, raw_origins: list[RawOrigin]) -> None:
    raw = origin(raw_origins, HINTS, FINAL)
    proxy = start_proxy()
    reply = exchange(proxy, f"GET {raw.url('/old')} HTTP/1.0\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply  # §15.2: no 1xx to an HTTP/1.0 client
    assert b" 103 " not in reply and reply.endswith(b"final\n")


def test_unsolicited_100_continue_is_dropped(start_proxy, raw_origins: list[RawOrigin]) -> None:
    raw = origin(raw_origins, b"HTTP/1.1 100 Continue\r\n\r\n" + FINAL)
    proxy = start_proxy()
    reply = exchange(
        proxy, f"GET {raw.url('/cont')} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply
    assert b"100 Continue" not in reply and reply.endswith(b"final\n")
    with client(proxy) as c:
        hit = c.get(raw.url("/cont"))
    assert hit.headers["Cache-Status"].startswith("fwdproxy; hit") and hit.content == b"final\n"
    assert raw.hits["/cont"] == 1


def test_early_hints_to_an_http2_client(
    start_proxy, raw_origins: list[RawOrigin], origin_ca: trustme.CA, proxy_ca_file: Path
) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    raw = origin(raw_origins, HINTS, FINAL, tls=ctx)
    proxy = start_proxy("--connect-port", str(raw.port))
    url = raw.url("/h2", host="localhost")
    with h2_client(proxy, proxy_ca_file) as c:
        first = c.get(url)
        second = c.get(url)
    assert first.http_version == second.http_version == "HTTP/2"
    assert first.status_code == 200 and first.content == second.content == b"final\n"
    assert "link" not in first.headers and "link" not in second.headers
    assert second.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert raw.hits["/h2"] == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl with HTTP/2")
def test_http2_client_sees_the_early_hints(
    start_proxy, raw_origins: list[RawOrigin], origin_ca: trustme.CA, proxy_ca_file: Path
) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    raw = origin(raw_origins, HINTS, FINAL, tls=ctx)
    proxy = start_proxy("--connect-port", str(raw.port))
    url = raw.url("/curl", host="localhost")
    argv = ["curl", "-sv", "--http2", "-x", proxy.url, "--cacert", str(proxy_ca_file), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    heads = [line.strip() for line in out.stderr.splitlines() if line.startswith(("< HTTP/2", "< link"))]
    assert heads == ["< HTTP/2 103", "< link: </style.css>; rel=preload", "< HTTP/2 200"], out.stderr
    assert out.stdout == "final\n"
