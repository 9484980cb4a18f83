"""How the disk tier uses diskcache: a Disk that adopts finished temp files, raw queries, fault kinds.

diskcache keeps one row per key (Cache table: key, raw, store_time, access_time, size, mode, filename,
value) and evicts by access_time (least-recently-used) once `volume()` (database pages + the size
column) passes size_limit, removing each evicted row's file. Our rows put the codec record in `value`;
a big body is a `.val` file in diskcache's own `ab/cd/` layout, with its length in `size`, so eviction
and size accounting work unchanged. The queries below read that schema directly (pinned by
diskcache>=5.6,<5.7 in pyproject) where diskcache has no call that leaves LRU order alone.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import inspect
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

SETTINGS: dict[str, Any] = {
    "eviction_policy": "least-recently-used",
    "statistics": 0,  # hit counting would add a write to every read
    # diskcache culls ten rows at a time when over the limit: with 1 GiB bodies that wipes the cache.
    # evict() below removes just enough, least recently used first.
    "cull_limit": 0,
    # Issue 4 bounds resident memory: no mmap of the database, and an 8 MiB page cache per connection.
    "sqlite_mmap_size": 0,
    "sqlite_cache_size": 2**11,
}


@dataclass(frozen=True, slots=True)
class Adopt:
    """The value handed to Cache.set: a record, plus the finished temp file to adopt as the body."""

    record: bytes
    temp_path: str | None = None
    filename: str = ""
    """Store-relative path the temp file is linked to."""
    size: int = 0


@dataclass(frozen=True, slots=True)
class Row:
    """What Cache.get returns through BodyDisk.fetch: the body file (if any) and the record."""

    filename: str | None
    record: bytes


FOREIGN = Row(None, b"")
"""A row diskcache or another program wrote: not ours, read as a miss."""


def _link(source: str, target: str) -> None:
    for attempt in range(10):
        try:
            os.link(source, target)
            return
        except FileNotFoundError:
            # diskcache prunes empty ab/cd directories, maybe just now; a missing source is fatal.
            if attempt == 9 or not os.path.exists(source):
                raise
            os.makedirs(os.path.dirname(target), exist_ok=True)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            os.rename(source, target)  # no hard links here: a crash may now leak (never expose) a file
            return


class BodyDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache is untyped
    """A diskcache Disk whose store() adopts a temp file by hard link and whose fetch() reads nothing."""

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        if not isinstance(value, Adopt):
            raise TypeError(f"the fwdproxy store only writes Adopt values, got {type(value).__name__}")
        if value.temp_path is None:
            return 0, MODE_RAW, None, sqlite3.Binary(value.record)
        _link(value.temp_path, os.path.join(self._directory, value.filename))
        return value.size, MODE_BINARY, value.filename, sqlite3.Binary(value.record)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Row:
        # The body file is opened by DiskStore, which checks its length; here we only pass the row on.
        if mode in (MODE_RAW, MODE_BINARY) and isinstance(value, bytes):
            return Row(filename, value)
        return FOREIGN


COLUMNS = ("rowid", "key", "raw", "access_time", "size", "mode", "filename", "value")
"""The columns of diskcache's Cache table that the queries below read or write."""


def diskcache_problems() -> list[tuple[str, str]]:
    """What no longer matches diskcache 5.6 among the internals used here, as (name, why) pairs.

    The queries use ``Cache._sql`` and ``Cache._con`` (private) and the Cache table's columns; BodyDisk
    overrides ``Disk.store``/``fetch`` and reads ``Disk._directory``. Listed in docs/mitmproxy-notes.md §23;
    addons/_mitm/__init__.py refuses to start the proxy when this is not empty.
    """
    found: list[tuple[str, str]] = []
    for name in ("_sql", "_con"):
        if not isinstance(inspect.getattr_static(diskcache.Cache, name, None), property):
            found.append((f"diskcache.Cache.{name}", "no longer a property"))
    for name, params in (
        ("store", ("self", "value", "read", "key")),
        ("fetch", ("self", "mode", "filename", "value", "read")),
    ):
        method = getattr(diskcache.Disk, name, None)
        if method is None or tuple(inspect.signature(method).parameters) != params:
            found.append((f"diskcache.Disk.{name}", f"parameters differ from {params}"))
    if "_directory" not in diskcache.Disk.__init__.__code__.co_names:
        found.append(("diskcache.Disk.__init__", "no longer sets _directory"))
    schema = " ".join(
        c for c in diskcache.Cache.__init__.__code__.co_consts if isinstance(c, str) and "TABLE" in c
    )
    if missing := [c for c in COLUMNS if f" {c} " not in schema]:
        found.append(("diskcache.Cache table", f"no column {', '.join(missing)}"))
    return found


