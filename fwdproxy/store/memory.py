"""The memory tier: a cachetools LRU of whole entries, sized in bytes."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from cachetools import LRUCache

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store.record import TierStats

MEMORY_SIZE = 256 * 2**20
"""Default total: enough for thousands of API responses, small beside a proxy host's RAM."""
MEMORY_OBJECT_MAX = 2**20
"""Default per-object limit: bigger bodies are streamed from disk instead, so one large download
cannot flush hundreds of small hot entries."""

_ENTRY_OVERHEAD = 600
"""Rough CPython cost of the records around one entry (dataclasses, tuples, the LRU's dict slots)."""
_FIELD_OVERHEAD = 120
"""Rough cost of one header line beyond its characters: a tuple and two str objects."""


def _fields_size(headers: Headers) -> int:
    return sum(len(k) + len(v) + _FIELD_OVERHEAD for k, v in headers.fields)


def meta_size(meta: StoredResponse) -> int:
    """An estimate of the memory a metadata record holds, so small entries are not counted as free."""
    return (
        _ENTRY_OVERHEAD
        + len(meta.url)
        + len(meta.reason)
        + len(meta.rule)
        + _fields_size(meta.headers)
        + _fields_size(meta.vary_request)
    )


@dataclass(frozen=True, slots=True)
class Cached:
    """One entry held in memory."""

    meta: StoredResponse
    body: bytes
    stamp: bytes
    """The disk record's stamp when this copy was taken (see TieredStore's coherence check)."""
    size: int
    """Bytes counted against the tier's limit."""


class _CountingLRU(LRUCache[str, "Cached"]):
    """An LRUCache that counts evictions."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize, getsizeof=lambda c: c.size)
        self.evictions = 0

    def popitem(self) -> tuple[str, Cached]:
        item = super().popitem()
        self.evictions += 1
        return item


class MemoryStore:
    """Whole entries in an LRU bounded by bytes; a hit returns the very bytes object that was stored."""

    def __init__(self, max_bytes: int = MEMORY_SIZE, max_object: int = MEMORY_OBJECT_MAX) -> None:
        if max_bytes < 0 or max_object < 0:
            raise ValueError(f"memory sizes must be >= 0, got {max_bytes} and {max_object}")
        self.max_bytes = max_bytes
        self.max_object = max_object
        self._lru = _CountingLRU(max_bytes)
        # cachetools is not thread-safe, and a sidecar may serve from a thread.
        self._lock = threading.Lock()

    def fits(self, length: int) -> bool:
        """Whether a body of this length may enter memory at all (never when the tier is sized 0)."""
        return length <= self.max_object and length < self.max_bytes

    def get(self, key: str) -> Cached | None:
        """The entry, marked as most recently used, or None."""
        with self._lock:
            try:
                cached: Cached = self._lru[key]  # one lookup (cachetools' get() looks twice)
            except KeyError:
                return None
            return cached

    def put(self, key: str, meta: StoredResponse, body: bytes, stamp: bytes) -> bool:
        """Keep an entry, evicting the least recently used ones; False (and nothing kept) when too big."""
        size = len(body) + meta_size(meta)
        with self._lock:
            if not self.fits(len(body)) or size > self.max_bytes:
                self._lru.pop(key, None)  # never leave an older version behind
                return False
            self._lru[key] = Cached(meta=meta, body=body, stamp=stamp, size=size)
            return True

    def update(self, key: str, meta: StoredResponse, stamp: bytes) -> bool:
        """Replace the metadata of an entry, keeping its body (a 304 refreshed it); False if absent."""
        with self._lock:
            cached: Cached | None = self._lru.get(key)
        if cached is None:
            return False
        return self.put(key, meta, cached.body, stamp)

    def delete(self, key: str) -> bool:
        """Drop an entry; False if it was not there."""
        with self._lock:
            return self._lru.pop(key, None) is not None

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._lru.clear()

    def stats(self) -> TierStats:
        """Entries, bytes and evictions so far."""
        with self._lock:
            return TierStats(
                entries=len(self._lru),
                bytes=int(self._lru.currsize),
                limit=self.max_bytes,
                evictions=self._lru.evictions,
            )
