"""Raw HTTP/1.1 over sockets for the fast hit tests: plain to the proxy or inside an intercepted tunnel,
responses read by their framing so keep-alive and pipelined exchanges can be checked byte for byte."""

from __future__ import annotations

import json
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from tests.support import Proxy


@dataclass
class Answer:
    status: int
    reason: bytes
    fields: list[tuple[bytes, bytes]]
    body: bytes

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.fields if k.lower() == name.lower().encode()]
        return b", ".join(values).decode("latin-1") if values else None

    def comparable(self) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, float | None]:
        """What must be equal on both paths: Date dropped, Age and Cache-Status ttl values blanked (the two
        proxies stored their entries a moment apart), multipart boundaries named alike. The ttl comes back
        separately for a tolerance check."""
        ttl = None
        fields: list[tuple[bytes, bytes]] = []
        boundary = None
        for k, v in self.fields:
            lower = k.lower()
            if lower == b"date":
                continue
            if lower == b"age":
                v = b"*"
            if lower == b"cache-status":
                if (m := re.search(rb"ttl=(-?\d+)", v)) is not None:
                    ttl = float(m[1])
                v = re.sub(rb"ttl=-?\d+", b"ttl=*", v)
            if lower == b"content-type" and (m := re.search(rb"boundary=(\S+)", v)) is not None:
                boundary = m[1]
            fields.append((k, v))
        body = self.body
        if boundary is not None:
            fields = [(k, v.replace(boundary, b"BOUNDARY")) for k, v in fields]
            body = body.replace(boundary, b"BOUNDARY")
        return self.status, self.reason, fields, body, ttl


class Wire:
    """One client connection that sends raw bytes and reads framed responses."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def read(self, *, head: bool = False) -> Answer:
        """The next response (``head``: it answers a HEAD, so no body follows)."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a response head: {self.buf!r}")
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        line, *lines = raw.split(b"\r\n")
        _, status, reason = (line.split(b" ", 2) + [b""])[:3]
        fields = [tuple(x.strip() for x in f.split(b":", 1)) for f in lines]
        answer = Answer(int(status), reason, fields, b"")  # type: ignore[arg-type]
        if head or answer.status in (204, 304) or answer.status < 200:
            return answer
        length = answer.get("content-length")
        if length is None:
            while self._fill():
                pass
            answer.body, self.buf = self.buf, b""
            return answer
        while len(self.buf) < int(length):
            if not self._fill():
                raise ConnectionError("closed inside a body")
        answer.body, self.buf = self.buf[: int(length)], self.buf[int(length) :]
        return answer

    def exchange(self, request: bytes) -> Answer:
        self.send(request)
        return self.read(head=request.startswith(b"HEAD "))

    def closed(self, timeout: float = 5.0) -> bool:
        """Whether the proxy closes the connection (nothing more to read) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return not self._fill() and not self.buf
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plain(proxy: Proxy) -> Wire:
    return Wire(socket.create_connection((proxy.host, proxy.port), timeout=15))


def tunnel(proxy: Proxy, authority: str, ca: Path, *, alpn: str = "http/1.1", auth: str = "") -> Wire:
    """A connection inside ``CONNECT authority`` whose TLS the proxy terminates."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=15)
    extra = f"Proxy-Authorization: {auth}\r\n" if auth else ""
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and (chunk := sock.recv(4096)):
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.set_alpn_protocols([alpn])
    return Wire(ctx.wrap_socket(sock, server_hostname="localhost"))


def get(
    url: str, *extra: str, method: str = "GET", target: str | None = None, host: str | None = None
) -> bytes:
    """A request head for ``url`` (absolute-form unless ``target`` is given) with extra header lines."""
    authority = url.split("/")[2]
    lines = [f"{method} {target or url} HTTP/1.1", f"Host: {host or authority}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def stats(proxy: Proxy, *extra: str) -> dict[str, object]:
    """The status page's JSON, fetched through the proxy (http://fwdproxy.local/ never takes the fast path)."""
    with plain(proxy) as w:
        answer = w.exchange(get("http://fwdproxy.local/stats.json", *extra))
    assert answer.status == 200, answer
    return dict(json.loads(answer.body))
