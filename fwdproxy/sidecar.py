"""The sidecar: a loopback HTTP/1.1 server that sends an offered head and body once per one-time token.

mitmproxy cannot stream a body an addon makes (docs/mitmproxy-notes.md §4), but it streams origin
responses with flat memory. So for a big hit the cache `offer`s the response here and re-points the flow
at `http://127.0.0.1:<port>/<token>` with `response.stream = True`; collapsed followers of an in-flight
download get a GrowingBody that tails the leader's temp file. Callers run in the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from fwdproxy.bodysource import BodySource, Outcome

log = logging.getLogger("fwdproxy.sidecar")

MAX_REQUEST_HEAD = 64 * 1024
"""Bytes of request line and fields we read; mitmproxy forwards the client's fields, which rarely pass 8 KiB."""
IDLE_TIMEOUT = 300.0
"""Seconds a kept-alive connection may sit idle; mitmproxy reuses its sidecar connection per client
connection, and closing under it could race a new request, so this is generous."""
STALL_TIMEOUT = 120.0
"""Seconds a reader of a growing file waits without a byte of progress before it drops the connection."""


@dataclass(frozen=True, slots=True)
class SidecarStats:
    """Counters since start, for metrics."""

    bytes_sent: int
    """Head and body bytes handed to sockets."""
    transfers_active: int
    transfers_done: int
    """Transfers that sent their whole body (or a head for HEAD)."""
    transfers_failed: int
    """Transfers cut short: client gone, writer aborted or stalled, file short."""
    not_found: int
    """Requests with an unknown, used or expired token."""
    offers_pending: int


@dataclass(slots=True)
class _Offer:
    head: bytes
    source: BodySource | None
    close_after: bool
    """Close the connection after this response (the head says so, or its body is close-delimited)."""
    missing_body: bool
    """The head promises bytes but there is no source: a GET gets the head, then an abort."""
    expiry: asyncio.TimerHandle


