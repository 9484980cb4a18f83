"""The disk budget: committed entries plus the bodies being written stay within --disk-cache-size.

A writer reserves room before its temp file grows: it extends the file (sparse, no blocks written) to the
size it reserved, so every process sharing the directory sees the reservation as the file's apparent size.
What is in flight is then the sum of the sizes of `tmp/*.part`, one directory scan per reservation, and the
room left is the limit minus that minus the committed volume (body files plus database pages). Reservations
are made under an flock on `tmp/.budget`, so two processes never both take the last free bytes; when the
room is short, least recently used entries are evicted, and when even an empty cache could not make room
(the other downloads in flight hold it) the reservation fails and the writer is abandoned.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from fwdproxy.store.tempfiles import SUFFIX

STEP_MIN = 64 * 2**10
"""Smallest reservation step for a body of unknown length (small caches: a step evicts at most 1/64 of the
limit beyond what a body needs, and its unused tail is given back at commit)."""
STEP_MAX = 8 * 2**20
"""Largest step: what a download may hold beyond its written bytes, so a crowd of them cannot starve others."""
LOCK_NAME = ".budget"


def step(limit: int) -> int:
    """Reservation step for a body of unknown length under a disk limit: 1/64 of it, within 64 KiB-8 MiB."""
    return max(STEP_MIN, min(STEP_MAX, limit // 64))


def in_flight(tmp_dir: str, exclude: str | None = None) -> int:
    """Bytes reserved by all temp files in tmp_dir (their apparent sizes), but ``exclude``."""
    total = 0
    try:
        with os.scandir(tmp_dir) as entries:
            for entry in entries:
                if entry.name.endswith(SUFFIX) and entry.path != exclude:
                    with contextlib.suppress(FileNotFoundError):  # committed or aborted meanwhile
                        total += entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0
    return total


@contextlib.contextmanager
def locked(tmp_dir: str) -> Iterator[None]:
    """Hold the directory's budget lock (all processes): reservations and evictions happen one at a time."""
    fd = os.open(os.path.join(tmp_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock
