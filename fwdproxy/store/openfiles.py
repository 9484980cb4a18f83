"""Body files kept open between hits, as nginx's ``open_file_cache`` and Squid keep theirs.

A disk hit the fast hit layer answers again reads the body file whole. Opening and closing it each time
costs two system calls and a path lookup; here the descriptor of a recently hit file stays open (at most
OPEN_MAX of them, least recently used closed first) and each hit is one ``fstat`` and one ``pread``. No body
byte is kept in memory: every hit reads the file.

A kept descriptor is used only while it still is the file whose checksum this process confirmed:

- ``fstat`` on the descriptor must show the confirmed identity (inode, size, mtime, ctime: DiskStore's
  ``_verified`` rule), so a body written to in place (a flipped byte, a truncation) is noticed at once;
- the file must still be linked (``st_nlink``): a body deleted, evicted, shed or renamed over is never
  read from the descriptor that outlived it;
- every RECHECK seconds its path is ``stat``-ed and must still name that file (nginx's
  ``open_file_cache_valid``), for the odd case of a second link to it;
- the store's writes (commit, 304 update, delete, drop, eviction) close the key's descriptor (``forget``),
  and the caller (TieredStore.disk_body) reads it only while the key's generation marks are unchanged.

A descriptor whose file was removed by another process holds that file's blocks until it is closed:
``sweep`` closes those (the store calls it on its own reads at most every RECHECK seconds and from its
periodic health check), so at most OPEN_MAX bodies of removed entries wait for their disk space.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from dataclasses import dataclass

from cachetools import LRUCache

OPEN_MAX = 256
"""Descriptors kept open (in the range nginx's open_file_cache is set to): enough for the hot set of bodies
big enough for files; at most an eighth of the process's descriptor limit (default_max), so client and
origin connections keep the rest."""
RECHECK = 1.0
"""Seconds a kept descriptor's path is trusted to name its file before it is stat()-ed again."""

Seen = tuple[bytes, int, int, int, int]
"""(stamp, inode, mtime_ns, ctime_ns, size) of a body file whose checksum was confirmed (DiskStore)."""


@dataclass(slots=True)
class _Held:
    fd: int
    path: str
    seen: Seen
    checked: float
    """When (time.monotonic) ``path`` was last seen naming this descriptor's file."""


class _ClosingLRU(LRUCache[str, _Held]):
    """An LRUCache that closes the descriptor of the entry it evicts."""

    def popitem(self) -> tuple[str, _Held]:
        key, held = super().popitem()
        _close(held.fd)
        return key, held


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def default_max() -> int:
    """OPEN_MAX, or an eighth of the soft RLIMIT_NOFILE when that is lower (1024: 128)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return OPEN_MAX if soft == resource.RLIM_INFINITY else max(1, min(OPEN_MAX, soft // 8))


class OpenFiles:
    """At most ``maxsize`` body files kept open by key (see the module doc). Thread-safe."""

    def __init__(self, maxsize: int | None = None, recheck: float = RECHECK) -> None:
        maxsize = default_max() if maxsize is None else maxsize
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.recheck = recheck
        self._held = _ClosingLRU(maxsize)
        self._lock = threading.Lock()
        self._swept = time.monotonic()

    def __len__(self) -> int:
        return len(self._held)

    def read(self, key: str, path: str, seen: Seen) -> bytes | None:
        """The whole body of ``key`` from its file at ``path`` while that is the very file ``seen`` describes,
        through a kept descriptor (opened now if none is kept); None when it is not, or on an error (the
        descriptor is closed then: the caller reads the entry anew, checksum and all)."""
        now = time.monotonic()
        with self._lock:
            held = self._held.get(key)
            if held is not None and (held.path != path or held.seen != seen):
                self._forget(key)
                held = None
            if held is None:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return None
                held = _Held(fd, path, seen, now)
                self._held[key] = held  # may close the least recently used one
            try:
                st = os.fstat(held.fd)
                if (
                    st.st_nlink == 0
                    or (seen[0], st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size) != seen
                ):
                    self._forget(key)
                    return None
                if now - held.checked >= self.recheck:
                    at = os.stat(path)
                    if (at.st_dev, at.st_ino) != (st.st_dev, st.st_ino):
                        self._forget(key)
                        return None
                    held.checked = now
                body = _pread_whole(held.fd, st.st_size)
            except OSError:
                self._forget(key)
                return None
            if len(body) != st.st_size:
                self._forget(key)
                return None
            return body

    def forget(self, key: str) -> None:
        """Close the descriptor kept for ``key``, if any (its entry was written, deleted or evicted)."""
        with self._lock:
            self._forget(key)

    def _forget(self, key: str) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            _close(held.fd)

    def clear(self) -> None:
        """Close every kept descriptor."""
        with self._lock:
            while self._held:
                self._held.popitem()  # closes it

    def sweep(self, *, force: bool = False) -> int:
        """Close the descriptors of files removed since they were opened (no link left), so their disk space
        is freed; how many. Does nothing when the last sweep was under RECHECK seconds ago, unless ``force``."""
        now = time.monotonic()
        if not force and now - self._swept < self.recheck:
            return 0
        self._swept = now
        with self._lock:
            removed = []
            for key, held in list(self._held.items()):
                try:
                    gone = os.fstat(held.fd).st_nlink == 0
                except OSError:
                    gone = True
                if gone:
                    removed.append(key)
            for key in removed:
                self._forget(key)
            return len(removed)


def _pread_whole(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from the start of ``fd`` (fewer only if the file is shorter); the descriptor's
    offset is left alone."""
    body = os.pread(fd, size, 0)
    if len(body) == size or not body:
        return body
    parts = [body]
    got = len(body)
    while got < size and (more := os.pread(fd, size - got, got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)
