"""Which origin connection a request gets: an idle one from the shared pool, a new one, or a wait for either."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

DEFAULT_MAX_PER_ORIGIN = 16
"""Connections one origin gets at most (busy and idle together). Browsers hold 6 per host; a cache serving
many clients needs more, yet an origin (a registry, a mirror) should not see hundreds from one proxy."""
DEFAULT_IDLE_TIMEOUT = 60.0
"""An idle connection is closed after a minute: nginx's keepalive_timeout is 75 s and Apache's 5 s, so most
origins close theirs sooner; a minute keeps the warm set without holding sockets for ever."""


@dataclass(frozen=True, slots=True)
class PoolKey:
    """What makes two origin connections interchangeable (RFC 9112 §9.3: a connection is to one server)."""

    scheme: str
    host: str
    port: int
    via: str = ""
    """The upstream proxy the connection goes through, empty when direct."""
    tls: str = ""
    """The TLS name and settings of an https connection (empty for plain HTTP): other settings, other pool."""


class OriginPool[T]:
    """Counts the connections of each origin and keeps the idle ones; ``T`` is whatever the caller pools.

    A slot is held from ``acquire`` until ``discard``: a connection handed back with ``put`` keeps its slot
    while it idles, so busy plus idle never passes ``max_per_origin``.
    """

    def __init__(self, max_per_origin: int = DEFAULT_MAX_PER_ORIGIN) -> None:
        self.max_per_origin = max_per_origin
        self._count: collections.Counter[PoolKey] = collections.Counter()
        self._idle: dict[PoolKey, list[T]] = {}
        self._waiters: dict[PoolKey, collections.deque[asyncio.Future[T | None]]] = {}
        self.opened = 0
        """Slots handed out for a new connection (for the status log and the tests)."""
        self.reused = 0
        """Idle connections handed out again."""

    def busy(self, key: PoolKey) -> int:
        """Connections of ``key`` that exist (in use or idle)."""
        return self._count[key]

    def idle(self, key: PoolKey) -> int:
        return len(self._idle.get(key, ()))

    async def acquire(self, key: PoolKey) -> T | None:
        """An idle connection to reuse, or None: the caller holds a slot and opens a connection itself.

        Waits while the origin has ``max_per_origin`` connections and none is idle.
        """
        if idle := self._idle.get(key):
            # Last in, first out: the most recently used connection is the likeliest to be alive, and the
            # others age out, so a quiet origin keeps few connections.
            self.reused += 1
            conn = idle.pop()
            if not idle:
                del self._idle[key]
            return conn
        if self._count[key] < self.max_per_origin:
            self._count[key] += 1
            self.opened += 1
            return None
        waiter: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, collections.deque()).append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection or slot just as our caller gave up: pass it on.
                if (handed := waiter.result()) is not None:
                    self.put(key, handed)
                else:
                    self.discard(key)
            raise
        finally:
            if (queue := self._waiters.get(key)) is not None:
                if waiter in queue:
                    queue.remove(waiter)
                if not queue:
                    del self._waiters[key]

    def put(self, key: PoolKey, conn: T) -> None:
        """Hand back a connection that is ready for another request; it keeps its slot."""
        if (waiter := self._next_waiter(key)) is not None:
            self.reused += 1
            waiter.set_result(conn)
            return
        self._idle.setdefault(key, []).append(conn)

    def remove_idle(self, key: PoolKey, conn: T) -> bool:
        """Take an idle connection out (it closed or timed out) and free its slot; False when not idle."""
        idle = self._idle.get(key, [])
        if conn not in idle:
            return False
        idle.remove(conn)
        if not idle:
            self._idle.pop(key, None)
        self.discard(key)
        return True

    def discard(self, key: PoolKey) -> None:
        """A connection of ``key`` is gone (closed, or failed to open): its slot goes to a waiter or is freed."""
        if (waiter := self._next_waiter(key)) is not None:
            self.opened += 1
            waiter.set_result(None)  # the slot passes to the waiter, who opens a connection
            return
        self._count[key] -= 1
        if self._count[key] <= 0:
            del self._count[key]

    def _next_waiter(self, key: PoolKey) -> asyncio.Future[T | None] | None:
        queue = self._waiters.get(key)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                return waiter
        return None
