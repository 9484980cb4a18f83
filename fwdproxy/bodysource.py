"""Which bytes follow a sidecar head, and how they reach the socket: file slices by sendfile, literal parts.

A body is a list of parts: literal bytes (multipart delimiters) and slices of a file, either a complete
stored body (`FileBody`) or a temp file another task is still writing (`GrowingBody`, tracked by a
`Progress`). Slices go out with sendfile, zero-copy and only as fast as the socket takes them, so memory
stays flat.

A complete file's slices go out in blocking `os.sendfile` calls of up to `SEND_CHUNK` bytes on a small
pool of sender threads: the kernel then moves a whole chunk with one hand-over of the GIL, where
asyncio's `loop.sendfile` wakes the event loop (a selector change, a callback) every time the socket
buffer fills. On loopback at 500 MiB/s that bookkeeping sat on the proxy's own core and cost about a
tenth of a big hit's speed. A client that takes nothing for `SEND_TIMEOUT` seconds is handed back to
`loop.sendfile`, which waits for it without holding a thread, and while every sender is busy (slow
clients hold theirs for a chunk) a transfer goes on with `loop.sendfile` rather than queue for one.
Growing files, sockets without sendfile and a socket with bytes still buffered use `loop.sendfile` (or
asyncio's read/write fallback) throughout; uvloop (fwdproxy.loops) has no `loop.sendfile`, so there those
pieces are read and written through memory, `COPY_PIECE` at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import BinaryIO, NamedTuple

from fwdproxy.ranges import ByteRange

SEND_CHUNK = 8 * 1024 * 1024
"""Most bytes one blocking sendfile call moves: a slow client holds a sender thread only that long."""
SEND_TIMEOUT = 1.0
"""Seconds a blocking sendfile waits on a client that takes nothing before the loop takes over the wait."""
SENDERS = 32
"""Sender threads at most; a transfer that finds them all busy uses the loop meanwhile, never a queue."""
LOOP_PIECE = 64 * 1024
"""Bytes a transfer sends with `loop.sendfile` before it looks for a free sender again."""
COPY_PIECE = 256 * 1024
"""Bytes one read-and-write moves where the loop has no `loop.sendfile` (uvloop): memory stays flat."""


class _Senders:
    """The sender threads and how many are busy (counted on the loop's side: submitted, not yet done)."""

    def __init__(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=SENDERS, thread_name_prefix="fwdproxy-sendfile"
        )
        self.busy = 0

    def free(self) -> bool:
        return self.busy < SENDERS

    def done(self, _job: object) -> None:
        self.busy -= 1


_senders = _Senders()


class Slice(NamedTuple):
    """`length` bytes of the file from `offset`."""

    offset: int
    length: int


Part = bytes | ByteRange | Slice
"""A body part: literal bytes, a ByteRange (inclusive, as `ranges.PartialBody.parts` has them) or a Slice."""
FileRef = BinaryIO | int | str | os.PathLike[str]
"""A file object opened in binary mode, a descriptor, or a path; the body owns and closes the first two."""


class Outcome(enum.Enum):
    """How a transfer ended; `send` raises OSError instead of returning GONE."""

    COMPLETE = "complete"
    ABORTED = "aborted"
    """The writer of a growing file gave up (origin aborted)."""
    SHORT = "short"
    """The file ended before a slice did."""
    STALLED = "stalled"
    """A growing file made no progress for the stall timeout."""
    GONE = "gone"
    """The client went away or the file could not be read."""


class Progress:
    """How much of a growing file is written; its writer calls `advance`/`finish` from the loop's thread.

    Both are plain calls (the stream tee is synchronous) and cost an int compare when nobody waits.
    """

    __slots__ = ("_waiters", "available", "done", "length", "ok")

    def __init__(self, length: int | None = None) -> None:
        self.length = length
        """The body's final size when known (Content-Length): a GrowingBody without parts sends that much."""
        self.available = 0
        """Bytes from offset 0 that are in the file (written to the OS, not in a Python buffer)."""
        self.done = False
        self.ok = False
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def failed(self) -> bool:
        return self.done and not self.ok

    def advance(self, available: int) -> None:
        """The file now holds `available` bytes in total (not an increment); smaller values are ignored."""
        if available > self.available:
            self.available = available
            if self._waiters:
                self._wake()

    def finish(self, ok: bool) -> None:
        """The writer is done: ok=False (origin aborted) makes readers drop their connections unfinished."""
        if not self.done:
            self.done, self.ok = True, ok
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self) -> None:
        """Return at the next advance or finish."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut


Count = Callable[[int], None]
"""Told every number of body bytes handed to the socket (for statistics)."""


class FileBody:
    """Parts of a complete file (the whole file when `parts` is None)."""

    threaded = True
    """Send with blocking sendfile on a sender thread (a complete file: its bytes never wait)."""

    def __init__(self, file: FileRef, parts: Sequence[Part] | None = None) -> None:
        self._ref: FileRef | None = file
        self._parts = parts
        self._file: BinaryIO | None = None
        self._spans: list[bytes | Slice] = []

    def open(self) -> int:
        """Open the file and check the parts against its size; returns the body's length.

        Raises:
            ValueError, TypeError: parts that are not bytes/ByteRange/Slice or reach past the file's end.
            OSError: the file could not be opened.
        """
        self._file = _open(self._take_ref())
        size = os.fstat(self._file.fileno()).st_size
        self._spans = _spans(self._parts, size)
        for span in self._spans:
            if isinstance(span, Slice) and span.offset + span.length > size:
                raise ValueError(f"slice {span} reaches past the end of a {size}-byte file")
        return _total(self._spans)

    def _take_ref(self) -> FileRef:
        ref, self._ref = self._ref, None
        if ref is None:
            raise RuntimeError("a body source can be opened once")
        return ref

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif isinstance(self._ref, int):
            os.close(self._ref)
        elif self._ref is not None and not isinstance(self._ref, (str, os.PathLike)):
            self._ref.close()
        self._ref = None

    async def send(self, writer: asyncio.StreamWriter, count: Count, stall_timeout: float) -> Outcome:
        """Write every part; the caller closes the body afterwards."""
        assert self._file is not None, "open() first"
        for span in self._spans:
            if isinstance(span, bytes):
                await _write(writer, span, count)
                continue
            offset, end = span.offset, span.offset + span.length
            while offset < end:
                ready = await self._ready(offset, end, stall_timeout)
                if isinstance(ready, Outcome):
                    return ready
                sent = await _sendfile(writer, self._file, offset, ready - offset, threaded=self.threaded)
                count(sent)
                if sent == 0:
                    # Truncated under us, or the writer counted bytes the file does not have: a short body
                    # must not look complete.
                    return Outcome.SHORT
                offset += sent
        return Outcome.COMPLETE

    async def _ready(self, offset: int, end: int, stall_timeout: float) -> int | Outcome:
        """How far from ``offset`` (up to ``end``) the file holds the body: a complete file, all of it."""
        return end


class GrowingBody(FileBody):
    """Parts of a file another task is writing; a slice waits for its bytes (whole body: `progress.length`)."""

    threaded = False
    """Sent on the loop: it waits for the writer between pieces."""

    def __init__(self, file: FileRef, progress: Progress, parts: Sequence[Part] | None = None) -> None:
        super().__init__(file, parts)
        self.progress = progress

    def open(self) -> int:
        self._file = _open(self._take_ref())
        if self._parts is None and self.progress.length is None:
            raise ValueError("a GrowingBody without parts needs Progress(length=...)")
        self._spans = _spans(self._parts, self.progress.length or 0)
        limit = self.progress.length
        for span in self._spans:
            if limit is not None and isinstance(span, Slice) and span.offset + span.length > limit:
                raise ValueError(f"slice {span} reaches past the end of a {limit}-byte body")
        return _total(self._spans)

    async def _ready(self, offset: int, end: int, stall_timeout: float) -> int | Outcome:
        """Wait until the writer has put bytes past ``offset`` in the file; how far they reach, or how the
        body ended without them."""
        progress = self.progress
        while True:
            if progress.failed:
                return Outcome.ABORTED
            if progress.available > offset:
                return min(progress.available, end)
            if progress.done:
                return Outcome.SHORT
            try:
                async with asyncio.timeout(stall_timeout):
                    await progress.wait()
            except TimeoutError:
                return Outcome.STALLED


BodySource = FileBody | GrowingBody


def _open(ref: FileRef) -> BinaryIO:
    if isinstance(ref, int):
        return open(ref, "rb", buffering=0)
    if isinstance(ref, (str, os.PathLike)):
        return open(ref, "rb", buffering=0)
    return ref


def _spans(parts: Sequence[Part] | None, size: int) -> list[bytes | Slice]:
    """The parts as literal bytes and (offset, length) slices, empty ones dropped."""
    if parts is None:
        return [Slice(0, size)] if size else []
    spans: list[bytes | Slice] = []
    for part in parts:
        if isinstance(part, bytes):
            span: bytes | Slice = part
        elif isinstance(part, ByteRange):
            span = Slice(part.start, part.size)
        elif isinstance(part, Slice):
            span = part
        else:
            raise TypeError(f"body part {part!r} is not bytes, ByteRange or Slice")
        if isinstance(span, Slice) and (span.offset < 0 or span.length < 0):
            raise ValueError(f"body part {part!r} has a negative offset or length")
        if len(span) if isinstance(span, bytes) else span.length:
            spans.append(span)
    return spans


def _total(spans: list[bytes | Slice]) -> int:
    return sum(len(s) if isinstance(s, bytes) else s.length for s in spans)


async def _write(writer: asyncio.StreamWriter, data: bytes, count: Count) -> None:
    writer.write(data)
    await writer.drain()
    count(len(data))


async def _sendfile(
    writer: asyncio.StreamWriter, file: BinaryIO, offset: int, count: int, *, threaded: bool = False
) -> int:
    """Send up to `count` bytes from `offset`, at least one unless the file ends there (then 0).

    `threaded`: try a blocking sendfile on a sender thread first (see the module docstring).
    """
    transport = writer.transport
    if transport.is_closing():  # loop.sendfile would raise RuntimeError
        raise ConnectionResetError("the client closed the connection")
    if threaded:
        if _senders.free() and (sock := _blockable(transport)) is not None:
            sent = await _send_on_thread(transport, sock, file, offset, min(count, SEND_CHUNK))
            if sent is not None:
                return sent
        # The client took nothing for SEND_TIMEOUT or every sender is busy: a piece on the loop, then again.
        count = min(count, LOOP_PIECE)
    # asyncio's read/write fallback seeks only when offset is non-zero, so a slice at 0 that follows
    # another would start at the file position: always put the position where the slice starts.
    file.seek(offset)
    loop = asyncio.get_running_loop()
    try:
        return await loop.sendfile(transport, file, offset, count)
    except NotImplementedError:  # uvloop has no loop.sendfile (fwdproxy.loops): copy a piece through memory
        return await _copy(writer, file, offset, min(count, COPY_PIECE))


async def _copy(writer: asyncio.StreamWriter, file: BinaryIO, offset: int, count: int) -> int:
    """`loop.sendfile`'s stand-in on loops without it: one read of the file, written and drained."""
    data = os.pread(file.fileno(), count, offset)
    if data:
        writer.write(data)
        await writer.drain()
    return len(data)


