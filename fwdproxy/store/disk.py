"""The disk tier: entries in a diskcache database, big bodies as files, shared by processes.

Layout under the cache directory:

    store/cache.db (+ -wal, -shm)   diskcache's SQLite database: one row per key, LRU by access time
    store/ab/cd/<hex>.val           bodies above the inline limit; smaller ones sit in their row
    tmp/<hex>.part                  bodies being streamed, each flock'ed by its writer
    store.broken-<hex>/             a damaged store moved aside, being deleted in the background

No method raises for a storage fault: reads miss, writes return Outcome.DISK_ERROR, and the fault is
logged once (disk full: once until a write succeeds again, each time freeing the least recently used
10% of body bytes). A database that was deleted or replaced is never read again, and one that SQLite
reports corrupt is reopened, empty if a fresh quick_check confirms the damage (see handle.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

import diskcache

from fwdproxy.http_model import StoredResponse
from fwdproxy.store import backend, budget, codec
from fwdproxy.store.generations import Generations
from fwdproxy.store.handle import ERRORS, Database
from fwdproxy.store.memory import MEMORY_OBJECT_MAX
from fwdproxy.store.openfiles import OpenFiles, Sent
from fwdproxy.store.record import (
    VARIANT_SEPARATOR,
    BodyFile,
    Entry,
    Outcome,
    StoreStats,
    TierStats,
    Verification,
)
from fwdproxy.store.tempfiles import Opener, clean_stale, open_unbuffered
from fwdproxy.store.verify import verify
from fwdproxy.store.writer import DiskWriter

log = logging.getLogger("fwdproxy.store")

DISK_SIZE = 10 * 2**30
"""Default size limit: the issue's --disk-cache-size default."""
INLINE_MAX = 2**15
"""Bodies up to this size live in their database row: diskcache's own threshold, since many tiny files
cost more to open and to evict than a row read."""
TIMEOUT = 1.0
"""SQLite busy timeout: a write transaction lasts milliseconds, so a longer wait means trouble; miss."""
TOUCH_EVERY = 1.0
"""Seconds between writes of the LRU order of what was read (diskcache would write on every read)."""
TOUCH_BATCH = 1024
"""...or sooner, once this many keys were read."""
DECODED_MAX = 4096
"""Decoded records remembered (oldest forgotten first)..."""
DECODED_RECORD_MAX = 16 * 1024
"""...each at most this long..."""
DECODED_BYTES_MAX = 16 * 2**20
"""...and all of them, with the small bodies decoded from them, at most this many bytes."""
VERIFIED_MAX = 4096
"""Body files whose checksum is remembered as confirmed (forgotten all at once when full)."""


@dataclass(frozen=True, slots=True)
class InlineSeen:
    """An inline body's record as this process read and checked it (DiskStore.inline_seen)."""

    prefix: bytes
    """The record up to the inline body: format, stamp and the metadata JSON."""
    checksum: str
    length: int


