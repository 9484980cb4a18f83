"""When the disk tier's database may be used: opening, noticing damage or removal, reopening empty.

No caller ever reads from a database that failed: a fault classified as broken, or a db file that was
deleted or replaced (checked by inode before every operation), makes the next use open an empty one.
Damaged stores are moved aside to `store.broken-<hex>` and deleted by a background thread.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import diskcache

from fwdproxy.store import backend
from fwdproxy.store.backend import Fault
from fwdproxy.store.tempfiles import clean_stale

log = logging.getLogger("fwdproxy.store")

REOPEN_DELAY = 5.0
"""After a failed open, seconds to wait before trying again (each attempt logs a line)."""
SHED_FRACTION = 0.1
"""Share of the stored body bytes freed each time a write finds the file system full."""
ERRORS = (sqlite3.Error, diskcache.Timeout, OSError)
"""What diskcache, sqlite3 and the file system raise for storage faults."""


def _ident(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Database:
    """The disk tier's diskcache handle, shared by threads; several processes may open one directory."""

    def __init__(self, directory: str, *, size_limit: int, timeout: float) -> None:
        self.directory = directory
        self.store_dir = os.path.join(directory, "store")
        self.tmp_dir = os.path.join(directory, "tmp")
        self.db_path = os.path.join(self.store_dir, diskcache.core.DBNAME)
        self.size_limit = size_limit
        self.timeout = timeout
        self.disk_full = False
        """The last write failed for lack of space; cleared by the next successful commit."""
        self.errors = 0
        self.last_error = ""
        self.evictions = 0
        """Entries this process evicted to keep within size_limit (others' evictions are not seen)."""
        self.sweeper: threading.Thread | None = None
        """The thread deleting the last store moved aside (tests join it)."""
        self.generation = 0
        """Counts (re)openings: when it changes, copies taken from the old database are void."""
        self._lock = threading.RLock()
        self._seen = threading.local()  # the generation each thread last used, to judge its faults
        self._cache: diskcache.Cache | None = None
        self._ident: tuple[int, int] | None = None
        self._retry_at = 0.0
        self.before_shed: Callable[[diskcache.Cache], None] | None = None
        """Called before bodies are shed for a full disk: the owner writes the LRU order it holds back."""

    def live(self, *, recheck: bool = True) -> diskcache.Cache | None:
        """The open database, reopened if its file was deleted or replaced; None while unavailable.

        ``recheck=False`` skips the stat() that notices a replaced file: for a caller that has just called
        live() in the same step (a disk hit would otherwise stat the file twice)."""
        with self._lock:
            if recheck and self._cache is not None and _ident(self.db_path) != self._ident:  # one stat()
                log.warning("cache database %s was removed or replaced; reopening it", self.db_path)
                self._close()
            if self._cache is None and time.monotonic() >= self._retry_at:
                self._cache = self._open()
            self._seen.generation = self.generation
            return self._cache

    def _connect(self) -> diskcache.Cache:
        # Owner only: the cache holds responses from intercepted HTTPS, cookies included.
        for folder in (self.directory, self.store_dir, self.tmp_dir):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        cache = backend.open_cache(self.store_dir, size_limit=self.size_limit, timeout=self.timeout)
        self._ident = _ident(self.db_path)
        self.generation += 1
        return cache

    def _unavailable(self, err: BaseException) -> None:
        self.note(err, "opening the cache")
        log.warning("cannot open the cache in %s (%s); caching is off for now", self.directory, err)
        self._retry_at = time.monotonic() + REOPEN_DELAY

    def _open(self) -> diskcache.Cache | None:
        try:
            cache = self._connect()
        except ERRORS as e:
            if backend.classify(e) is not Fault.BROKEN or self._sound():
                self._unavailable(e)
                return None
            log.warning("cache database %s is unreadable (%s); starting an empty cache", self.db_path, e)
            self._move_aside()
            try:
                cache = self._connect()
            except ERRORS as e2:
                self._unavailable(e2)
                return None

        def is_referenced(filename: str) -> bool:
            try:
                return backend.referenced(cache, filename)
            except ERRORS:
                return True  # keep it: at worst a leaked file, never a lost entry

        try:
            if removed := clean_stale(self.tmp_dir, self.store_dir, is_referenced):
                log.info("removed %d unfinished bodies left by a stopped process", removed)
        except OSError as e:
            self.note(e, "removing stale temp files")
        for leftover in glob.glob(glob.escape(self.store_dir) + ".broken-*"):
            self._remove_later(leftover)
        return cache

    def _close(self) -> None:
        cache, self._cache, self._ident = self._cache, None, None
        if cache is not None:
            with contextlib.suppress(sqlite3.Error):  # closing a broken connection may complain; it is gone
                cache.close()

    def _move_aside(self) -> None:
        aside = f"{self.store_dir}.broken-{os.urandom(4).hex()}"
        try:
            os.rename(self.store_dir, aside)
        except FileNotFoundError:
            return
        except OSError as e:
            self.note(e, "moving a broken cache aside")
            return
        self._remove_later(aside)

    def _remove_later(self, path: str) -> None:
        # A big cache takes seconds to delete: not on the caller's (the event loop's) time.
        self.sweeper = threading.Thread(
            target=shutil.rmtree, args=(path,), kwargs={"ignore_errors": True}, daemon=True
        )
        self.sweeper.start()

    def _sound(self) -> bool:
        """Whether a fresh connection finds the database file intact (SQLite's quick_check)."""
        try:
            with contextlib.closing(sqlite3.connect(self.db_path, timeout=self.timeout)) as con:
                result = con.execute("PRAGMA quick_check").fetchall()
        except sqlite3.Error as e:
            return backend.classify(e) is Fault.BUSY  # locked is no evidence of damage
        if result != [("ok",)]:
            self.note(RuntimeError(f"quick_check: {result[:3]}"), "checking the cache database")
            return False
        return True

    def _recover(self, *, damaged: bool = False) -> None:
        with self._lock:
            # Only the database we opened may be moved aside (another process may have recovered
            # first, and its fresh store must stay), and only when a fresh look confirms the damage:
            # an error that was transient (say, out of file descriptors) must not wipe the cache.
            ours = self._ident is not None and _ident(self.db_path) == self._ident
            self._close()
            if ours and (damaged or not self._sound()):
                log.warning("cache database %s is damaged; starting an empty cache", self.db_path)
                self._move_aside()
            self._retry_at = 0.0
            self._cache = self._open()

    def rows(self, doing: str, page: int = 256) -> Iterator[tuple[int, str, str | None, bytes]]:
        """(rowid, key, filename, record) of every row in rowid order, read ``page`` rows at a time so no
        lock is held between pages; a fault ends the walk (reported as ``doing``)."""
        after = 0
        while (cache := self.live()) is not None:
            try:
                rows = backend.page(cache, after, page)
            except ERRORS as e:
                self.fault(e, doing)
                return
            if not rows:
                return
            yield from rows
            after = rows[-1][0]

    def note(self, err: BaseException, doing: str) -> None:
        """Count a fault without logging it."""
        self.errors += 1
        self.last_error = f"{doing}: {err}"

    def fault(self, err: BaseException, doing: str) -> None:
        """Count, log (one line per incident; once per spell of disk full) and react to a storage fault."""
        self.note(err, doing)
        match backend.classify(err):
            case Fault.FULL:
                # Every incident frees space (a cache yields the disk), one line per spell of full.
                freed = self._shed()
                log.log(
                    logging.DEBUG if self.disk_full else logging.WARNING,
                    "disk full while %s (%s): freed %d bytes of least recently used bodies",
                    doing,
                    err,
                    freed,
                )
                self.disk_full = True
            case Fault.BUSY:
                log.info("cache database busy while %s; treated as a miss", doing)
            case Fault.BROKEN:
                if getattr(self._seen, "generation", None) != self.generation:
                    return  # this thread's database was already replaced by another thread's recovery
                log.warning("cache database failed while %s (%s); reopening it", doing, err)
                self._recover()
            case Fault.OTHER:
                log.warning("cache error while %s: %s", doing, err)

    def _shed(self) -> int:
        # When the file system (not size_limit) is full, SQLite may not even manage a DELETE, so free
        # space by unlinking body files directly; reads then find their rows without a file and drop
        # them, and evict() settles the accounting once there is room.
        if (cache := self._cache) is None:
            return 0
        if self.before_shed is not None:
            self.before_shed(cache)
        try:
            return backend.shed(cache, SHED_FRACTION)
        except ERRORS as e:
            self.note(e, "freeing disk space")
            return 0

    def stored(self) -> None:
        """Note a successful commit: a disk that was full has room again."""
        if self.disk_full:
            log.info("the cache disk has room again; storing resumed")
            self.disk_full = False

    def check(self) -> bool:
        """Run SQLite's quick_check on a fresh connection, reopening an empty cache on damage.

        A live connection may keep answering from pages it cached after the file was overwritten; a
        periodic health task calls this to catch that. Returns whether the database is sound.
        """
        if self.live() is None:
            return False
        if self._sound():
            return True
        self._recover(damaged=True)
        return False

    def close(self) -> None:
        """Close this thread's connection; the next use reopens."""
        with self._lock:
            self._close()
