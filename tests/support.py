"""Test support: scripted local origins that count requests, and the real proxy as a subprocess."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Recorded:
    """One request as the origin received it."""

    method: str
    path: str
    headers: dict[str, str]
    header_list: list[tuple[str, str]]
    body: bytes


@dataclass
class Reply:
    """A scripted response. ``chunks`` (with ``length``) streams a body piece by piece instead of ``body``;
    ``abort_after`` cuts the connection after that many body bytes, like an origin that died."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: Callable[[], Iterable[bytes]] | None = None
    length: int | None = None
    abort_after: int | None = None


Handler = Callable[[Recorded], Reply]


class Origin:
    """An HTTP/1.1 origin on 127.0.0.1 (TLS when given a context) serving scripted replies and counting hits."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Handler | Reply] = {}
        self.hits: Counter[str] = Counter()
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        origin = self

        self.connections: set[socket.socket] = set()

        class _Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                origin.connections.add(self.connection)

            def finish(self) -> None:
                origin.connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def handle(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    super().handle()  # a client (or the proxy) that hangs up early is part of many tests

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rec = Recorded(
                    self.command, self.path, dict(self.headers.items()), list(self.headers.items()), body
                )
                with origin.lock:
                    origin.hits[self.path] += 1
                    origin.requests.append(rec)
                route = origin.routes.get(self.path) or origin.routes.get(self.path.split("?")[0])
                if route is None:
                    reply = Reply(404, {"Content-Type": "text/plain"}, b"no such route\n")
                elif isinstance(route, Reply):
                    reply = route
                else:
                    reply = route(rec)
                self.send_response(reply.status)
                names = {k.lower() for k in reply.headers}
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                if "content-length" not in names and "transfer-encoding" not in names:
                    size = reply.length if reply.chunks is not None else len(reply.body)
                    self.send_header("Content-Length", str(size))
                self.end_headers()
                if self.command == "HEAD":
                    return
                pieces = reply.chunks() if reply.chunks is not None else [reply.body]
                sent = 0
                for piece in pieces:
                    if reply.abort_after is not None and sent + len(piece) > reply.abort_after:
                        self.wfile.write(piece[: reply.abort_after - sent])
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    self.wfile.write(piece)
                    sent += len(piece)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.route("/", Reply(200, {"Content-Type": "text/plain"}, b"hello from origin\n"))
        self.route(
            "/echo",
            lambda r: Reply(200, {"Content-Type": "application/json"}, json.dumps(r.header_list).encode()),
        )

    def route(self, path: str, reply: Handler | Reply) -> str:
        """Serve ``reply`` at ``path``; returns the full URL."""
        self.routes[path] = reply
        return self.url(path)

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        """Stop listening and cut every open connection, like an origin that went down."""
        self.server.shutdown()
        self.server.server_close()
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class Proxy:
    """The real proxy in a subprocess; ``port`` is read from its ``listening at`` line."""

    def __init__(self, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.stderr_path = workdir / f"proxy-{time.monotonic_ns()}.log"
        self._stderr = open(self.stderr_path, "wb")
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        self.host, self.port = self._wait_listening(timeout=30)
        self.url = f"http://{self.host}:{self.port}"

    def _wait_listening(self, timeout: float) -> tuple[str, int]:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                if self.proc.poll() is not None:
                    break
                continue
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if "error in script" in line.lower() or "error logged during startup" in line.lower():
                    raise RuntimeError(f"proxy failed to start: {line}\n{self.log()}")
                if "fwdproxy listening at " in line:
                    hostport = line.split("fwdproxy listening at ", 1)[1].strip()
                    host, _, port = hostport.rpartition(":")
                    threading.Thread(target=self._drain, daemon=True).start()
                    return host, int(port)
        self.stop()
        raise RuntimeError(
            f"proxy did not start: {self.argv}\nstdout: {buf.decode(errors='replace')}\n{self.log()}"
        )

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            while self.proc.stdout.read(65536):
                pass

    def log(self) -> str:
        if not self._stderr.closed:  # stop() closed it: the file has everything already
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int | None = None) -> int | None:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


def fwdproxy_argv(*args: str) -> list[str]:
    """Command line of ``fwdproxy`` run from this checkout's interpreter."""
    return [sys.executable, "-m", "fwdproxy.cli", *args]


def mitmdump_argv(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "mitmdump"), *args]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fwdproxy_argv(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO)


@contextlib.contextmanager
def stalled_listener() -> Iterator[int]:
    """A loopback port whose accept queue is full, so new connections hang (to test connect timeouts)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the backlog; later SYNs are dropped and connect() waits
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        yield port
    finally:
        for s in fillers:
            s.close()
        srv.close()


def client(proxy: Proxy, verify: Path | bool = True, **kw: object) -> httpx.Client:
    """An httpx client that goes through ``proxy`` and trusts ``verify`` (a CA file)."""
    ctx: ssl.SSLContext | bool
    if isinstance(verify, Path):
        ctx = ssl.create_default_context(cafile=str(verify))
    else:
        ctx = verify
    return httpx.Client(proxy=proxy.url, verify=ctx, trust_env=False, timeout=30, **kw)  # type: ignore[arg-type]


class _H2First(ssl.SSLContext):
    """httpx offers ALPN ["http/1.1", "h2"] and the proxy honours the client's order: put h2 first."""

    def set_alpn_protocols(self, protocols: Iterable[str]) -> None:
        super().set_alpn_protocols(sorted(protocols, key=lambda p: p != "h2"))


def h2_client(proxy: Proxy, verify: Path) -> httpx.Client:
    """An httpx client that goes through ``proxy`` and speaks HTTP/2 inside intercepted HTTPS tunnels."""
    ctx = _H2First(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(verify))
    return httpx.Client(proxy=proxy.url, verify=ctx, trust_env=False, timeout=30, http2=True)


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking test bytes (so a misplaced chunk is caught)."""
    block = bytes((i * 131 + seed) % 251 for i in range(65536))
    return (block * (size // len(block) + 1))[:size]


def slow_chunks(body: bytes, chunk: int = 256 * 1024, delay: float = 0.01) -> Callable[[], Iterator[bytes]]:
    """A chunks= callable that trickles ``body`` out, so requests overlap while it is in flight."""

    def gen() -> Iterator[bytes]:
        for i in range(0, len(body), chunk):
            time.sleep(delay)
            yield body[i : i + chunk]

    return gen


class RawOrigin:
    """A TCP origin whose ``handler(head, sock)`` writes whatever bytes it likes (framing no real server would
    send, resets, silence); counts requests per path. ``stop()`` closes everything still open."""

    def __init__(
        self, handler: Callable[[bytes, socket.socket], None], tls: ssl.SSLContext | None = None
    ) -> None:
        self.handler = handler
        self.tls = tls
        self.hits: Counter[str] = Counter()
        self.accepts = 0
        """Accepted TCP connections that carried a request (each carries one: a reused one would hang)."""
        self.open: list[socket.socket] = []
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        with contextlib.suppress(OSError):
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                self.open.append(conn)
            while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                head += chunk
            if head:
                self.accepts += 1
                path = head.split(b" ", 2)[1].decode(errors="replace")
                self.hits[path.split("?")[0]] += 1
                self.handler(head, conn)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.srv.close()
        for conn in self.open:
            with contextlib.suppress(OSError):
                conn.close()
