"""The store callers use: the memory tier in front of the disk tier.

Memory holds copies of small disk entries, never entries of its own: a write reaches memory only after
its disk commit succeeded, and a disk hit small enough for memory is promoted. With `coherent` (the
default) every memory hit is confirmed by reading the stamp (first 19 bytes) of the disk row, an
indexed SQLite read with no body and no write, so a delete, overwrite or 304 update made by another
process sharing the directory is never answered from a stale copy. The price: memory hits do not
refresh the disk row's LRU position, so a body hot only in memory may be evicted from disk and
fetched once more.

That check, and the variant listing (a range query and a JSON decode per variant), are remembered per
primary key while its generation mark (generations.py) stays unchanged: every write by any process
marks the key's slot after its commit, so a purge, overwrite or 304 elsewhere is seen by the very next
lookup here, and a memory hit of an unchanged key touches neither SQLite nor the file system. A
database file removed or replaced behind our back (not by a fwdproxy, which marks it) is noticed
within FOLLOW_INTERVAL.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Self

from fwdproxy.http_model import StoredResponse
from fwdproxy.store.backend import Row
from fwdproxy.store.disk import DISK_SIZE, DiskStore, InlineSeen
from fwdproxy.store.generations import GLOBAL, primary_of, slot_of
from fwdproxy.store.memory import MEMORY_OBJECT_MAX, MEMORY_SIZE, Cached, MemoryStore
from fwdproxy.store.openfiles import Sent
from fwdproxy.store.record import BodyFile, Entry, Outcome, StoreStats, Verification, partial_key
from fwdproxy.store.writer import DiskWriter

FOLLOW_INTERVAL = 1.0
"""Seconds between checks (one stat) that the database file is still the one we opened, on memory hits."""
KNOWN_MAX = 8192
"""Primary keys whose listing and checked copies are remembered (oldest forgotten first): a few MiB."""
ROW_MAX = 16 * 1024
"""Database rows longer than this are not remembered (a record holds the headers; bodies in files only)."""


@dataclass(slots=True)
class _Known:
    """What was read for one primary key while its marks were ``marks``."""

    marks: tuple[int, int]
    listing: list[tuple[str, StoredResponse]] | None = None
    checked: dict[str, Cached] = field(default_factory=dict)
    """Memory copies whose stamp matched the disk row under these marks."""
    rows: dict[str, Row] = field(default_factory=dict)
    """Database rows read under these marks: a disk hit then reads the body file alone, no SQLite."""
    inline: dict[str, InlineSeen] = field(default_factory=dict)
    """Inline bodies read and checked under these marks: their records without the body (disk_mark)."""


@dataclass(frozen=True, slots=True)
class MemoryMark:
    """Which memory copy of a key was current, under which marks (TieredStore.memory_mark)."""

    key: str
    slot: int
    marks: tuple[int, int]
    cached: Cached


@dataclass(frozen=True, slots=True)
class DiskMark:
    """Which disk entry of a key was read, from which body file or row, under which marks
    (TieredStore.disk_mark)."""

    key: str
    slot: int
    marks: tuple[int, int]
    path: str | None
    """The body file; None: the body is inline in the database row (``inline``)."""
    inline: InlineSeen | None = None


class TieredWriter:
    """A DiskWriter that also keeps the chunks of a body small enough for memory, to copy up at commit."""

    def __init__(self, store: TieredStore, disk: DiskWriter) -> None:
        self._store = store
        self._disk = disk
        self._chunks: list[bytes] | None = []

    @property
    def key(self) -> str:
        return self._disk.key

    @property
    def written(self) -> int:
        """Bytes accepted so far."""
        return self._disk.written

    @property
    def temp_path(self) -> str | None:
        """The growing temp file, once the body outgrew the inline limit."""
        return self._disk.temp_path

    @property
    def failure(self) -> Outcome | None:
        """Why the writer stopped accepting bytes, if it did."""
        return self._disk.failure

    @property
    def digest(self) -> str:
        """The checksum of the bytes accepted so far (DiskWriter.digest)."""
        return self._disk.digest

    def write(self, chunk: bytes) -> bool:
        """Accept the next piece of the body; False once the writer has failed (stop feeding it)."""
        if not self._disk.write(chunk):
            self._chunks = None
            return False
        if self._chunks is not None:
            if self._store.memory.fits(self._disk.written):
                self._chunks.append(chunk)  # a reference, not a copy
            else:
                self._chunks = None
        return True

    def commit(self, meta: StoredResponse) -> Outcome:
        """Commit to disk; on success also to memory when the body fits there."""
        outcome = self._disk.commit(meta)
        chunks, self._chunks = self._chunks, None
        if outcome is Outcome.STORED:
            memory = self._store.memory
            if chunks is not None and self._disk.stamp is not None:
                memory.put(self.key, meta, b"".join(chunks), self._disk.stamp)
            else:
                memory.delete(self.key)  # an older, smaller version must not linger
        return outcome

    def abort(self) -> None:
        """Drop the body; nothing becomes visible (idempotent)."""
        self._chunks = None
        self._disk.abort()


class TieredStore:
    """get / writer / put / update / delete over a memory tier and a disk tier (see the module doc)."""

    def __init__(self, memory: MemoryStore, disk: DiskStore, *, coherent: bool = True) -> None:
        self.memory = memory
        self.disk = disk
        self.coherent = coherent
        self._generation = disk.db.generation
        self._known: dict[str, _Known] = {}
        self._followed = time.monotonic()

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        memory_size: int = MEMORY_SIZE,
        memory_object_max: int = MEMORY_OBJECT_MAX,
        disk_size: int = DISK_SIZE,
        coherent: bool = True,
    ) -> Self:
        """Both tiers over one cache directory, with the issue's defaults (256 MiB, 1 MiB, 10 GiB)."""
        memory = MemoryStore(memory_size, memory_object_max)
        disk = DiskStore(directory, size_limit=disk_size, read_whole_max=memory_object_max)
        return cls(memory, disk, coherent=coherent)

    def _follow_disk(self) -> None:
        # A reopened (emptied) database voids every copy taken from the old one; live() notices a
        # removed or replaced database file with one stat().
        self._followed = time.monotonic()
        self.disk.db.live()
        self.disk.open_files.sweep()  # at most every openfiles.RECHECK seconds
        if self.disk.db.generation != self._generation:
            self.memory.clear()
            self._known.clear()
            self.disk.open_files.clear()
            if self._generation:  # not our first database: other processes' copies are void too
                self.disk.generations.mark(GLOBAL)
            self._generation = self.disk.db.generation

    def _marks(self, primary: str) -> tuple[int, int]:
        gens = self.disk.generations
        return gens.read(slot_of(primary)), gens.read(GLOBAL)

    def _known_for(self, primary: str, marks: tuple[int, int]) -> _Known:
        known = self._known.get(primary)
        if known is None or known.marks != marks:
            if known is None and len(self._known) >= KNOWN_MAX:
                self._known.pop(next(iter(self._known)), None)  # the oldest: a dict keeps insertion order
            known = self._known[primary] = _Known(marks)
        return known

    def get(self, key: str) -> Entry | None:
        """The entry from memory if current, else from disk (promoting a small body); None on a miss."""
        primary = primary_of(key)
        marks = self._marks(primary)  # before anything is read: a later write changes them
        if (cached := self.memory.get(key)) is not None:
            known = self._known.get(primary)
            if (
                known is not None
                and known.marks == marks
                and known.checked.get(key) is cached
                and time.monotonic() - self._followed < FOLLOW_INTERVAL
            ):
                return Entry(meta=cached.meta, body=cached.body, stamp=cached.stamp)
        self._follow_disk()
        if (cached := self.memory.get(key)) is not None:
            if not self.coherent or self.disk.stamp(key) == cached.stamp:
                self._known_for(primary, marks).checked[key] = cached
                return Entry(meta=cached.meta, body=cached.body, stamp=cached.stamp)
            self.memory.delete(key)
        known = self._known.get(primary)
        row = known.rows.get(key) if known is not None and known.marks == marks else None
        fresh = row is None
        # _follow_disk() above has just checked the database file: no second stat() for this read.
        if fresh:
            row = self.disk.row(key, recheck=False)
        entry = None if row is None else self.disk.entry(key, row, recheck=False)
        if entry is not None and fresh and row is not None:
            if row.filename and len(row.record) <= ROW_MAX:
                self._known_for(primary, marks).rows[key] = row
            elif (
                row.filename is None
                and not self.memory.fits(entry.meta.body_length)  # else memory holds it (memory_mark)
                and (seen := self.disk.inline_seen(row))
                and len(seen.prefix) <= ROW_MAX
            ):
                # Not the body: a later read of the row is checked against this (disk_mark, inline_again).
                self._known_for(primary, marks).inline[key] = seen
        if entry is not None and isinstance(entry.body, bytes) and self.memory.fits(len(entry.body)):
            self.memory.put(key, entry.meta, entry.body, entry.stamp)
        return entry

    def memory_get(self, key: str) -> Entry | None:
        """The entry when the memory tier holds its body, checked exactly as ``get`` checks it; None when
        the body would have to come from disk (the fast hit layer answers memory hits only)."""
        if (cached := self.memory.get(key)) is None:
            return None
        primary = primary_of(key)
        known = self._known.get(primary)
        if (
            known is not None
            and known.checked.get(key) is cached
            and known.marks == self._marks(primary)
            and time.monotonic() - self._followed < FOLLOW_INTERVAL
        ):
            return Entry(meta=cached.meta, body=cached.body, stamp=cached.stamp)  # get()'s first answer
        entry = self.get(key)
        return entry if entry is not None and isinstance(entry.body, bytes) else None

    def memory_mark(self, key: str) -> MemoryMark | None:
        """A mark of the memory copy ``memory_get(key)`` answers with now without reading anything (None when
        it would have to look at the disk tier first): ``unchanged(mark)`` is true while that very copy would
        still be its answer. The fast hit layer keeps a rendered response per mark."""
        if (cached := self.memory.get(key)) is None:
            return None
        primary = primary_of(key)
        known = self._known.get(primary)
        slot = slot_of(primary)
        marks = (self.disk.generations.read(slot), self.disk.generations.read(GLOBAL))
        if (
            known is None
            or known.checked.get(key) is not cached
            or known.marks != marks
            or time.monotonic() - self._followed >= FOLLOW_INTERVAL
        ):
            return None
        return MemoryMark(key, slot, marks, cached)

    def unchanged(self, mark: MemoryMark) -> bool:
        """Whether ``memory_get(mark.key)`` would still answer with the copy ``mark`` was taken of: no write
        to its slot or the database by any process, the copy still in memory, the database followed."""
        gens = self.disk.generations
        return (
            self.memory.get(mark.key) is mark.cached
            and gens.read(mark.slot) == mark.marks[0]
            and gens.read(GLOBAL) == mark.marks[1]
            and time.monotonic() - self._followed < FOLLOW_INTERVAL
        )

    def disk_mark(self, key: str) -> DiskMark | None:
        """A mark of the disk entry ``get(key)`` has just read whole, from its body file or its database row
        (None when that read is not remembered under the key's current marks, or the database was not
        followed lately): ``disk_body(mark)`` reads that body again while the entry is unchanged."""
        primary = primary_of(key)
        known = self._known.get(primary)
        slot = slot_of(primary)
        marks = (self.disk.generations.read(slot), self.disk.generations.read(GLOBAL))
        if known is None or known.marks != marks or time.monotonic() - self._followed >= FOLLOW_INTERVAL:
            return None
        if (row := known.rows.get(key)) is not None and row.filename is not None:
            return DiskMark(key, slot, marks, os.path.join(self.disk.db.store_dir, row.filename))
        if (seen := known.inline.get(key)) is not None:
            return DiskMark(key, slot, marks, None, seen)
        return None

    def disk_body(self, mark: DiskMark) -> bytes | None:
        """The body of the entry ``mark`` was taken of, read again from its file (DiskStore.body_again,
        through a kept descriptor) or from its row (DiskStore.inline_again, checksum checked), while no
        process wrote to its slot or the database and the database was followed lately; None: read the
        entry anew (``get``)."""
        if not self._still(mark):
            return None
        if mark.path is None:
            return None if mark.inline is None else self.disk.inline_again(mark.key, mark.inline)
        return self.disk.body_again(mark.key, mark.path)

    def disk_send(self, mark: DiskMark, head: bytes, out: int) -> Sent | None:
        """disk_body's twin for a body file: ``head`` and the body written to the non-blocking socket ``out``
        straight from the file (DiskStore.send_again), on the same conditions; None (nothing written) when
        they do not hold or the body is inline in its row: the caller reads the entry anew."""
        if not self._still(mark) or mark.path is None:
            return None
        return self.disk.send_again(mark.key, mark.path, head, out)

    def _still(self, mark: DiskMark) -> bool:
        """Whether no process wrote to the slot of ``mark`` or the database since, and the database was
        followed lately; when not, the descriptor kept for its old body file is closed now."""
        gens = self.disk.generations
        if (
            gens.read(mark.slot) != mark.marks[0]
            or gens.read(GLOBAL) != mark.marks[1]
            or time.monotonic() - self._followed >= FOLLOW_INTERVAL
        ):
            self.disk.open_files.forget(mark.key)
            return False
        return True

    def confirm(self, key: str, body: BodyFile, matches: bool | None) -> None:
        """See DiskStore.confirm (big bodies live on disk only)."""
        self.disk.confirm(key, body, matches)

    def writer(
        self, key: str, *, max_length: int | None = None, expected_length: int | None = None
    ) -> TieredWriter:
        """A writer that streams a body for key into both tiers; over max_length it is dropped.

        ``expected_length``: reserve the whole body's disk room now (DiskStore.writer)."""
        disk = self.disk.writer(key, max_length=max_length, expected_length=expected_length)
        return TieredWriter(self, disk)

    def put(self, key: str, meta: StoredResponse, body: bytes) -> Outcome:
        """Store a body held in memory; memory keeps this very bytes object when it fits."""
        writer = self.writer(key)
        writer.write(body)
        return writer.commit(meta)

    def update(self, key: str, meta: StoredResponse) -> bytes | None:
        """Replace an entry's metadata, keeping its body (a 304, §4.3.4); the new stamp, or None."""
        stamp = self.disk.update(key, meta)
        if stamp is None:
            self.memory.delete(key)
        else:
            self.memory.update(key, meta, stamp)
        return stamp

    def delete(self, key: str) -> bool:
        """Remove an entry from both tiers; whether the disk had it."""
        self.memory.delete(key)
        return self.disk.delete(key)

    def purge(self, primary: str) -> int:
        """Delete primary, all its variants and its partial entry from both tiers (§4.4 invalidation); how many."""
        partial = self.delete(partial_key(primary))
        return sum(self.delete(key) for key, _ in self.disk.variants(primary)) + partial

    def variants(self, primary: str) -> list[tuple[str, StoredResponse]]:
        """(key, metadata) of primary and every variant_key(primary, …) stored (§4.1), bodies unread.

        Remembered while the primary key's marks stay unchanged (see the module doc), so a repeated
        lookup returns the very same metadata objects, whose policy facts (fwdproxy/cache/facts.py) are then
        worked out once; correctness never depends on it.
        """
        marks = self._marks(primary)
        known = self._known.get(primary)
        if (
            known is not None
            and known.marks == marks
            and known.listing is not None
            and time.monotonic() - self._followed < FOLLOW_INTERVAL
        ):
            return list(known.listing)
        self._follow_disk()
        listing = self.disk.variants(primary)
        self._known_for(primary, marks).listing = listing
        return list(listing)

    def iterate(self) -> Iterator[tuple[str, StoredResponse]]:
        """(key, metadata) of every entry, bodies unread."""
        return self.disk.iterate()

    def verify(self, key: str) -> Verification:
        """Check one entry's whole body against its checksum; a damaged entry is deleted everywhere."""
        result = self.disk.verify(key)
        if result is not Verification.OK:
            self.memory.delete(key)
        return result

    def stats(self) -> StoreStats:
        """Entries and bytes per tier, memory evictions, and the disk's fault state."""
        disk = self.disk.stats()
        return StoreStats(
            disk=disk.disk,
            memory=self.memory.stats(),
            disk_full=disk.disk_full,
            errors=disk.errors,
            last_error=disk.last_error,
        )

    def check(self) -> bool:
        """SQLite quick_check of the disk database; on damage both tiers start empty."""
        sound = self.disk.check()
        self._follow_disk()
        return sound

    def close(self) -> None:
        """Close this thread's database connection."""
        self.disk.close()
