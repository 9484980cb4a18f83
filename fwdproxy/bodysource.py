"""Which bytes follow a sidecar head, and how they reach the socket: file slices by sendfile, literal parts.

A body is a list of parts: literal bytes (multipart delimiters) and slices of a file, either a complete
stored body (`FileBody`) or a temp file another task is still writing (`GrowingBody`, tracked by a
`Progress`). Slices go out with `loop.sendfile`: zero-copy on a plain socket, else asyncio's own
read/write fallback, and either way only as fast as the socket takes them, so memory stays flat.
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections.abc import Callable, Sequence
from typing import BinaryIO, NamedTuple

from fwdproxy.ranges import ByteRange


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
                sent = await _sendfile(writer, self._file, offset, end - offset)
                count(sent)
                if sent == 0:
                    return Outcome.SHORT  # truncated under us: a short body must not look complete
                offset += sent
        return Outcome.COMPLETE


class GrowingBody(FileBody):
    """Parts of a file another task is writing; a slice waits for its bytes (whole body: `progress.length`)."""

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

    async def send(self, writer: asyncio.StreamWriter, count: Count, stall_timeout: float) -> Outcome:
        assert self._file is not None, "open() first"
        progress = self.progress
        for span in self._spans:
            if isinstance(span, bytes):
                await _write(writer, span, count)
                continue
            offset, end = span.offset, span.offset + span.length
            while offset < end:
                if progress.failed:
                    return Outcome.ABORTED
                if progress.available <= offset:
                    if progress.done:
                        return Outcome.SHORT
                    try:
                        async with asyncio.timeout(stall_timeout):
                            await progress.wait()
                    except TimeoutError:
                        return Outcome.STALLED
                    continue
                sent = await _sendfile(writer, self._file, offset, min(progress.available, end) - offset)
                count(sent)
                if sent == 0:
                    return Outcome.SHORT  # the writer counted bytes the file does not have
                offset += sent
        return Outcome.COMPLETE


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


async def _sendfile(writer: asyncio.StreamWriter, file: BinaryIO, offset: int, count: int) -> int:
    """Send up to `count` bytes from `offset`; fewer only at the file's end."""
    transport = writer.transport
    if transport.is_closing():  # loop.sendfile would raise RuntimeError
        raise ConnectionResetError("the client closed the connection")
    # asyncio's read/write fallback seeks only when offset is non-zero, so a slice at 0 that follows
    # another would start at the file position: always put the position where the slice starts.
    file.seek(offset)
    loop = asyncio.get_running_loop()
    return await loop.sendfile(transport, file, offset, count)