def open_cache(directory: str, *, size_limit: int, timeout: float) -> diskcache.Cache:
    """Open (or create) the database; raises sqlite3.Error or OSError."""
    return diskcache.Cache(directory, timeout=timeout, disk=BodyDisk, size_limit=size_limit, **SETTINGS)


class Fault(enum.Enum):
    """What kind of storage failure an exception means."""

    BUSY = "busy"
    """Another process holds the database lock too long: a miss, nothing to repair."""
    FULL = "full"
    """No space (or quota) left."""
    BROKEN = "broken"
    """The database is corrupt, unreadable or was moved away: reopen it (empty if quick_check fails)."""
    OTHER = "other"


# Not SQLITE_CANTOPEN: running out of file descriptors looks like that, and is no reason to reopen.
_BROKEN = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR", "SQLITE_READONLY_DBMOVED")


def classify(err: BaseException) -> Fault:
    """The kind of an exception raised by diskcache, sqlite3 or the file system."""
    if isinstance(err, diskcache.Timeout):
        return Fault.BUSY
    if isinstance(err, sqlite3.Error):
        name = getattr(err, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return Fault.BUSY
        if name == "SQLITE_FULL":
            return Fault.FULL
        return Fault.BROKEN if name.startswith(_BROKEN) or type(err) is sqlite3.DatabaseError else Fault.OTHER
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return Fault.FULL
    return Fault.OTHER


def end_transaction(cache: diskcache.Cache) -> None:
    """Roll back a transaction a failed COMMIT left open, so the connection stays usable."""
    con = cache._con
    if con.in_transaction:
        con.rollback()


def row(cache: diskcache.Cache, key: str, length: int | None = None) -> Row | None:
    """A key's body file and record (only its first `length` bytes if given), leaving LRU order alone."""
    column = "value" if length is None else f"substr(value, 1, {int(length)})"
    found = cache._sql(f"SELECT filename, {column} FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
    if found is None or not isinstance(found[1], bytes):
        return None
    return Row(found[0], found[1])


def read(cache: diskcache.Cache, key: str) -> Row | None:
    """A key's body file and record, as diskcache's get() would return them, without its write.

    With the least-recently-used policy, diskcache's get() updates access_time in a write transaction on
    every read: on a busy disk tier that is most of a hit's cost. Readers use this and record what they
    read with touch() in batches instead.
    """
    found = cache._sql("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
    if found is None or found[0] not in (MODE_RAW, MODE_BINARY) or not isinstance(found[2], bytes):
        return None
    return Row(found[1], found[2])


def touch(cache: diskcache.Cache, used: dict[str, float]) -> None:
    """Set each key's access_time (LRU position) to when it was last read, in one transaction."""
    with cache.transact(retry=False):
        for key, when in used.items():
            cache._sql("UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1", (when, key))


def prefix_rows(cache: diskcache.Cache, primary: str, separator: str) -> list[tuple[str, bytes]]:
    """(key, record) of the key equal to primary and of every key starting with primary + separator."""
    # Keys compare by memcmp of their UTF-8, so [primary, primary + next char after separator) holds
    # exactly primary and primary + separator + anything, and the (key, raw) index serves the range.
    upper = primary + chr(ord(separator) + 1)
    rows = cache._sql(
        "SELECT key, value FROM Cache WHERE key >= ? AND key < ? AND raw = 1", (primary, upper)
    ).fetchall()
    return [(k, bytes(v)) for k, v in rows if isinstance(k, str) and isinstance(v, bytes)]


def page(cache: diskcache.Cache, after: int, limit: int) -> list[tuple[int, str, str | None, bytes]]:
    """(rowid, key, filename, record) of up to limit rows after rowid `after`, in rowid order."""
    rows = cache._sql(
        "SELECT rowid, key, filename, value FROM Cache WHERE rowid > ? AND raw = 1 ORDER BY rowid LIMIT ?",
        (after, limit),
    ).fetchall()
    return [(r, k, f, bytes(v)) for r, k, f, v in rows if isinstance(k, str) and isinstance(v, bytes)]


def evict(cache: diskcache.Cache, size_limit: int, evicted_key: Callable[[str], object] = str) -> int:
    """Delete least-recently-used rows (and their files) until volume() is within size_limit; how many.

    ``evicted_key`` is called with each evicted key once its row is gone.
    """
    evicted = 0
    while (excess := cache.volume() - size_limit) > 0:
        doomed: list[int] = []
        files: list[str] = []
        keys: list[object] = []
        with cache.transact(retry=False):
            rows = cache._sql(
                "SELECT rowid, filename, size + length(value), key FROM Cache ORDER BY access_time LIMIT 100"
            ).fetchall()
            for rowid, filename, size, key in rows:
                doomed.append(rowid)
                files.append(filename)
                keys.append(key)
                excess -= size or 0
                if excess <= 0:
                    break
            cache._sql(f"DELETE FROM Cache WHERE rowid IN ({','.join('?' * len(doomed))})", doomed)
        if not doomed:
            return evicted  # the empty database alone is over the limit
        for filename in files:  # after the commit, as diskcache does: no row ever lacks its file
            if filename:
                cache.disk.remove(filename)
        for key in keys:
            if isinstance(key, str):
                evicted_key(key)
        evicted += len(doomed)
    return evicted


def overhead(cache: diskcache.Cache, volume: int) -> int:
    """The part of volume() that eviction cannot free: the database pages (SQLite keeps its file's size)."""
    return max(0, volume - int(cache.reset("size")))


def shed(cache: diskcache.Cache, fraction: float) -> int:
    """Unlink the least recently used body files holding `fraction` of all body bytes; bytes freed.

    The files go first, by reading the database only, as the disk may be too full for SQLite to
    write; their rows are deleted after if there is room now, else readers drop them one by one.
    """
    (total,) = cache._sql("SELECT coalesce(sum(size), 0) FROM Cache").fetchone()
    goal, freed, gone = total * fraction, 0, []
    rows = cache._sql("SELECT filename, size FROM Cache WHERE filename IS NOT NULL ORDER BY access_time")
    for filename, size in rows:
        if freed >= goal:
            break
        try:
            os.unlink(os.path.join(cache.directory, filename))
        except FileNotFoundError:
            continue
        freed += size
        gone.append(filename)
    rows.close()
    with contextlib.suppress(sqlite3.Error, diskcache.Timeout):  # still full: readers drop the rows
        for at in range(0, len(gone), 500):
            batch = gone[at : at + 500]
            with cache.transact(retry=False):
                cache._sql(f"DELETE FROM Cache WHERE filename IN ({','.join('?' * len(batch))})", batch)
    return int(freed)


def replace_record(cache: diskcache.Cache, key: str, record: bytes) -> None:
    """Overwrite a key's record in place, keeping its body file (the caller holds a transaction)."""
    cache._sql("UPDATE Cache SET value = ? WHERE key = ? AND raw = 1", (sqlite3.Binary(record), key))


def referenced(cache: diskcache.Cache, filename: str) -> bool:
    """Whether any row owns this body file (a full scan: only used after crashes and by verify)."""
    return cache._sql("SELECT 1 FROM Cache WHERE filename = ? LIMIT 1", (filename,)).fetchone() is not None


def filenames(cache: diskcache.Cache) -> set[str]:
    """Every body file the rows own."""
    return {f for (f,) in cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL") if f}
