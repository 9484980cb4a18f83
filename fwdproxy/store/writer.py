"""Streaming a body to a locked temp file, and removing the temp files of writers that died.

A temp file is `<tmp>/<32 hex>.part`, held under an exclusive flock by its writer for its whole life.
Its hex name also fixes where its body will live in the store (`ab/cd/<rest>.val`, diskcache's own
layout), and commit hard-links it there before the database row appears, unlinking the temp file only
after. So whatever moment a process is killed at, the next open finds either nothing, or an unlocked
temp file whose store copy is committed (keep) or not (remove): never a visible partial body.
"""

from __future__ import annotations

import errno
import logging
import os
import weakref
from typing import BinaryIO, Protocol

from fwdproxy.http_model import StoredResponse
from fwdproxy.store import codec
from fwdproxy.store.handle import Database
from fwdproxy.store.record import Outcome
from fwdproxy.store.tempfiles import Opener, create, target_name


class Host(Protocol):
    """What a writer needs of its store (DiskStore): limits, the database, and the commit steps."""

    db: Database
    inline_max: int
    reserve_step: int

    def reserve(self, temp_path: str, fd: int, need: int, want: int) -> int | None: ...

    def insert(self, key: str, record: bytes, adopt: tuple[str, str, int] | None) -> Outcome: ...

    def written(self, key: str, stamp: bytes, filename: str) -> None: ...


log = logging.getLogger("fwdproxy.store")


def _write_all(file: BinaryIO, data: bytes) -> None:
    """Write every byte: an unbuffered file may take part of a chunk (as a disk fills up)."""
    view = memoryview(data)
    while view:
        if not (taken := file.write(view)):
            raise OSError(errno.EIO, "the file accepted no bytes")
        view = view[taken:]


def _discard(file: BinaryIO | None, path: str | None) -> None:
    """Close and unlink a temp file; safe to call twice (also runs for writers dropped unfinished)."""
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if file is not None:
        file.close()


