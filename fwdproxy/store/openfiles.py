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


@dataclass(frozen=True, slots=True)
class Sent:
    """What OpenFiles.send did."""

    rest: bytes
    """The bytes the socket did not take, in order (the end of the head and the body), for the caller's writer."""
    written: int
    """Bytes written to the socket directly (head and body)."""
    whole: bool
    """False: the file ended before its confirmed size, so ``rest`` is short; the response cannot be finished
    and the caller must close the connection after ``rest``."""


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
        with self._lock:
            found = self._confirmed(key, path, seen)
            if found is None:
                return None
            held, size = found
            try:
                body = _pread_whole(held.fd, size)
            except OSError:
                self._forget(key)
                return None
            if len(body) != size:
                self._forget(key)
                return None
            return body

    def send(self, key: str, path: str, seen: Seen, head: bytes, out: int) -> Sent | None:
        """Write ``head`` and then the whole body of ``key`` to the non-blocking socket ``out``, the body
        straight from its file by ``sendfile`` (no copy of it in this process), while the file at ``path``
        is the very file ``seen`` describes; what the socket did not take at once is read from the file and
        handed back (``Sent.rest``) for the caller's own writer. None: it is not that file (or the file
        fails before a byte is written) and nothing was written: the caller reads the entry anew.

        Everything happens under the lock, so the kept descriptor cannot be closed (and its number reused)
        by another thread in the middle. A socket error stops the direct writes: the rest goes to the
        caller's writer, which meets the error its own way."""
        with self._lock:
            found = self._confirmed(key, path, seen)
            if found is None:
                return None
            held, size = found
            wrote = sent = 0
            try:
                wrote = os.write(out, head)
                while wrote == len(head) and sent < size:
                    n = os.sendfile(out, held.fd, sent, size - sent)
                    if n == 0:
                        break  # the file ended early: the read below finds it short
                    sent += n
            except OSError:
                # The socket's buffer is full (BlockingIOError): the writer sends the rest as it drains. Any
                # other socket error: the writer meets it again and handles it its own way. A file error:
                # the read below fails too.
                pass
            try:
                body = _pread_whole(held.fd, size - sent, sent) if sent < size else b""
            except OSError:
                body = b""
            whole = len(body) == size - sent
            if not whole:
                self._forget(key)
                if wrote == 0:
                    return None
            rest = body if wrote == len(head) else head[wrote:] + body
            return Sent(rest, wrote + sent, whole)

    def _confirmed(self, key: str, path: str, seen: Seen) -> tuple[_Held, int] | None:
        """The kept (or newly opened) descriptor of ``key`` and the body's size, while it is the very file
        ``seen`` describes (module doc); None (the descriptor closed) when it is not. Under the lock."""
        now = time.monotonic()
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
            if st.st_nlink == 0 or (seen[0], st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size) != seen:
                self._forget(key)
                return None
            if now - held.checked >= self.recheck:
                at = os.stat(path)
                if (at.st_dev, at.st_ino) != (st.st_dev, st.st_ino):
                    self._forget(key)
                    return None
                held.checked = now
        except OSError:
            self._forget(key)
            return None
        return held, st.st_size

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


def _pread_whole(fd: int, size: int, offset: int = 0) -> bytes:
    """Up to ``size`` bytes of ``fd`` from ``offset`` (fewer only if the file is shorter); the descriptor's
    offset is left alone."""
    body = os.pread(fd, size, offset)
    if len(body) == size or not body:
        return body
    parts = [body]
    got = len(body)
    while got < size and (more := os.pread(fd, size - got, offset + got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)
