"""Records the store hands out: entries, open body files, write outcomes, statistics."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

from fwdproxy.http_model import StoredResponse

VARIANT_SEPARATOR = "\0"
"""Joins a primary key and a Vary secondary key; no URL or header value contains a NUL."""


def variant_key(primary: str, secondary: str) -> str:
    """The store key of one variant of a primary key (RFC 9111 §4.1); "" is the no-Vary variant.

    Raises:
        ValueError: the primary key holds a NUL, so its variants could mix with another URL's.
    """
    if VARIANT_SEPARATOR in primary:
        raise ValueError(f"{primary!r} contains NUL; build primary keys from a normalised URL")
    return f"{primary}{VARIANT_SEPARATOR}{secondary}"


PARTIAL_PREFIX = "partial:"
"""Starts the store key of a URL's partial entry (RFC 9111 §3.3). A primary key starts with an upper-case
method, so no primary key, and no variant, has this prefix: a lookup's listing never holds a partial entry."""


def partial_key(primary: str) -> str:
    """The store key of the partial entry (pieces of one representation) of a primary key."""
    return PARTIAL_PREFIX + primary


def is_partial_key(key: str) -> bool:
    return key.startswith(PARTIAL_PREFIX)


class Outcome(enum.StrEnum):
    """What became of a streamed body when it was committed or abandoned."""

    STORED = "stored"
    """The entry is visible to every reader of the store."""
    LENGTH_MISMATCH = "length-mismatch"
    """The body was shorter or longer than the metadata said: an incomplete response, never stored."""
    TOO_BIG = "too-big"
    """The body passed the writer's max_length, so it was dropped while streaming."""
    NO_ROOM = "no-room"
    """The body would not fit within the disk limit beside what is stored and in flight (--disk-cache-size):
    dropped while streaming, so the disk never holds more than the limit."""
    DISK_ERROR = "disk-error"
    """The disk or database failed (full, removed, corrupt, busy); the store logged why."""
    ABORTED = "aborted"
    """The caller aborted the writer, or committed it twice."""


@dataclass(slots=True)
class BodyFile:
    """A stored body open for reading; the caller streams it (e.g. with os.sendfile) and closes it.

    The file stays readable after the entry is evicted or replaced: POSIX keeps an unlinked inode
    alive while it is open, so a reader never sees a body vanish halfway.
    """

    path: str
    """Where the body lived when it was opened (informational; use file, not a fresh open)."""
    length: int
    """Exact body length, already checked against the file size."""
    file: BinaryIO
    """Open for reading, positioned at 0."""
    digest: str = ""
    """The checksum this file must match before it is served, or "" when this process already confirmed this
    very file (see DiskStore.confirm and check.body_matches)."""
    seen: tuple[bytes, int, int, int, int] = (b"", 0, 0, 0, 0)
    """(stamp, inode, mtime, ctime, size) of the file when it was opened: what a confirmation is about."""

    def fileno(self) -> int:
        """The descriptor, for os.sendfile or loop.sendfile."""
        return self.file.fileno()

    def close(self) -> None:
        """Release the descriptor (idempotent)."""
        self.file.close()

    def __enter__(self) -> BodyFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored response: its metadata and its body, in memory or in an open file."""

    meta: StoredResponse
    body: bytes | BodyFile
    """bytes for bodies read whole (checksum verified); a BodyFile for big ones (length verified, and the
    checksum too unless ``body.digest`` is set: then the caller confirms it before serving)."""
    stamp: bytes
    """Changes whenever the entry is rewritten (commit or update), so two versions can be told apart."""


@dataclass(frozen=True, slots=True)
class TierStats:
    """Occupancy of one tier."""

    entries: int
    bytes: int
    """Bytes counted against limit: bodies and metadata estimates (memory), body files and database (disk)."""
    limit: int
    evictions: int
    """Entries evicted to stay within limit by this process (other processes' evictions are not counted)."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What `fwdproxy cache stats` and the metrics show."""

    disk: TierStats
    memory: TierStats | None = None
    disk_full: bool = False
    """The last write failed for lack of space; cleared by the next successful commit."""
    errors: int = 0
    """Storage faults seen by this process (each also logged once)."""
    last_error: str = ""


class Verification(enum.StrEnum):
    """The result of checking one entry's body against its recorded length and checksum."""

    OK = "ok"
    MISSING = "missing"
    """No such entry (or it could not be read)."""
    BAD = "bad"
    """Length or checksum mismatch, or an undecodable record; the entry was deleted."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Totals of a full verification pass."""

    checked: int
    bad: int
    """Entries found damaged and deleted."""
    orphans: int
    """Body files that no entry referenced, removed."""
