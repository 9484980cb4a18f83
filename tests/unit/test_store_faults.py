"""Storage faults never reach the caller: disk full, a directory removed, a corrupt or busy database."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import DiskStore, Outcome, TieredStore, backend
from fwdproxy.store.tempfiles import Opener

KIB = 1024


def meta(length: int) -> StoredResponse:
    return StoredResponse("http://a/", 200, "OK", Headers(), 1.0, 2.0, length)


def files(root: Path, suffix: str) -> list[Path]:
    return sorted(p for p in root.rglob(f"*{suffix}") if p.is_file())


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "fwdproxy.store" and r.levelno >= logging.WARNING
    ]


def sqlite_error(kind: type[sqlite3.Error], name: str, message: str) -> sqlite3.Error:
    error = kind(message)
    error.sqlite_errorname = name
    return error


class FullDisk:
    """A temp file on a file system with `room` bytes left: partial write, then ENOSPC."""

    def __init__(self, fd: int, room: int) -> None:
        self.file = open(fd, "wb", buffering=0)
        self.room = room

    def write(self, data: Any) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), self.room)
        self.file.write(data[:n])
        self.room -= n
        return n

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()


def full_disk(room: list[int]) -> Opener:
    """An Opener whose files have room[0] bytes left (the test may change it)."""
    return lambda fd: cast(BinaryIO, FullDisk(fd, room=room[0]))


def database(store: DiskStore) -> Any:
    cache = store.db.live()
    assert cache is not None
    return cache


def test_disk_full_while_streaming_aborts_logs_once_and_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DiskStore(tmp_path, opener=full_disk([100 * KIB]))
    store.put("old", meta(3), b"old")
    writer = store.writer("new")
    results = [writer.write(b"x" * 16 * KIB) for _ in range(20)]
    assert results[:6] == [True] * 6 and not any(results[6:])  # 96 KiB fit, 112 do not
    assert writer.failure is Outcome.DISK_ERROR
    assert writer.commit(meta(20 * 16 * KIB)) is Outcome.DISK_ERROR
    second = store.writer("other")
    for _ in range(10):
        second.write(b"y" * 16 * KIB)
    assert second.commit(meta(160 * KIB)) is Outcome.DISK_ERROR
    assert len(warnings(caplog)) == 1 and "disk full" in warnings(caplog)[0]
    stats = store.stats()
    assert stats.disk_full and stats.errors == 2 and "No space left" in stats.last_error
    assert files(tmp_path, ".part") == [] and store.get("new") is None
    entry = store.get("old")
    assert entry is not None and entry.body == b"old"
    assert store.put("small", meta(5), b"fits!") is Outcome.STORED  # inline: no temp file needed
    assert not store.stats().disk_full


def test_disk_full_when_the_database_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = DiskStore(tmp_path)
    cache = database(store)

    def full_set(key: str, value: Any, **_: Any) -> None:
        cache.disk.store(value, False, key=key)  # the body gets linked in, then SQLite fails
        raise sqlite_error(sqlite3.OperationalError, "SQLITE_FULL", "database or disk is full")

    monkeypatch.setattr(cache, "set", full_set)
    writer = store.writer("k")
    writer.write(b"x" * 100 * KIB)
    assert writer.commit(meta(100 * KIB)) is Outcome.DISK_ERROR
    assert files(tmp_path, ".val") == [] and files(tmp_path, ".part") == []
    assert store.stats().disk_full and len(warnings(caplog)) == 1
    monkeypatch.undo()
    assert store.put("k", meta(1), b"k") is Outcome.STORED and not store.stats().disk_full


def test_disk_full_when_linking_the_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DiskStore(tmp_path)

    def no_space(source: str, target: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backend, "_link", no_space)
    writer = store.writer("k")
    writer.write(b"x" * 100 * KIB)
    assert writer.commit(meta(100 * KIB)) is Outcome.DISK_ERROR
    assert store.get("k") is None and files(tmp_path, ".part") == [] and store.stats().disk_full


def test_directory_removed_under_a_live_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = DiskStore(tmp_path / "cache")
    store.put("k", meta(1), b"k")
    shutil.rmtree(tmp_path / "cache")
    assert store.get("k") is None  # never from the unlinked database the connection still holds
    assert any("removed or replaced" in w for w in warnings(caplog))
    assert store.put("k2", meta(2), b"k2") is Outcome.STORED
    entry = store.get("k2")
    assert entry is not None and entry.body == b"k2"
    assert (tmp_path / "cache" / "store" / "cache.db").exists()


def test_directory_removed_while_a_body_streams(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "cache")
    writer = store.writer("k")
    writer.write(b"x" * 100 * KIB)
    shutil.rmtree(tmp_path / "cache")
    writer.write(b"x" * KIB)
    assert writer.commit(meta(101 * KIB)) is Outcome.DISK_ERROR
    assert store.get("k") is None
    assert store.put("k", meta(1), b"k") is Outcome.STORED


def overwrite_database(store: DiskStore) -> None:
    cache = database(store)
    cache._sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    size = os.path.getsize(store.db.db_path)
    with open(store.db.db_path, "r+b") as f:
        f.write(os.urandom(size))


def test_garbage_in_the_database_of_a_live_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = DiskStore(tmp_path)
    for i in range(50):
        store.put(f"k{i}", meta(100), b"x" * 100)
    store.put("big", meta(100 * KIB), b"x" * 100 * KIB)
    overwrite_database(store)
    assert store.check() is False
    if store.db.sweeper is not None:
        store.db.sweeper.join(10)
    assert store.get("k1") is None and store.stats().disk.entries == 0
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob("store.broken-*"))
    assert store.put("k1", meta(2), b"ok") is Outcome.STORED
    entry = store.get("k1")
    assert entry is not None and entry.body == b"ok"
    assert store.check() is True
    assert any("starting an empty cache" in w for w in warnings(caplog))


def test_garbage_in_the_database_found_at_open(tmp_path: Path) -> None:
    first = DiskStore(tmp_path)
    first.put("k", meta(1), b"k")
    overwrite_database(first)
    first.close()
    store = DiskStore(tmp_path)
    assert store.get("k") is None
    assert store.put("k", meta(2), b"k2") is Outcome.STORED
    entry = store.get("k")
    assert entry is not None and entry.body == b"k2"


def test_corruption_reported_by_sqlite_reopens_and_a_sound_file_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = DiskStore(tmp_path)
    store.put("k", meta(1), b"k")
    generation = store.db.generation

    faulty = database(store)
    sound_read = backend.read

    def corrupt(cache: Any, key: str) -> Any:
        if cache is faulty:  # only the connection open now reports it, as in the original stub of get()
            raise sqlite_error(sqlite3.DatabaseError, "SQLITE_CORRUPT", "database disk image is malformed")
        return sound_read(cache, key)

    monkeypatch.setattr(backend, "read", corrupt)
    assert store.get("k") is None
    assert store.db.generation == generation + 1  # a new connection; the faulty one is gone
    assert not any("damaged" in w for w in warnings(caplog))  # quick_check found the file intact
    entry = store.get("k")
    assert entry is not None and entry.body == b"k"


def test_corruption_reported_by_sqlite_on_a_damaged_file_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DiskStore(tmp_path)
    for i in range(50):
        store.put(f"k{i}", meta(100), b"x" * 100)
    overwrite_database(store)
    store.db.fault(
        sqlite_error(sqlite3.DatabaseError, "SQLITE_CORRUPT", "database disk image is malformed"), "reading k"
    )
    assert any("damaged" in w for w in warnings(caplog))
    assert store.get("k1") is None and store.stats().disk.entries == 0
    assert store.put("k1", meta(1), b"1") is Outcome.STORED


def test_busy_database_is_a_miss_not_a_wait(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "fwdproxy.store")
    store = DiskStore(tmp_path, timeout=0.05)
    store.put("k", meta(1), b"k")
    other = sqlite3.connect(store.db.db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        # Reads take no write lock (WAL: a writer never blocks them), so the entry is still served.
        hit = store.get("k")
        assert hit is not None and hit.body == b"k"
        assert store.put("k2", meta(1), b"2") is Outcome.DISK_ERROR
        assert store.delete("k") is False
        assert time.monotonic() - started < 2  # each write gave up after the 0.05 s timeout
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert any(r.levelno == logging.INFO and "busy" in r.getMessage() for r in caplog.records)
    assert store.stats().errors == 2
    entry = store.get("k")
    assert entry is not None and entry.body == b"k"


def test_unusable_directory_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = DiskStore(blocker)
    assert store.get("k") is None
    assert store.put("k", meta(1), b"k") is Outcome.DISK_ERROR
    assert store.delete("k") is False and store.variants("k") == [] and list(store.iterate()) == []
    assert store.stats().errors >= 1 and store.check() is False
    assert len(warnings(caplog)) == 1  # retried only after a delay, not on every call


def test_tiered_memory_is_emptied_when_the_disk_reopens(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, coherent=False)
    store.put("k", meta(1), b"k")
    shutil.rmtree(tmp_path / "store")
    assert store.get("k") is None  # the memory copy came from the removed database
    memory = store.stats().memory
    assert memory is not None and memory.entries == 0


def test_a_stale_fault_from_another_thread_does_not_discard_the_fresh_database(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    corrupt = sqlite_error(sqlite3.DatabaseError, "SQLITE_CORRUPT", "database disk image is malformed")
    store.db.fault(corrupt, "reading k")  # this thread found the database broken and reopened it
    store.put("k", meta(1), b"k")
    generation = store.db.generation

    def report_late() -> None:
        store.db._seen.generation = generation - 1  # another thread, whose query predates the reopening
        store.db.fault(corrupt, "reading k")

    late = threading.Thread(target=report_late)
    late.start()
    late.join()
    assert store.db.generation == generation and store.get("k") is not None


def test_an_entry_evicted_between_row_and_file_is_a_quiet_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DiskStore(tmp_path)
    store.put("k", meta(1), b"k")
    store.drop("absent", "its body file is gone")
    store.drop("k", "its body file is gone", stamp=b"another version!")
    assert warnings(caplog) == [] and store.get("k") is not None
    store.drop("k", "its body file is gone")
    assert store.get("k") is None and warnings(caplog) == ["dropped cached k: its body file is gone"]


def test_cache_files_are_private_to_their_owner(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "cache")
    store.put("k", meta(100 * KIB), b"x" * 100 * KIB)
    for folder in ("cache", "cache/store", "cache/tmp"):
        assert (tmp_path / folder).stat().st_mode & 0o777 == 0o700
    (stored,) = files(tmp_path, ".val")
    assert stored.stat().st_mode & 0o777 == 0o600


def test_a_full_file_system_makes_the_cache_yield_its_least_recently_used_bodies(tmp_path: Path) -> None:
    room = [10**9]
    store = DiskStore(tmp_path, opener=full_disk(room))
    for i in range(10):
        store.put(f"k{i}", meta(100 * KIB), bytes([i]) * 100 * KIB)
    assert store.get("k0") is not None  # k0 is now the most recently used; k1 the least
    room[0] = 0  # something else filled the disk
    assert store.put("new", meta(100 * KIB), b"n" * 100 * KIB) is Outcome.DISK_ERROR
    assert store.stats().disk.entries == 9 and len(files(tmp_path, ".val")) == 9  # 10% of 1000 KiB
    assert store.get("k1") is None and store.get("k0") is not None and store.get("k2") is not None
    room[0] = 10**9
    assert store.put("new", meta(100 * KIB), b"n" * 100 * KIB) is Outcome.STORED
