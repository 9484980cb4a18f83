"""Checking stored bodies against their recorded length and checksum (`fwdproxy cache verify`)."""

from __future__ import annotations

import os
import time
from typing import Protocol

from fwdproxy.store import backend, codec
from fwdproxy.store.handle import ERRORS, Database
from fwdproxy.store.record import Verification, VerifyReport


class Checked(Protocol):
    """What verification needs of a store (DiskStore): its database, and dropping a damaged entry."""

    db: Database

    def drop(self, key: str, why: str, stamp: bytes | None = None) -> None: ...


ORPHAN_AGE = 600.0
"""A body file no row references is removed only when linked this long ago (seconds): a younger one
may belong to a commit in flight in another process."""
_BLOCK = 2**20


def _file_matches(path: str, length: int, digest: str) -> bool:
    hasher = codec.new_checksum()
    size = 0
    with open(path, "rb") as file:
        while block := file.read(_BLOCK):
            hasher.update(block)
            size += len(block)
    return size == length and hasher.hexdigest() == digest


def _check(store: Checked, key: str, row: backend.Row) -> Verification:
    decoded = codec.decode(row.record)
    if decoded is codec.Undecodable.OTHER_VERSION:
        return Verification.MISSING  # another version's entry: not ours to judge
    if decoded is codec.Undecodable.CORRUPT:
        store.drop(key, "its record is unreadable")
        return Verification.BAD
    meta = decoded.meta
    if row.filename is None:
        body = decoded.inline
        sound = len(body) == meta.body_length and codec.checksum(body) == decoded.checksum
    else:
        try:
            sound = _file_matches(
                os.path.join(store.db.store_dir, row.filename), meta.body_length, decoded.checksum
            )
        except FileNotFoundError:
            sound = False
        except OSError as e:
            store.db.fault(e, f"verifying {key}")
            return Verification.MISSING
    if not sound:
        store.drop(key, "verification found its body damaged", decoded.stamp)
        return Verification.BAD
    return Verification.OK


def verify(store: Checked, key: str) -> Verification:
    """Read one entry's whole body and compare it with its record; a damaged entry is deleted."""
    if (cache := store.db.live()) is None:
        return Verification.MISSING
    try:
        row = backend.row(cache, key)
    except ERRORS as e:
        store.db.fault(e, f"verifying {key}")
        return Verification.MISSING
    return Verification.MISSING if row is None else _check(store, key, row)


def _remove_orphans(store: Checked, owned: set[str], *, min_age: float) -> int:
    removed = 0
    now = time.time()
    for folder, _, names in os.walk(store.db.store_dir):
        for name in names:
            path = os.path.join(folder, name)
            if not name.endswith(".val") or os.path.relpath(path, store.db.store_dir) in owned:
                continue
            try:
                if now - os.stat(path).st_ctime >= min_age:  # link() set ctime
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                continue  # evicted meanwhile
    return removed


def verify_all(store: Checked, *, orphan_age: float = ORPHAN_AGE) -> VerifyReport:
    """Verify every entry (deleting damaged ones), then remove body files no entry owns."""
    checked = bad = 0
    for _, key, filename, record in store.db.rows("verifying the cache"):
        checked += 1
        bad += _check(store, key, backend.Row(filename, record)) is Verification.BAD
    orphans = 0
    if (cache := store.db.live()) is not None:
        try:
            owned = backend.filenames(cache)
        except ERRORS as e:
            store.db.fault(e, "listing body files")
        else:
            orphans = _remove_orphans(store, owned, min_age=orphan_age)
    return VerifyReport(checked=checked, bad=bad, orphans=orphans)