class DiskStore:
    """The disk tier; several instances (in several processes) may share one directory."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        size_limit: int = DISK_SIZE,
        read_whole_max: int = MEMORY_OBJECT_MAX,
        inline_max: int = INLINE_MAX,
        timeout: float = TIMEOUT,
        opener: Opener = open_unbuffered,
    ) -> None:
        self.db = Database(os.fspath(directory), size_limit=size_limit, timeout=timeout)
        self.read_whole_max = read_whole_max
        """Bodies up to this length are read into bytes (and checksummed); longer ones come as a BodyFile."""
        self.inline_max = inline_max
        """Bodies up to this length are kept in their database row instead of a file."""
        self._opener = opener
        self.reserve_step = budget.step(size_limit)
        """How far ahead a body of unknown length reserves disk budget (see budget.py)."""
        self.db.live()
        self.generations = Generations(directory)
        """Marks every change per primary key for all processes, so memory hits can skip the disk."""
        self._used: dict[str, float] = {}
        """Keys read since the LRU order was last written, and when (see backend.read)."""
        self._touched_at = time.time()
        self.db.before_shed = self._before_shed
        self._decoded: dict[bytes, codec.Decoded] = {}
        """Record -> its decoding (see _decode)."""
        self._decoded_bytes = 0
        """Bytes held by _decoded: its records and the inline bodies decoded from them."""
        self._verified: dict[str, tuple[bytes, int, int, int, int]] = {}
        """Key -> (stamp, inode, mtime, ctime, size) of the body file whose checksum this process last confirmed
        (per process: a new process hashes every body file before its first hit)."""
        self.open_files = OpenFiles()
        """Descriptors of recently re-read body files (body_again), closed when their entry changes."""

    def check(self) -> bool:
        """Whether the database passes SQLite's quick_check; if not, an empty one replaces it. Also closes
        the kept body files that were removed meanwhile (OpenFiles.sweep): this runs periodically."""
        self.open_files.sweep(force=True)
        return self.db.check()

    def close(self) -> None:
        """Close this thread's database connection (the next call reopens it) and the kept body files."""
        if self._used and (cache := self.db.live()) is not None:
            self._touch(cache)
        self.open_files.clear()
        self.db.close()

    def verify(self, key: str) -> Verification:
        """Read one entry's whole body and compare it with its checksum; a damaged entry is deleted."""
        return verify(self, key)

    # -- reading

    def get(self, key: str) -> Entry | None:
        """The entry, marked as recently used; None on a miss, a damaged entry, or a fault."""
        row = self.row(key)
        return None if row is None else self.entry(key, row)

    def row(self, key: str, *, recheck: bool = True) -> backend.Row | None:
        """A key's database row (record and body file name); None on a miss or a fault.

        ``recheck``: as Database.live (False only right after a call to it)."""
        if (cache := self.db.live(recheck=recheck)) is None:
            return None
        try:
            return backend.read(cache, key)
        except ERRORS as e:
            self.db.fault(e, f"reading {key}")
            return None

    def entry(self, key: str, row: backend.Row, *, recheck: bool = True) -> Entry | None:
        """The entry a row (from row(), maybe remembered) stands for, its body checked and the key marked as
        recently used; None when the body is damaged or gone (then the row is dropped) or on a fault.

        ``recheck``: as Database.live (False only right after a call to it)."""
        if self.db.live(recheck=recheck) is None:
            return None
        entry = self._entry(key, row)
        if entry is not None:
            self._read(key)
        return entry

    def body_again(self, key: str, path: str) -> bytes | None:
        """The body of ``key`` read again, whole, from its file at ``path`` when that is still the very file
        whose checksum this process confirmed (same stamp, inode, size, mtime and ctime: entry()'s rule for
        skipping the hash), through a descriptor kept open between hits (openfiles.py), the key marked as
        used as entry() marks it; None when it is not (or on an error): the caller reads the entry anew. For
        a caller that already holds the entry's record (the fast hit layer, which remembers the response
        head it rendered from it)."""
        seen = self._verified.get(key)
        if seen is None:
            return None
        body = self.open_files.read(key, path, seen)
        if body is not None:
            self._read(key)
        return body

    def send_again(self, key: str, path: str, head: bytes, out: int) -> Sent | None:
        """body_again's twin that writes instead of reading: ``head``, then the body straight from its file
        to the non-blocking socket ``out`` (OpenFiles.send), on the same condition and with the key marked
        as used; None (nothing written) when it is not that file: the caller reads the entry anew."""
        seen = self._verified.get(key)
        if seen is None:
            return None
        sent = self.open_files.send(key, path, seen, head, out)
        if sent is not None:
            self._read(key)
        return sent

    def inline_seen(self, row: backend.Row) -> InlineSeen | None:
        """What inline_again checks a row read later against: this row's record up to its inline body, and
        the body's checksum and length; None for a body in a file or a record that does not decode."""
        decoded = self._decode(row.record)
        if row.filename is not None or not isinstance(decoded, codec.Decoded):
            return None
        size = len(row.record) - len(decoded.inline)
        return InlineSeen(row.record[:size], decoded.checksum, decoded.meta.body_length)

    def inline_again(self, key: str, seen: InlineSeen) -> bytes | None:
        """The inline body of ``key`` read again from its database row (one indexed SELECT, no write) when
        the row still holds the very record ``seen`` was taken of (same stamp, metadata and body length)
        and the body matches its checksum (entry()'s check for inline bodies, made on every read), the key
        marked as used; None when it does not, or on a fault: the caller reads the entry anew (and a damaged
        row is dropped there)."""
        if (cache := self.db.live(recheck=False)) is None:
            return None
        try:
            row = backend.read(cache, key)
        except ERRORS as e:
            self.db.fault(e, f"reading {key}")
            return None
        if row is None or row.filename is not None or not row.record.startswith(seen.prefix):
            return None
        body = row.record[len(seen.prefix) :]
        if len(body) != seen.length or codec.checksum(body) != seen.checksum:
            return None
        self._read(key)
        return body

    def _read(self, key: str) -> None:
        """Mark ``key`` as just read (its LRU position is written in batches, see backend.read)."""
        self._used[key] = now = time.time()
        if (now - self._touched_at >= TOUCH_EVERY or len(self._used) >= TOUCH_BATCH) and (
            cache := self.db.live(recheck=False)
        ) is not None:
            self._touch(cache)

    def _decode(self, record: bytes) -> codec.Decoded | codec.Undecodable:
        """codec.decode, remembered for small records: the same record decodes to the very same objects, so
        the cache policy's per-object memos (freshness, Cache-Control, served headers) hold for disk hits."""
        found = self._decoded.get(record)
        if found is not None:
            return found
        decoded = codec.decode(record)
        if isinstance(decoded, codec.Decoded) and len(record) <= DECODED_RECORD_MAX:
            self._decoded_bytes += _held(record, decoded)
            self._decoded[record] = decoded
            while len(self._decoded) > DECODED_MAX or self._decoded_bytes > DECODED_BYTES_MAX:
                oldest = next(iter(self._decoded))  # a dict keeps insertion order
                self._decoded_bytes -= _held(oldest, self._decoded.pop(oldest))
        return decoded

    def _before_shed(self, cache: diskcache.Cache) -> None:
        # A full disk: write what was read lately (it is not what gets shed), and let the kept body files go
        # (a descriptor would keep the blocks of a shed file).
        self._touch(cache)
        self.open_files.clear()

    def _changed(self, key: str) -> None:
        """After a write to ``key`` is visible: mark its generation slot for every process, and close the
        descriptor kept for its old body file."""
        self.open_files.forget(key)
        self.generations.mark_key(key)

    def _touch(self, cache: diskcache.Cache) -> None:
        """Write the LRU positions of what was read since the last time (see backend.read)."""
        used, self._used = self._used, {}
        self._touched_at = time.time()
        if not used:
            return
        try:
            backend.touch(cache, used)
        except ERRORS as e:
            with contextlib.suppress(sqlite3.Error):
                backend.end_transaction(cache)
            if backend.classify(e) is backend.Fault.BUSY:  # another process is writing: try again later
                self._used = used | self._used
                return
            self.db.fault(e, "recording which entries were read")  # the LRU order is a little less exact

    def _entry(self, key: str, row: backend.Row) -> Entry | None:
        decoded = self._decode(row.record)
        if decoded is codec.Undecodable.OTHER_VERSION:
            return None
        if decoded is codec.Undecodable.CORRUPT:
            self.drop(key, "its record is unreadable")
            return None
        meta = decoded.meta
        if row.filename is None:
            if len(decoded.inline) != meta.body_length or codec.checksum(decoded.inline) != decoded.checksum:
                self.drop(key, "its body does not match its checksum", decoded.stamp)
                return None
            return Entry(meta=meta, body=decoded.inline, stamp=decoded.stamp)
        path = os.path.join(self.db.store_dir, row.filename)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # a raw descriptor: no buffered file for a read
        except FileNotFoundError:
            self.drop(key, "its body file is gone", decoded.stamp)
            return None
        except OSError as e:
            self.db.fault(e, f"opening the body of {key}")
            return None
        try:
            stat = os.fstat(fd)
            size = stat.st_size
            # What a confirmed checksum is about: this stamp's body, in this very file, unchanged. ctime is in
            # it because no one can set it back (os.utime can restore mtime after a write, not ctime).
            seen = (decoded.stamp, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, size)
            confirmed = self._verified.get(key) == seen
            if size == meta.body_length and size > self.read_whole_max:  # streamed by the caller
                # Hashing it here would stall the caller (the event loop) for a big body: the caller confirms
                # it first (check.body_matches in a thread, then confirm()) unless this process already did.
                file = open(fd, "rb")
                digest = "" if confirmed else decoded.checksum
                body_file = BodyFile(path, size, file, digest=digest, seen=seen)
                return Entry(meta=meta, body=body_file, stamp=decoded.stamp)
            body = _read_whole(fd, size) if size == meta.body_length else b""
        except OSError as e:
            os.close(fd)
            self.db.fault(e, f"reading the body of {key}")
            return None
        os.close(fd)
        if size != meta.body_length:
            self.drop(key, f"its body file holds {size} bytes, not {meta.body_length}", decoded.stamp)
            return None
        # The checksum is computed at this file's first read in this process, and again whenever the file is
        # not the very same one (another inode, size, mtime or ctime): a body rewritten or damaged through the
        # file system is caught, and a hot entry is not hashed on every hit.
        if len(body) != meta.body_length or (not confirmed and codec.checksum(body) != decoded.checksum):
            self._verified.pop(key, None)
            self.drop(key, "its body does not match its checksum", decoded.stamp)
            return None
        self._remember(key, seen)
        return Entry(meta=meta, body=body, stamp=decoded.stamp)

    def _remember(self, key: str, seen: tuple[bytes, int, int, int, int]) -> None:
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[key] = seen

    def confirm(self, key: str, body: BodyFile, matches: bool | None) -> None:
        """Record the outcome of hashing a body file get() handed out unconfirmed (check.body_matches):
        remembered if it matches, the entry dropped if not (a miss from now on), nothing on a read error."""
        if matches:
            self._remember(key, body.seen)
        elif matches is False:
            if self._verified.get(key) == body.seen:
                del self._verified[key]
            self.drop(key, "its body does not match its checksum", body.seen[0])

    def written(self, key: str, stamp: bytes, filename: str) -> None:
        """A body file this process just committed counts as confirmed: its checksum is of the very bytes we
        wrote into it, and the file as it is now (temp link gone, so ctime settled) is what later reads match.
        Saves hashing a big download again at its first hit; other processes still hash it once."""
        try:
            st = os.stat(os.path.join(self.db.store_dir, filename))
        except OSError:
            return  # evicted already
        self._remember(key, (stamp, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size))

    def stamp(self, key: str) -> bytes | None:
        """The current stamp of a key, without reading its body or changing its LRU position."""
        if (cache := self.db.live()) is None:
            return None
        try:
            found = backend.row(cache, key, codec.STAMP_PREFIX)
        except ERRORS as e:
            self.db.fault(e, f"looking up {key}")
            return None
        return None if found is None else codec.stamp_of(found.record)

    def variants(self, primary: str) -> list[tuple[str, StoredResponse]]:
        """(key, metadata) of primary and of every variant_key(primary, …) stored, bodies unread."""
        if VARIANT_SEPARATOR in primary or (cache := self.db.live()) is None:
            return []  # variant_key() never made such a primary: it would list another URL's variants
        try:
            rows = backend.prefix_rows(cache, primary, VARIANT_SEPARATOR)
        except ERRORS as e:
            self.db.fault(e, f"listing the variants of {primary}")
            return []
        decoded = ((k, self._decode(record)) for k, record in rows)
        return [(k, d.meta) for k, d in decoded if isinstance(d, codec.Decoded)]

    def iterate(self) -> Iterator[tuple[str, StoredResponse]]:
        """(key, metadata) of every entry, bodies unread, in pages so no lock is held between them."""
        for _, key, _, record in self.db.rows("listing the cache"):
            if isinstance(decoded := codec.decode(record), codec.Decoded):
                yield key, decoded.meta

    def stats(self) -> StoreStats:
        """Entries and bytes (body files plus database pages) against the size limit, and fault state."""
        entries = volume = 0
        if (cache := self.db.live()) is not None:
            try:
                entries, volume = len(cache), cache.volume()
            except ERRORS as e:
                self.db.fault(e, "counting the cache")
        db = self.db
        disk = TierStats(entries=entries, bytes=volume, limit=db.size_limit, evictions=db.evictions)
        return StoreStats(disk=disk, disk_full=db.disk_full, errors=db.errors, last_error=db.last_error)

    # -- writing

    def writer(
        self, key: str, *, max_length: int | None = None, expected_length: int | None = None
    ) -> DiskWriter:
        """A writer that streams a body for key; bodies over max_length are dropped as they pass it.

        With ``expected_length`` the whole body's room is reserved at once, now: a writer that cannot fit
        comes back already failed with Outcome.NO_ROOM (see DiskWriter.failure)."""
        writer = DiskWriter(
            self, key, max_length=max_length, opener=self._opener, expected_length=expected_length
        )
        writer.reserve_ahead()
        return writer

    def reserve(self, temp_path: str, fd: int, need: int, want: int) -> int | None:
        """Grow a temp file's reservation to ``want`` bytes (at least ``need``), evicting least recently used
        entries for room; the bytes now reserved, or None when even evicting could not make ``need`` fit."""
        if (cache := self.db.live()) is None:
            return None
        limit = self.db.size_limit
        try:
            with budget.locked(self.db.tmp_dir):
                others = budget.in_flight(self.db.tmp_dir, exclude=temp_path)
                if need <= limit < need + others and self._sweep(cache):  # maybe dead writers hold the room
                    others = budget.in_flight(self.db.tmp_dir, exclude=temp_path)
                if need > limit - others:
                    return None  # the downloads in flight hold the room: evicting would not help
                volume = int(cache.volume())
                if need > limit - others - backend.overhead(cache, volume):
                    return (
                        None  # not even an empty cache (its database pages stay) would hold it: evict nothing
                    )
                room = limit - others - volume
                if room < want:
                    if self._used:
                        self._touch(cache)  # what was read lately is not what eviction takes first
                    target = limit - others - want
                    self.db.evictions += backend.evict(cache, target, self._changed)
                    room = limit - others - int(cache.volume())
                if room < need:
                    return None
                granted = max(need, min(want, room))
                # Sparse: the apparent size is the reservation every process counts, no block is written.
                os.ftruncate(fd, granted)
                return granted
        except ERRORS as e:
            with contextlib.suppress(sqlite3.Error):
                backend.end_transaction(cache)
            self.db.fault(e, "reserving disk room for a body")
            return None

    def _sweep(self, cache: diskcache.Cache) -> int:
        """Remove the temp files of writers that died (their reservations too); how many."""

        def is_referenced(filename: str) -> bool:
            try:
                return backend.referenced(cache, filename)
            except ERRORS:
                return True  # keep it: at worst a leaked file, never a lost entry

        return clean_stale(self.db.tmp_dir, self.db.store_dir, is_referenced)

    def put(self, key: str, meta: StoredResponse, body: bytes) -> Outcome:
        """Store a body held in memory (the writer in one go)."""
        writer = self.writer(key)
        writer.write(body)
        return writer.commit(meta)

    def insert(self, key: str, record: bytes, adopt: tuple[str, str, int] | None) -> Outcome:
        """Commit a record, adopting the (temp path, store filename, size) body file; used by DiskWriter."""
        if (cache := self.db.live()) is None:
            return Outcome.DISK_ERROR
        if self._used:
            self._touch(cache)  # what was read lately is not what eviction (or a full disk) takes first
        value = backend.Adopt(record) if adopt is None else backend.Adopt(record, *adopt)
        try:
            cache.set(key, value, retry=False)
        except ERRORS as e:
            with contextlib.suppress(sqlite3.Error):  # the database may be what failed
                backend.end_transaction(cache)
            if adopt is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.db.store_dir, adopt[1]))
            self.db.fault(e, f"storing {key}")
            return Outcome.DISK_ERROR
        self.db.stored()
        self._changed(key)
        try:
            # Within the limit together with the bodies still in flight (their reservations, budget.py); our
            # own temp file is now the stored body (a hard link), not counted twice.
            with budget.locked(self.db.tmp_dir):
                target = self.db.size_limit - budget.in_flight(self.db.tmp_dir, adopt[0] if adopt else None)
                self.db.evictions += backend.evict(cache, target, self._changed)
        except ERRORS as e:
            self.db.fault(e, "evicting old entries")
        return Outcome.STORED

    def update(self, key: str, meta: StoredResponse) -> bytes | None:
        """Replace an entry's metadata, keeping its body (a 304 refreshed it, §4.3.4); the new stamp.

        None when the entry is gone, unreadable, or meta.body_length differs from the stored body.
        """
        if (cache := self.db.live()) is None:
            return None
        stamp = codec.new_stamp()
        try:
            with cache.transact(retry=False):
                found = backend.row(cache, key)
                decoded = None if found is None else codec.decode(found.record)
                if not isinstance(decoded, codec.Decoded) or decoded.meta.body_length != meta.body_length:
                    return None
                record = codec.encode(meta, stamp=stamp, digest=decoded.checksum, inline=decoded.inline)
                backend.replace_record(cache, key, record)
        except ERRORS as e:
            self.db.fault(e, f"updating {key}")
            return None
        self._changed(key)
        return stamp

    def delete(self, key: str) -> bool:
        """Remove an entry and its body file; False if absent or on a fault."""
        if (cache := self.db.live()) is None:
            return False
        try:
            deleted = bool(cache.delete(key, retry=False))
        except ERRORS as e:
            self.db.fault(e, f"deleting {key}")
            return False
        if deleted:
            self._changed(key)
        return deleted

    def purge(self, primary: str) -> int:
        """Delete primary and all its variants (RFC 9111 §4.4 invalidation); how many went."""
        return sum(self.delete(key) for key, _ in self.variants(primary))

    def drop(self, key: str, why: str, stamp: bytes | None = None) -> None:
        """Delete a damaged entry and log why, unless it was replaced or removed since read with stamp."""
        if (cache := self.db.live()) is None:
            return
        try:
            with cache.transact(retry=False):
                found = backend.row(cache, key, codec.STAMP_PREFIX)
                if found is None or (stamp is not None and codec.stamp_of(found.record) != stamp):
                    return  # evicted or rewritten meanwhile (rows go before their files): no damage
                cache.delete(key, retry=False)
        except ERRORS as e:
            self.db.fault(e, f"dropping {key}")
            return
        self._changed(key)
        log.warning("dropped cached %s: %s", key, why)


def _held(record: bytes, decoded: codec.Decoded) -> int:
    return len(record) + len(decoded.inline)


def _read_whole(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from the start of ``fd`` (fewer only if the file is shorter)."""
    body = os.read(fd, size)
    if len(body) == size or not body:
        return body
    parts = [body]
    got = len(body)
    while got < size and (more := os.read(fd, size - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)