class Sidecar:
    """A loopback file server for bodies mitmproxy should stream; see the module docstring."""

    def __init__(self, *, stall_timeout: float = STALL_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.stall_timeout = stall_timeout
        self.idle_timeout = idle_timeout
        self.port = 0
        """The bound port, after start()."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._offers: dict[str, _Offer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bytes_sent = 0
        self._active = 0
        self._done = 0
        self._failed = 0
        self._not_found = 0

    async def start(self) -> int:
        """Listen on 127.0.0.1 on an ephemeral port; returns the port."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MAX_REQUEST_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop listening, cut every transfer and close every offered file; later offers raise."""
        self._loop = None
        if self._server is not None:
            self._server.close()
        for token in list(self._offers):
            self.withdraw(token)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def offer(self, head: bytes, source: BodySource | None, *, ttl: float = 60) -> str:
        """Register a response for one GET or HEAD of `/<token>`; returns the token.

        `head` is the status line and fields, ending in CRLFCRLF, sent verbatim; with a body it must carry
        the body's Content-Length. The sidecar owns `source` from here on (even when this raises) and
        closes it after use, on withdraw, or `ttl` seconds later if nobody came.

        Raises:
            ValueError: a malformed head, a Content-Length that is not the body's length, bad parts.
            OSError: the body's file could not be opened.
            RuntimeError: the sidecar is not running.
        """
        loop = self._loop
        try:
            if loop is None:
                raise RuntimeError("Sidecar.offer() outside start() … close()")
            declared, close_after = _parse_head(head)
            if source is not None and declared != (length := source.open()):
                raise ValueError(f"the head declares Content-Length {declared}, the body has {length} bytes")
        except (RuntimeError, ValueError, TypeError, OSError):
            if source is not None:
                source.close()
            raise
        close_after = close_after or (source is None and declared is None)
        missing_body = source is None and declared not in (None, 0)
        token = secrets.token_urlsafe(16)  # 128 bits: other local users cannot guess a live one
        expiry = loop.call_later(ttl, self.withdraw, token)
        self._offers[token] = _Offer(head, source, close_after, missing_body, expiry)
        return token

    def withdraw(self, token: str) -> None:
        """Forget an unused offer and close its file; unknown tokens are ignored."""
        if (offer := self._offers.pop(token, None)) is not None:
            offer.expiry.cancel()
            if offer.source is not None:
                offer.source.close()

    @property
    def stats(self) -> SidecarStats:
        return SidecarStats(
            self._bytes_sent, self._active, self._done, self._failed, self._not_found, len(self._offers)
        )

    def _count(self, n: int) -> None:  # told every byte count handed to a socket
        self._bytes_sent += n

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not _is_loopback(peer):
            log.warning("sidecar: refused a connection from %s (loopback only)", peer)
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._one(reader, writer):
                pass
            writer.close()  # flushes a buffered 404 or 405 before the FIN
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            log.debug("sidecar: client %s went away: %r", peer, e)
        finally:
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.transport.abort()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; returns whether the connection may carry another."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise
            return False  # the client closed between requests: the ordinary end of a connection
        except TimeoutError:
            return False
        except asyncio.LimitOverrunError:
            await _error(writer, "431 Request Header Fields Too Large", "request head too large", False)
            return False
        request = _parse_request(raw)
        if request is None:
            await _error(writer, "400 Bad Request", "not an HTTP/1.x request", False)
            return False
        method, target, keep_alive = request
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await _error(
                writer, "405 Method Not Allowed", "only GET and HEAD", False, b"Allow: GET, HEAD\r\n"
            )
            return False
        offer = self._offers.pop(_token_of(target), None)
        if offer is None:
            self._not_found += 1
            await _error(writer, "404 Not Found", "unknown, used or expired token", head_only)
            return False
        offer.expiry.cancel()
        complete = await self._transfer(writer, offer, head_only)
        return complete and keep_alive and not offer.close_after

    async def _transfer(self, writer: asyncio.StreamWriter, offer: _Offer, head_only: bool) -> bool:
        """Send one offered response; returns whether it went out whole."""
        self._active += 1
        try:
            writer.write(offer.head)
            self._count(len(offer.head))
            if head_only:
                outcome = Outcome.COMPLETE
                await writer.drain()
            elif offer.source is not None:
                outcome = await offer.source.send(writer, self._count, self.stall_timeout)
            elif offer.missing_body:
                outcome = Outcome.SHORT
            else:
                outcome = Outcome.COMPLETE
                await writer.drain()
        except OSError as e:
            if not isinstance(e, ConnectionError):  # e.g. EIO reading the file; a reset is ordinary
                log.warning("sidecar: sending a body failed: %r", e)
            outcome = Outcome.GONE
        finally:
            self._active -= 1
            if offer.source is not None:
                offer.source.close()
        if outcome is Outcome.COMPLETE:
            self._done += 1
            return True
        self._failed += 1
        # The leader's abort and a client's reset are its own story; a short file or a stall is ours.
        level = logging.WARNING if outcome in (Outcome.SHORT, Outcome.STALLED) else logging.DEBUG
        log.log(level, "sidecar: transfer cut short (%s)", outcome.value)
        # Abort, never finish: the client sees fewer bytes than the Content-Length, a failed transfer.
        writer.transport.abort()
        return False


def response_head(status: int, reason: str, fields: Iterable[tuple[str, str]]) -> bytes:
    """An HTTP/1.1 status line and field block, ready for `offer` (e.g. from an `http_model.Headers`).

    Raises:
        ValueError: a CR, LF or NUL in a field, which would let a stored value split the response.
    """
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{name}: {value}" for name, value in fields]
    if any(c in line for line in lines for c in "\r\n\0"):
        raise ValueError("a header field contains CR, LF or NUL; strip it before offering the response")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def _parse_head(head: bytes) -> tuple[int | None, bool]:
    """The Content-Length a response head declares (None if it has none), and whether it says close."""
    if not head.startswith(b"HTTP/1.") or not head.endswith(b"\r\n\r\n"):
        raise ValueError("a sidecar head is an HTTP/1.x status line and fields ending in CRLFCRLF")
    length: int | None = None
    close = False
    for line in head[:-4].split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if not colon or not name:
            raise ValueError(f"malformed field line {line!r} in a sidecar head")
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise ValueError(f"bad Content-Length {value!r} in a sidecar head")
            length = int(value)
        elif name == b"transfer-encoding":
            raise ValueError("a sidecar body is framed by Content-Length, not Transfer-Encoding")
        elif name == b"connection" and b"close" in value.lower():
            close = True
    return length, close


def _parse_request(raw: bytes) -> tuple[str, str, bool] | None:
    """Method, target and whether the connection may be kept alive; None if it is not HTTP/1.x."""
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    keep_alive = parts[2] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"connection" and b"close" in value:
            keep_alive = False
        elif name == b"transfer-encoding" or (name == b"content-length" and value not in (b"0", b"")):
            keep_alive = False  # a request body we do not read must not be taken for the next request
    return parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace"), keep_alive


def _token_of(target: str) -> str:
    """The token in an origin-form target (`/<token>`) or an absolute-form one (upstream mode keeps that)."""
    if "://" in target:
        target = "/" + target.split("/", 3)[-1] if target.count("/") >= 3 else "/"
    return target.partition("?")[0].removeprefix("/")


async def _error(
    writer: asyncio.StreamWriter, status: str, why: str, head_only: bool, extra: bytes = b""
) -> None:
    body = f"sidecar: {status}: {why}\n".encode()
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"Connection: close\r\n\r\n"
        + (b"" if head_only else body)
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


def _is_loopback(peer: object) -> bool:
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return False
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False