class DiskWriter:
    """Streams one body into the disk tier: write(chunk)…, then commit(meta) or abort().

    Bodies up to the store's inline limit are kept in memory and go into the database row; beyond it
    they spill to a temp file in the cache directory, which commit adopts without copying. No method
    raises: a failure is logged once, later writes are ignored, and commit returns the Outcome.
    """

    def __init__(
        self,
        store: Host,
        key: str,
        *,
        max_length: int | None,
        opener: Opener,
        expected_length: int | None = None,
    ) -> None:
        self.key = key
        self.max_length = max_length
        self.expected_length = expected_length
        """The announced body length (Content-Length), reserved in one go; None: reserved step by step."""
        self.written = 0
        """Bytes accepted so far."""
        self.reserved = 0
        """Bytes of the disk budget the temp file holds (its apparent size until commit; see budget.py)."""
        self.temp_path: str | None = None
        """The growing temp file once the body outgrew the inline limit (collapsed followers may read it)."""
        self.failure: Outcome | None = None
        self.stamp: bytes | None = None
        """The committed record's stamp, once commit returned STORED."""
        self._store = store
        self._opener = opener
        self._chunks: list[bytes] = []
        self._file: BinaryIO | None = None
        self._hash = codec.new_checksum()
        self._done = False
        self._finalizer: weakref.finalize[..., DiskWriter] | None = None

    @property
    def digest(self) -> str:
        """The checksum (codec.CHECKSUM, hex) of the bytes accepted so far: what commit will record."""
        return str(self._hash.hexdigest())

    def write(self, chunk: bytes) -> bool:
        """Accept the next piece of the body; False once the writer has failed (stop feeding it)."""
        if self._done or self.failure is not None:
            return False
        end = self.written + len(chunk)
        if self.max_length is not None and end > self.max_length:
            return self._fail(Outcome.TOO_BIG)
        try:
            if self._file is None and end > self._store.inline_max:
                self._spill()
            if self._file is None:
                self._chunks.append(chunk)
            else:
                if end > self.reserved and not self._reserve(end):
                    return self._fail(Outcome.NO_ROOM)
                if self._chunks:
                    buffered, self._chunks = self._chunks, []
                    for piece in buffered:
                        _write_all(self._file, piece)
                _write_all(self._file, chunk)
        except OSError as e:
            self._store.db.fault(e, f"writing the body of {self.key}")
            return self._fail(Outcome.DISK_ERROR)
        self._hash.update(chunk)
        self.written = end
        return True

    def reserve_ahead(self) -> bool:
        """Reserve the whole announced length now, before any byte arrives (its temp file is created); False
        (and the writer failed with NO_ROOM) when it cannot fit, so the caller can say so in the headers."""
        if self.expected_length is None or self.expected_length <= self._store.inline_max:
            return self.failure is None
        try:
            if self._file is None:
                self._spill()
            if not self._reserve(self.expected_length):
                return self._fail(Outcome.NO_ROOM)
        except OSError as e:
            self._store.db.fault(e, f"writing the body of {self.key}")
            return self._fail(Outcome.DISK_ERROR)
        return True

    def _reserve(self, end: int) -> bool:
        """Grow the reservation to hold at least ``end`` bytes (the announced length, or a step beyond)."""
        assert self._file is not None and self.temp_path is not None
        expected = self.expected_length
        want = expected if expected is not None and expected >= end else end + self._store.reserve_step
        granted = self._store.reserve(self.temp_path, self._file.fileno(), end, want)
        if granted is None:
            log.info("not storing %s: %d bytes do not fit within the disk cache's limit", self.key, end)
            return False
        self.reserved = granted
        return True

    def _spill(self) -> None:
        path, fd = create(self._store.db.tmp_dir)
        try:
            file = self._opener(fd)
        except BaseException:
            _discard(None, path)
            os.close(fd)
            raise
        self.temp_path, self._file = path, file
        self._finalizer = weakref.finalize(self, _discard, file, path)

    def commit(self, meta: StoredResponse) -> Outcome:
        """Make the entry visible atomically if exactly meta.body_length bytes were written."""
        if self._done:
            return Outcome.ABORTED
        if self.failure is not None:
            self._finish()
            return self.failure
        if self.written != meta.body_length:
            log.info(
                "not storing %s: got %d body bytes, expected %d", self.key, self.written, meta.body_length
            )
            self._finish()
            return Outcome.LENGTH_MISMATCH
        try:
            record_body = b"".join(self._chunks)
            if self._file is not None:
                size = os.fstat(self._file.fileno()).st_size
                if size < self.written:
                    raise OSError(errno.EIO, f"temp file of {self.key} does not hold {self.written} bytes")
                if size > self.written:
                    os.ftruncate(self._file.fileno(), self.written)  # give back the reservation's tail
            stamp = codec.new_stamp()
            record = codec.encode(meta, stamp=stamp, digest=self._hash.hexdigest(), inline=record_body)
        except OSError as e:
            self._store.db.fault(e, f"finishing the body of {self.key}")
            self._finish()
            return Outcome.DISK_ERROR
        adopt = None
        if self.temp_path is not None:
            adopt = (self.temp_path, target_name(os.path.basename(self.temp_path)), self.written)
        try:
            outcome = self._store.insert(self.key, record, adopt)
        finally:
            self._finish()
        if outcome is Outcome.STORED:
            self.stamp = stamp
            if adopt is not None:
                self._store.written(self.key, stamp, adopt[1])
        return outcome

    def abort(self) -> None:
        """Drop the body; nothing becomes visible (idempotent)."""
        if not self._done and self.failure is None:
            self.failure = Outcome.ABORTED
        self._finish()

    def _fail(self, outcome: Outcome) -> bool:
        self.failure = outcome
        self._release()
        return False

    def _finish(self) -> None:
        self._done = True
        self._release()

    def _release(self) -> None:
        self._chunks = []
        if self._finalizer is not None:
            self._finalizer()  # unlinks the temp file, then closes it (dropping the lock)
            self._finalizer = None
        self._file = None
