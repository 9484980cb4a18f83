"""Change marks shared by every process on one cache directory, so a memory hit needs no disk read.

`<cache dir>/generations` is a small memory-mapped file of SLOTS 8-byte marks. Every write to the disk
tier (commit, 304 update, delete, drop, eviction), in any process, stores a fresh random value in the
slot of the entry's primary key (all Vary variants of a URL share one slot) *after* the database
change is visible; a recovery that replaces the database marks slot 0, which every reader also
checks. A reader notes a slot's value *before* it reads the disk; while the value stays the same,
nothing it read for that primary key can have changed, so it may answer from memory without asking
SQLite. A changed value (or a collision with another key's slot) only costs a disk check.

Why random values and no lock: a lost update between two writers still leaves a value the reader has
not seen (each write stores its own random 64 bits), and an 8-byte aligned store is atomic on the
platforms we run on; a torn read would at worst look like a change. Readers never write.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib

SLOTS = 1 << 16
"""64 Ki slots (512 KiB of file): unrelated keys rarely share one, and sharing only costs a disk check."""
GLOBAL = 0
"""The slot a database replacement marks: it voids every memory copy in every process."""
FILENAME = "generations"
_MARK = struct.Struct("=Q")


def slot_of(primary: str) -> int:
    """The slot of a primary key (stable across processes, unlike hash()); never the global slot."""
    return (zlib.crc32(primary.encode("utf-8", "surrogatepass")) % (SLOTS - 1)) + 1


class Generations:
    """The marks file of one cache directory; without one (mmap refused), every read is "changed"."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._map: mmap.mmap | None = None
        path = os.path.join(os.fspath(directory), FILENAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # Zero-filled (a fresh file marks nothing) and every block allocated now: a store into a page
                # of a sparse file needs a block, and on a full disk that is a SIGBUS that kills the process.
                os.posix_fallocate(fd, 0, SLOTS * _MARK.size)
                self._map = mmap.mmap(fd, SLOTS * _MARK.size, mmap.MAP_SHARED)
            finally:
                os.close(fd)
        except (OSError, ValueError):
            self._map = None
        self._fresh = 0  # without a map, reads return ever new values: no answer is ever taken as current

    @property
    def shared(self) -> bool:
        """Whether marks are shared through the file (False: every read counts as a change)."""
        return self._map is not None

    def read(self, slot: int) -> int:
        """The slot's current mark."""
        if self._map is None:
            self._fresh += 1
            return -self._fresh
        value: int = _MARK.unpack_from(self._map, slot * _MARK.size)[0]
        return value

    def mark(self, slot: int) -> None:
        """Record a change in this slot (call after the change is visible in the database)."""
        if self._map is not None:
            self._map[slot * _MARK.size : (slot + 1) * _MARK.size] = os.urandom(_MARK.size)

    def mark_key(self, key: str) -> None:
        """Record a change to a stored key (a primary key or one of its variant keys)."""
        self.mark(slot_of(primary_of(key)))

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def primary_of(key: str) -> str:
    """The primary key part of a store key (see record.variant_key)."""
    return key.partition("\0")[0]
