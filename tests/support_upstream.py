"""A small threaded forward proxy for tests: it counts and tags what it forwards, and can be slow or dead."""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import ipaddress
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


def resolve(host: str) -> str | None:
    """Test DNS: ``*.test`` and ``localhost`` are 127.0.0.1, loopback addresses are themselves, the rest
    does not exist (tests never leave 127.0.0.0/8)."""
    if host == "localhost" or host.endswith(".test"):
        return "127.0.0.1"
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return host
    return None


@dataclass
class Seen:
    """One request as the upstream proxy received it."""

    line: str
    """The request line, e.g. ``GET http://a.test:8080/x HTTP/1.1`` or ``CONNECT localhost:443 HTTP/1.1``."""
    method: str
    host: str
    """The target host (from the absolute URL or the CONNECT authority)."""
    proxy_authorization: str | None
    client: str
    """The address the request came from."""


class UpstreamProxy:
    """A forward proxy on 127.0.0.1 for absolute-form requests and CONNECT, tagging responses ``X-Upstream``.

    ``delay`` seconds pass before each answer (a slow member); ``credentials`` (user, password) make it
    demand Basic ``Proxy-Authorization`` and answer 407 without it; ``port`` revives a :func:`dead_port`;
    ``tls`` (a server context) makes it an ``https://`` proxy: TLS from the client to it, then the same
    absolute-form requests and CONNECTs inside (a CONNECT's tunnel carries the origin's TLS inside ours).
    """

    def __init__(
        self,
        name: str,
        delay: float = 0.0,
        credentials: tuple[str, str] | None = None,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.tls = tls
        self.handshakes = 0
        """TLS handshakes completed with clients (``tls`` only)."""
        self.delay = delay
        self.expected = (
            None
            if credentials is None
            else "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        )
        self.seen: list[Seen] = []
        self.accepted = 0
        """Connections accepted (probes included)."""
        self.carrying: set[int] = set()
        """Numbers of the accepted connections that carried at least one request."""
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                with proxy.lock:
                    proxy.accepted += 1
                    self.number = proxy.accepted
                if proxy.tls is not None:
                    # In the handler's thread: a failed handshake ends this connection only.
                    self.request = proxy.tls.wrap_socket(self.request, server_side=True)
                    with proxy.lock:
                        proxy.handshakes += 1
                super().setup()

            def _record(self, host: str) -> bool:
                auth = self.headers.get("Proxy-Authorization")
                with proxy.lock:
                    proxy.carrying.add(self.number)
                    proxy.seen.append(
                        Seen(self.requestline, self.command, host, auth, self.client_address[0])
                    )
                if proxy.expected is not None and auth != proxy.expected:
                    self._answer(407, b"proxy authentication required\n", {"Proxy-Authenticate": "Basic"})
                    return False
                if proxy.delay:
                    time.sleep(proxy.delay)
                return True

            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("X-Upstream", proxy.name)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _own_error(self, status: int, error: str) -> None:
                # RFC 9209: the proxy says the failure is its own.
                self._answer(
                    status,
                    f"{proxy.name}: {error}\n".encode(),
                    {"Proxy-Status": f"{proxy.name}; error={error}"},
                )

            def _forward(self) -> None:
                target = urlsplit(self.path)
                if target.scheme != "http" or not target.hostname:
                    self.close_connection = True
                    self._answer(400, b"absolute-form http:// requests only\n")
                    return
                if not self._record(target.hostname):
                    return
                address = resolve(target.hostname)
                if address is None:
                    self._own_error(502, "dns_error")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn = http.client.HTTPConnection(address, target.port or 80, timeout=10)
                try:
                    path = target.path or "/"
                    conn.request(
                        self.command, path + (f"?{target.query}" if target.query else ""), body, headers
                    )
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError:
                    self._own_error(502, "connection_refused")
                    return
                finally:
                    conn.close()
                fields = {
                    k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP | {"content-length"}
                }
                self._answer(resp.status, data if self.command != "HEAD" else b"", fields)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _forward

            def do_CONNECT(self) -> None:
                host, _, port = self.path.rpartition(":")
                host = host.strip("[]")
                if not self._record(host):
                    return
                address = resolve(host)
                try:
                    if address is None or not port.isdigit():
                        raise OSError("unknown host")
                    upstream = socket.create_connection((address, int(port)), timeout=10)
                except OSError:
                    self._own_error(502, "connection_refused")
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                _relay(self.connection, upstream)

        self.server = _Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://{'localhost' if tls else '127.0.0.1'}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, host: str | None = None, method: str | None = None) -> int:
        """Requests received (for ``host``, and of ``method``, when given)."""
        with self.lock:
            return sum(
                1
                for s in self.seen
                if (host is None or s.host == host) and (method is None or s.method == method)
            )

    def requests(self, host: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.host == host]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a refused TLS handshake or a client leaving: the tests look at what was counted


def dead_port() -> int:
    """A loopback port nothing listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    try:
        a.settimeout(None)
        b.settimeout(None)
        while True:
            # Bytes already decrypted by an SSL socket are not visible to select().
            pending = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
            ready = pending or select.select([a, b], [], [], 30)[0]
            if not ready:
                return
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                (b if src is a else a).sendall(data)
    except OSError:
        return
    finally:
        b.close()
