"""Body files kept open between disk hits (fwdproxy/store/openfiles.py): a kept descriptor serves only the
very file whose checksum was confirmed, is closed when its entry is rewritten, deleted or evicted (here or
by another process), and there are never more than the bound."""

from __future__ import annotations

import os
import resource
import sqlite3
import time
from pathlib import Path

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import TieredStore
from fwdproxy.store.openfiles import OPEN_MAX, OpenFiles, default_max

KIB = 1024


def meta(length: int, etag: str = '"1"', url: str = "http://a/") -> StoredResponse:
    return StoredResponse(url, 200, "OK", Headers.of({"ETag": etag}), 1.0, 2.0, length)


def open_paths() -> list[str]:
    """What this process's descriptors point at (deleted files end with " (deleted)")."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # the descriptor listdir itself used
    return out


def holds(path: str) -> bool:
    return any(p == path or p == f"{path} (deleted)" for p in open_paths())


def stored(store: TieredStore, key: str, body: bytes, etag: str = '"1"') -> str:
    """Store ``body`` under ``key``, read it once (checksum confirmed) and read it again through its mark:
    the body file's path, now kept open."""
    url = "http://a/" + key
    store.put(key, meta(len(body), etag, url), body)
    entry = store.get(key)
    assert entry is not None and entry.body == body
    mark = store.disk_mark(key)
    assert mark is not None and mark.path is not None
    assert store.disk_body(mark) == body
    assert holds(mark.path)
    return mark.path


