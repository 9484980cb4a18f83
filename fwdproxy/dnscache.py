"""DNS answers kept for a TTL window, failures for a shorter one, and one resolver call per name at a time."""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Addresses = tuple[tuple[int, str], ...]
"""What a name resolves to: (address family, IP address) pairs, in the resolver's order of preference."""

Resolver = Callable[[str], Awaitable[Addresses]]
"""Resolves one host name; raises OSError (e.g. socket.gaierror) when it cannot."""

DEFAULT_TTL = 60.0
"""How long an answer is reused. The OS resolver does not tell us the record's TTL; a minute is what Squid's
positive_dns_ttl caps at in practice for busy names, and short enough that a moved origin is followed soon."""
NEGATIVE_TTL = 5.0
"""How long a failed lookup is reused: a burst towards a name that does not resolve makes one lookup, yet a
name fixed in DNS (or a resolver back from a hiccup) is retried within seconds. Squid's negative_dns_ttl is 1m."""
MAX_NAMES = 10_000
"""Names remembered at most; beyond that the oldest entry goes (a client cannot grow the table without end)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    addresses: Addresses = ()
    error: OSError | None = None


@dataclass(slots=True)
class DnsStats:
    """Counters for the status log and the tests."""

    lookups: int = 0
    """Resolver calls made."""
    hits: int = 0
    """Answers given from the table (positive or negative) or from a lookup already in flight."""


class DnsCache:
    """Resolves through ``resolver``, reusing each answer for ``ttl`` seconds and each failure for
    ``negative_ttl``; concurrent lookups of a name share one resolver call. ``clock`` gives the time."""

    def __init__(
        self,
        resolver: Resolver,
        clock: Callable[[], float],
        *,
        ttl: float = DEFAULT_TTL,
        negative_ttl: float = NEGATIVE_TTL,
        max_names: int = MAX_NAMES,
    ) -> None:
        self.resolver = resolver
        self.clock = clock
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_names = max_names
        self.stats = DnsStats()
        self._table: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[Addresses]] = {}

    async def resolve(self, host: str) -> Addresses:
        """The addresses of ``host`` (an IP literal is its own answer); raises the resolver's OSError."""
        if (literal := _literal(host)) is not None:
            return literal
        name = host.lower().rstrip(".")
        entry = self._table.get(name)
        if entry is not None and entry.expires > self.clock():
            self.stats.hits += 1
            return _answer(entry)
        if (pending := self._inflight.get(name)) is not None:
            self.stats.hits += 1
        else:
            # The lookup runs as a task of its own, so a caller that gives up (its client left) does not
            # cancel it for the others waiting on the same name.
            pending = asyncio.ensure_future(self._lookup(name))
            self._inflight[name] = pending
        return await asyncio.shield(pending)

    async def _lookup(self, name: str) -> Addresses:
        self.stats.lookups += 1
        try:
            addresses = await self.resolver(name)
        except OSError as e:
            self._remember(name, _Entry(self.clock() + self.negative_ttl, error=e))
            raise
        finally:
            del self._inflight[name]
        self._remember(name, _Entry(self.clock() + self.ttl, addresses=addresses))
        return addresses

    def _remember(self, name: str, entry: _Entry) -> None:
        if entry.expires <= self.clock():
            self._table.pop(name, None)  # a TTL of 0: no caching, only the sharing of lookups in flight
            return
        self._table.pop(name, None)  # re-inserted last: the table's order is oldest first
        if len(self._table) >= self.max_names:
            now = self.clock()
            self._table = {k: v for k, v in self._table.items() if v.expires > now}
            while len(self._table) >= self.max_names:
                del self._table[next(iter(self._table))]
        self._table[name] = entry


def _answer(entry: _Entry) -> Addresses:
    if entry.error is not None:
        # A copy, so the stored exception gathers no traceback of each caller it is raised in.
        raise copy.copy(entry.error)
    return entry.addresses


def _literal(host: str) -> Addresses | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return ((socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip)),)
