"""Request collapsing: one request per cache key goes to the origin, later ones wait for it (per process)."""

from __future__ import annotations

import asyncio
import enum
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