def test_a_kept_descriptor_serves_hits_without_reopening(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    data = os.urandom(100 * KIB)
    path = stored(store, "k", data)
    before = len(os.listdir("/proc/self/fd"))
    mark = store.disk_mark("k")
    assert mark is not None
    for _ in range(5):
        assert store.disk_body(mark) == data
    assert len(os.listdir("/proc/self/fd")) == before
    assert len(store.disk.open_files) == 1
    assert open_paths().count(path) == 1


def test_a_replaced_body_is_never_read_from_the_old_descriptor(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    old, new = b"o" * (64 * KIB), b"n" * (64 * KIB)
    old_path = stored(store, "k", old)
    old_mark = store.disk_mark("k")
    assert old_mark is not None
    store.put("k", meta(len(new), '"2"', "http://a/k"), new)  # same key, new content, new body file
    assert not holds(old_path)  # closed by the write itself
    assert store.disk_body(old_mark) is None
    entry = store.get("k")
    assert entry is not None and entry.body == new
    mark = store.disk_mark("k")
    assert mark is not None and mark.path != old_path
    assert store.disk_body(mark) == new


def test_a_deleted_or_evicted_entry_closes_its_descriptor(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB, disk_size=400 * KIB)
    first = stored(store, "a", b"a" * (100 * KIB))
    second = stored(store, "b", b"b" * (100 * KIB))
    store.delete("a")
    assert not holds(first)
    assert holds(second)
    for i in range(6):  # 600 KiB more in a 400 KiB cache: "b", least recently used, is evicted
        store.put(f"c{i}", meta(100 * KIB, url=f"http://a/c{i}"), b"c" * (100 * KIB))
    assert store.get("b") is None
    assert not holds(second)
    assert len(store.disk.open_files) == 0


def test_another_process_deleting_the_entry_closes_the_descriptor(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    other = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    data = os.urandom(50 * KIB)
    path = stored(store, "k", data)
    mark = store.disk_mark("k")
    assert mark is not None
    other.delete("k")  # removed elsewhere: its file unlinked, held open here until noticed
    assert store.disk_body(mark) is None  # the slot's mark moved: not read, and the descriptor closed
    assert not holds(path)
    # Nobody asks for it again: the periodic sweep closes a removed file's descriptor all the same.
    stored(store, "j", data)
    j_path = store.disk_mark("j").path  # type: ignore[union-attr]
    other.delete("j")
    assert holds(str(j_path))
    assert store.disk.check()  # the periodic health check sweeps
    assert not holds(str(j_path))


def test_a_file_changed_in_place_or_truncated_is_not_read(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    data = os.urandom(80 * KIB)
    path = stored(store, "k", data)
    mark = store.disk_mark("k")
    assert mark is not None
    time.sleep(0.05)  # past the file system's timestamp granularity: the write below moves mtime and ctime
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([data[1000] ^ 0xFF]), 1000)  # one byte flipped, size unchanged
    finally:
        os.close(fd)
    assert store.disk_body(mark) is None
    assert not holds(path)
    assert store.get("k") is None  # the store hashes it, finds the damage and drops the entry
    path = stored(store, "t", data)
    mark = store.disk_mark("t")
    assert mark is not None
    os.truncate(path, len(data) - 1)
    assert store.disk_body(mark) is None
    assert store.get("t") is None


def test_a_file_renamed_over_is_not_read_from_the_old_descriptor(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    data = os.urandom(40 * KIB)
    path = stored(store, "k", data)
    mark = store.disk_mark("k")
    assert mark is not None
    other = tmp_path / "other.val"
    other.write_bytes(data)
    os.replace(other, path)  # same bytes, another file: not the one this process hashed
    assert store.disk_body(mark) is None
    assert not holds(f"{path}")


def test_the_kept_descriptors_are_bounded(tmp_path: Path) -> None:
    files = OpenFiles(maxsize=4)
    paths = []
    for i in range(10):
        p = tmp_path / f"{i}.val"
        p.write_bytes(b"%d" % i * 5000)
        st = os.stat(p)
        seen = (b"s", st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        assert files.read(f"k{i}", str(p), seen) == b"%d" % i * 5000
        paths.append(str(p))
        assert len(files) <= 4
    assert [holds(p) for p in paths] == [False] * 6 + [True] * 4  # the least recently used were closed
    files.clear()
    assert not any(holds(p) for p in paths)
    with pytest.raises(ValueError):
        OpenFiles(maxsize=0)


def test_the_default_bound_leaves_most_descriptors_to_connections() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert default_max() == 128
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
        assert default_max() == OPEN_MAX
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_path_is_checked_again_after_recheck_seconds(tmp_path: Path) -> None:
    files = OpenFiles(maxsize=4, recheck=0.0)
    p = tmp_path / "a.val"
    p.write_bytes(b"x" * 100)
    st = os.stat(p)
    seen = (b"s", st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    assert files.read("k", str(p), seen) == b"x" * 100
    os.link(p, tmp_path / "second-link")  # still linked elsewhere: nlink alone would not notice
    os.unlink(p)
    (tmp_path / "b").write_bytes(b"y" * 100)
    os.rename(tmp_path / "b", p)  # the path names another file now
    assert files.read("k", str(p), seen) is None
    assert len(files) == 0


def test_an_inline_body_is_read_from_its_row_each_time_and_checked(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0)
    body = os.urandom(KIB)
    store.put("k", meta(len(body)), body)
    entry = store.get("k")
    assert entry is not None and entry.body == body
    mark = store.disk_mark("k")
    assert mark is not None and mark.path is None and mark.inline is not None
    assert len(mark.inline.prefix) < 1000  # the record's head and metadata: the body is not kept
    again = store.disk_body(mark)
    assert again == body and again is not entry.body
    db = sqlite3.connect(tmp_path / "store" / "cache.db")
    try:
        (record,) = db.execute("SELECT value FROM Cache WHERE key = 'k'").fetchone()
        damaged = bytearray(record)
        damaged[-10] ^= 0xFF  # a byte of the inline body, behind the store's back (no mark moves)
        db.execute("UPDATE Cache SET value = ? WHERE key = 'k'", (bytes(damaged),))
        db.commit()
        assert store.disk_body(mark) is None  # its checksum does not match
        assert store.get("k") is None  # and the full path drops it
        store.put("k", meta(len(body)), body)
        assert store.get("k") is not None
        mark = store.disk_mark("k")
        assert mark is not None
        (record,) = db.execute("SELECT value FROM Cache WHERE key = 'k'").fetchone()
        changed = bytes(record).replace(b'"OK"', b'"NO"')  # the metadata, not the body
        assert changed != record
        db.execute("UPDATE Cache SET value = ? WHERE key = 'k'", (changed,))
        db.commit()
        assert store.disk_body(mark) is None
    finally:
        db.close()


def test_the_stores_own_reads_sweep_removed_files(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    other = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    store.disk.open_files.recheck = 3600.0
    path = stored(store, "k", os.urandom(50 * KIB))
    other.delete("k")
    store.put("j", meta(3, url="http://a/j"), b"abc")
    assert store.get("j") is not None
    assert holds(path)  # swept at most every RECHECK seconds
    store.disk.open_files.recheck = 0.0
    assert store.get("j") is not None  # a read that follows the database sweeps too
    assert not holds(path)