def _blockable(transport: asyncio.WriteTransport) -> socket.socket | None:
    """The transport's socket, if a sender thread may write to it now: plain TCP, nothing buffered."""
    if not hasattr(os, "sendfile") or transport.get_write_buffer_size():
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("sslcontext") is not None or sock.type != socket.SOCK_STREAM:
        return None
    return sock  # type: ignore[no-any-return]


async def _send_on_thread(
    transport: asyncio.WriteTransport, sock: socket.socket, file: BinaryIO, offset: int, count: int
) -> int | None:
    """One blocking sendfile on a sender thread; None if the client took nothing for SEND_TIMEOUT."""
    seconds = int(SEND_TIMEOUT)
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, int((SEND_TIMEOUT - seconds) * 1e6))
    )
    reading = isinstance(transport, asyncio.ReadTransport) and transport.is_reading()
    if reading:  # the socket is blocking meanwhile: the loop must not recv() on it
        transport.pause_reading()  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    job = loop.run_in_executor(_senders.pool, _send_blocking, sock.fileno(), file.fileno(), offset, count)
    _senders.busy += 1
    job.add_done_callback(_senders.done)
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        # Unblock the thread (its sendfile fails with EPIPE) and let it finish before the loop may close
        # the socket: a descriptor closed under a blocked call could be reused by another connection.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            await job
        raise
    finally:
        if reading and not transport.is_closing():
            transport.resume_reading()  # type: ignore[attr-defined]


def _send_blocking(fd: int, in_fd: int, offset: int, count: int) -> int | None:
    """On a sender thread: sendfile with the socket blocking (the GIL is released for the whole call)."""
    os.set_blocking(fd, True)
    try:
        return os.sendfile(fd, in_fd, offset, count)
    except BlockingIOError:  # SO_SNDTIMEO passed and nothing went
        return None
    finally:
        os.set_blocking(fd, False)
