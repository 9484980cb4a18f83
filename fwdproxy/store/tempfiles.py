"""The disk tier's temp files: their names, where their bodies are committed, and sweeping dead writers' files.

A temp file is `<tmp>/<32 hex>.part`, held under an exclusive flock by its writer (writer.py) for its whole
life; its hex name fixes where its body will live in the store (`ab/cd/<rest>.val`, diskcache's layout).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from typing import BinaryIO

Opener = Callable[[int], BinaryIO]
"""Wraps a temp file's descriptor in a file object (tests pass one that fails like a full disk)."""
SUFFIX = ".part"


def open_unbuffered(fd: int) -> BinaryIO:
    """The default Opener: unbuffered, so a reader of the growing file sees every accepted byte."""
    return open(fd, "wb", buffering=0)


def target_name(temp_name: str) -> str:
    """The store-relative path a temp file's body is committed to."""
    hexname = temp_name.removesuffix(SUFFIX)
    return os.path.join(hexname[:2], hexname[2:4], hexname[4:] + ".val")


def create(tmp_dir: str) -> tuple[str, int]:
    """A new temp file, locked by us; retried if a stale-file sweep got to it first."""
    for _ in range(5):
        path = os.path.join(tmp_dir, os.urandom(16).hex() + SUFFIX)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:  # the directory was removed under us
            os.makedirs(tmp_dir, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A sweeper only unlinks while holding the lock: once we hold it, a live link means safe.
            if os.fstat(fd).st_nlink > 0:
                return path, fd
        except BlockingIOError:
            pass  # a sweeper holds it and is about to unlink it
        os.close(fd)
    raise OSError(errno.EAGAIN, f"could not create a temp file in {tmp_dir}")


def clean_stale(tmp_dir: str, store_dir: str, referenced: Callable[[str], bool]) -> int:
    """Remove temp files no live writer holds, and their store copies no entry references."""
    try:
        names = [n for n in os.listdir(tmp_dir) if n.endswith(SUFFIX)]
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        path = os.path.join(tmp_dir, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # its writer committed or aborted meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live writer, maybe in another process
        try:
            filename = target_name(name)
            copy = os.path.join(store_dir, filename)
            # Killed between hard link and database commit: the copy is an orphan.
            if os.path.exists(copy) and not referenced(filename):
                os.unlink(copy)
            os.unlink(path)
            removed += 1
        finally:
            os.close(fd)
    return removed
