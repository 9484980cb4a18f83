"""Request collapsing: one request per cache key goes to the origin, later ones wait for it (per process)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import hashlib
import os
from dataclasses import dataclass, field

from fwdproxy.bodysource import Progress
from fwdproxy.http_model import StoredResponse


class Shape(enum.Enum):
    """What the leader's response turned out to be, as far as its followers are concerned."""

    NOT_SHARED = "not-shared"
    """Not storable for everyone (private, no-store, Set-Cookie, an error, a Vary they may not match...):
    every follower goes to the origin itself. Correctness before savings."""
    BUFFERED = "buffered"
    """Small and stored whole when complete: followers wait for the commit and answer from the store."""
    STREAMING = "streaming"
    """Big and written to a temp file as it arrives: followers read the growing file (the sidecar)."""


@dataclass(eq=False)
class Flight:
    """One cacheable request on its way to the origin."""

    shape: asyncio.Future[Shape] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    """Resolved when the leader's response headers are known."""
    done: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    """Resolved when the leader finished: True if its response was stored."""
    meta: StoredResponse | None = None
    """For STREAMING: the response as it will be stored (status, headers, expected length or -1)."""
    progress: Progress | None = None
    """For STREAMING: how many bytes of the body are in the temp file, and whether it completed."""
    path: str | None = None
    """For STREAMING: the temp file, once the body has spilled to disk."""
    file_ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when ``path`` exists (or the flight ended): a follower can start reading."""
    followers: int = 0

    def set_shape(self, shape: Shape) -> None:
        if not self.shape.done():
            self.shape.set_result(shape)
        if shape is not Shape.STREAMING:
            self.file_ready.set()

    def finish(self, stored: bool, *, body_complete: bool) -> None:
        """The leader is done: wake everyone, whatever state they wait in."""
        self.set_shape(Shape.NOT_SHARED)  # no-op when a shape was already announced
        if self.progress is not None:
            self.progress.finish(body_complete)
        self.file_ready.set()
        if not self.done.done():
            self.done.set_result(stored)


class Flights:
    """The in-flight table: primary cache key -> the Flight of the request that leads it."""

    def __init__(self) -> None:
        self.table: dict[str, Flight] = {}

    def join(self, key: str) -> tuple[Flight, bool]:
        """The flight for ``key`` and whether the caller leads it (True: nobody was in flight)."""
        flight = self.table.get(key)
        if flight is not None:
            flight.followers += 1
            return flight, False
        flight = self.table[key] = Flight()
        return flight, True

    def land(self, key: str, flight: Flight, stored: bool, *, body_complete: bool) -> None:
        """The leader finished; later requests look the key up in the store again."""
        if self.table.get(key) is flight:
            del self.table[key]
        flight.finish(stored, body_complete=body_complete)

    def __len__(self) -> int:
        return len(self.table)


class KeyLocks:
    """Per-key lock files under ``<cache_dir>/inflight``, held by the process that fetches a key.

    Collapsing across processes (``--workers``, or two proxies on one cache dir): a process that finds a key
    locked by another waits for that lock, then looks in the shared store again. Followers in other processes
    thus wait for the committed entry instead of reading the growing body.
    """

    def __init__(self, directory: str) -> None:
        self.directory = os.path.join(directory, "inflight")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, hashlib.sha256(key.encode()).hexdigest()[:40])

    def try_lock(self, key: str) -> int | None:
        """The descriptor of the lock when this process now holds it; None when another process does."""
        path = self._path(key)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                return -1  # no lock files (e.g. disk full): behave as if alone, never block a request
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except OSError:
                os.close(fd)
                return -1
            # The holder before us may have unlinked the file after we opened it: lock the current file only.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def unlock(self, key: str, fd: int) -> None:
        """Release (and remove) a lock taken with try_lock."""
        if fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._path(key))
        os.close(fd)

    async def wait(self, key: str, timeout: float, interval: float = 0.05) -> bool:
        """Wait until no process holds the key's lock (True), or the timeout passed (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            fd = self.try_lock(key)
            if fd is not None:
                self.unlock(key, fd)
                return True
            await asyncio.sleep(interval)
        return False
