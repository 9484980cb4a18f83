"""The disk tier: streamed commits, big bodies as open files, LRU eviction, damage read as a miss."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import (
    BodyFile,
    DiskStore,
    Outcome,
    Store,
    Verification,
    backend,
    codec,
    variant_key,
    verify_all,
)

KIB = 1024


def meta(length: int, url: str = "http://a/", etag: str = '"1"') -> StoredResponse:
    return StoredResponse(url, 200, "OK", Headers.of({"ETag": etag}), 1.0, 2.0, length)


def body(length: int, seed: int = 0) -> bytes:
    """Distinct content per seed; 251 is prime, so no chunk boundary lines up with the pattern."""
    block = bytes((i * 7 + seed) % 251 for i in range(251))
    return (block * (length // 251 + 1))[:length]


def files(root: Path, suffix: str) -> list[Path]:
    return sorted(p for p in root.rglob(f"*{suffix}") if p.is_file())


def stream(store: DiskStore, key: str, data: bytes, chunk: int = 64 * KIB) -> Outcome:
    writer = store.writer(key)
    for i in range(0, len(data), chunk):
        assert writer.write(data[i : i + chunk])
    return writer.commit(meta(len(data)))


def database(store: DiskStore) -> Any:
    """The live diskcache.Cache, to plant rows the store itself would never write."""
    cache = store.db.live()
    assert cache is not None
    return cache


@pytest.fixture
def store(tmp_path: Path) -> DiskStore:
    return DiskStore(tmp_path, read_whole_max=256 * KIB)


def test_is_a_store(store: DiskStore) -> None:
    typed: Store = store
    assert typed.get("nothing") is None


def test_small_body_lives_in_its_row(store: DiskStore, tmp_path: Path) -> None:
    assert store.put("k", meta(5), b"hello") is Outcome.STORED
    entry = store.get("k")
    assert entry is not None and entry.body == b"hello" and entry.meta == meta(5)
    assert files(tmp_path, ".val") == []


def test_medium_body_is_a_file_read_whole(store: DiskStore, tmp_path: Path) -> None:
    data = body(100 * KIB)
    assert stream(store, "k", data) is Outcome.STORED
    entry = store.get("k")
    assert entry is not None and entry.body == data
    assert len(files(tmp_path / "store", ".val")) == 1


def test_big_body_comes_as_an_open_file_of_verified_length(store: DiskStore) -> None:
    data = body(600 * KIB)
    assert stream(store, "k", data) is Outcome.STORED
    entry = store.get("k")
    assert entry is not None and isinstance(entry.body, BodyFile)
    with entry.body as f:
        assert f.length == len(data) and os.fstat(f.fileno()).st_size == len(data)
        assert f.file.read() == data


def test_open_body_survives_eviction_of_its_entry(store: DiskStore) -> None:
    data = body(600 * KIB)
    stream(store, "k", data)
    entry = store.get("k")
    assert entry is not None and isinstance(entry.body, BodyFile)
    assert store.delete("k")
    assert not os.path.exists(entry.body.path)
    with entry.body as f:
        assert f.file.read() == data


def test_commit_adopts_the_temp_file_without_copying(store: DiskStore, tmp_path: Path) -> None:
    writer = store.writer("k")
    writer.write(body(100 * KIB))
    assert writer.temp_path is not None
    temp_inode = os.stat(writer.temp_path).st_ino
    assert writer.commit(meta(100 * KIB)) is Outcome.STORED
    (stored,) = files(tmp_path / "store", ".val")
    assert stored.stat().st_ino == temp_inode and stored.stat().st_nlink == 1
    assert files(tmp_path / "tmp", ".part") == []


def test_temp_file_grows_as_bytes_arrive(store: DiskStore) -> None:
    writer = store.writer("k")
    writer.write(body(40 * KIB))
    assert writer.temp_path is not None
    assert Path(writer.temp_path).read_bytes()[: writer.written] == body(40 * KIB)
    writer.write(body(10))
    assert writer.written == 40 * KIB + 10
    assert Path(writer.temp_path).read_bytes()[40 * KIB : writer.written] == body(10)
    # Its apparent size is the room it reserved (budget.py): at least what it holds.
    assert os.path.getsize(writer.temp_path) == writer.reserved >= writer.written
    writer.abort()


@pytest.mark.parametrize("length", [10, 100 * KIB], ids=["inline", "file"])
@pytest.mark.parametrize("declared_delta", [-1, 1], ids=["longer than declared", "shorter than declared"])
def test_length_mismatch_is_never_stored(
    store: DiskStore, tmp_path: Path, length: int, declared_delta: int
) -> None:
    writer = store.writer("k")
    writer.write(body(length))
    assert writer.commit(meta(length + declared_delta)) is Outcome.LENGTH_MISMATCH
    assert store.get("k") is None
    assert files(tmp_path, ".part") == [] and files(tmp_path, ".val") == []


def test_max_length_drops_the_body_while_streaming(store: DiskStore, tmp_path: Path) -> None:
    writer = store.writer("k", max_length=50 * KIB)
    assert writer.write(body(40 * KIB))
    assert not writer.write(body(20 * KIB))
    assert writer.failure is Outcome.TOO_BIG and files(tmp_path, ".part") == []
    assert not writer.write(b"more")
    assert writer.commit(meta(60 * KIB)) is Outcome.TOO_BIG
    assert store.get("k") is None


def test_abort_leaves_nothing(store: DiskStore, tmp_path: Path) -> None:
    writer = store.writer("k")
    writer.write(body(100 * KIB))
    writer.abort()
    writer.abort()
    assert writer.commit(meta(100 * KIB)) is Outcome.ABORTED
    assert store.get("k") is None and files(tmp_path, ".part") == []


def test_second_commit_is_refused(store: DiskStore) -> None:
    writer = store.writer("k")
    writer.write(b"abc")
    assert writer.commit(meta(3)) is Outcome.STORED
    assert writer.commit(meta(3)) is Outcome.ABORTED


def test_a_writer_dropped_unfinished_removes_its_temp_file(store: DiskStore, tmp_path: Path) -> None:
    writer = store.writer("k")
    writer.write(body(100 * KIB))
    assert len(files(tmp_path, ".part")) == 1
    del writer
    gc.collect()
    assert files(tmp_path, ".part") == []


def test_overwrite_removes_the_old_body_file(store: DiskStore, tmp_path: Path) -> None:
    stream(store, "k", body(100 * KIB, seed=1))
    stream(store, "k", body(100 * KIB, seed=2))
    entry = store.get("k")
    assert entry is not None and entry.body == body(100 * KIB, seed=2)
    assert len(files(tmp_path / "store", ".val")) == 1


def test_entries_survive_a_restart(tmp_path: Path) -> None:
    first = DiskStore(tmp_path)
    first.put("small", meta(3), b"abc")
    stream(first, "big", body(2 * 2**20))
    first.close()
    again = DiskStore(tmp_path)
    small, big = again.get("small"), again.get("big")
    assert small is not None and small.body == b"abc"
    assert big is not None and isinstance(big.body, BodyFile)
    with big.body as f:
        assert f.file.read() == body(2 * 2**20)


def test_two_instances_see_each_others_commits_and_deletes(tmp_path: Path) -> None:
    a, b = DiskStore(tmp_path), DiskStore(tmp_path)
    a.put("k", meta(1), b"1")
    seen = b.get("k")
    assert seen is not None and seen.body == b"1"
    b.put("k", meta(1), b"2")
    seen = a.get("k")
    assert seen is not None and seen.body == b"2"
    assert a.delete("k")
    assert b.get("k") is None


def test_size_limit_counts_body_bytes_and_eviction_removes_files(tmp_path: Path) -> None:
    limit = 2 * 2**20
    store = DiskStore(tmp_path, size_limit=limit)
    for i in range(20):
        assert stream(store, f"k{i}", body(256 * KIB, seed=i)) is Outcome.STORED
    stats = store.stats().disk
    assert stats.bytes <= limit and stats.limit == limit
    kept = [i for i in range(20) if store.get(f"k{i}") is not None]
    assert kept == list(range(20 - len(kept), 20)) and 3 <= len(kept) <= 7  # the newest survive
    assert len(files(tmp_path / "store", ".val")) == len(kept) == stats.entries
    assert sum(p.stat().st_size for p in files(tmp_path / "store", ".val")) <= limit


def test_eviction_is_least_recently_used_not_least_recently_stored(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, size_limit=2 * 2**20)
    for i in range(4):
        stream(store, f"k{i}", body(256 * KIB, seed=i))
    assert store.get("k0") is not None  # k0 becomes the most recently used
    for i in range(4, 9):
        stream(store, f"k{i}", body(256 * KIB, seed=i))
    assert store.get("k0") is not None
    assert store.get("k1") is None


def test_reads_write_no_lru_position_each_time_but_eviction_still_honours_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # diskcache's get() writes access_time in a transaction on every read; ours reads only, and writes
    # the positions of what was read in one batch (every TOUCH_EVERY s, or before a write).
    store = DiskStore(tmp_path, size_limit=2 * 2**20)
    for i in range(4):
        stream(store, f"k{i}", body(256 * KIB, seed=i))
    before = dict(database(store)._sql("SELECT key, access_time FROM Cache").fetchall())
    for _ in range(20):
        assert store.get("k0") is not None
    assert dict(database(store)._sql("SELECT key, access_time FROM Cache").fetchall()) == before
    writes: list[dict[str, float]] = []
    real = backend.touch
    monkeypatch.setattr(
        backend, "touch", lambda cache, used: (writes.append(dict(used)), real(cache, used))[1]
    )
    for i in range(4, 9):
        stream(store, f"k{i}", body(256 * KIB, seed=i))
    assert [list(w) for w in writes] == [["k0"]]  # the twenty reads, written once, before the first store
    assert store.get("k0") is not None and store.get("k1") is None


def test_lru_positions_are_written_every_touch_every(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DiskStore(tmp_path)
    store.put("k", meta(1), b"k")
    (stored,) = database(store)._sql("SELECT access_time FROM Cache WHERE key = 'k'").fetchone()
    monkeypatch.setattr("fwdproxy.store.disk.TOUCH_EVERY", 0.0)
    assert store.get("k") is not None
    (read,) = database(store)._sql("SELECT access_time FROM Cache WHERE key = 'k'").fetchone()
    assert read > stored


def test_a_body_file_is_hashed_once_until_it_changes(
    store: DiskStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream(store, "k", body(100 * KIB))
    hashed = []
    real = codec.checksum
    monkeypatch.setattr(codec, "checksum", lambda data: (hashed.append(len(data)), real(data))[1])
    assert store.get("k") is not None and hashed == []  # the writer hashed these very bytes as it wrote them
    store = DiskStore(tmp_path, read_whole_max=256 * KIB)  # another process
    for _ in range(5):
        entry = store.get("k")
        assert entry is not None and entry.body == body(100 * KIB)
    assert hashed == [100 * KIB]  # verified at its first read in this process
    (stored,) = files(tmp_path / "store", ".val")
    flip_byte(stored, 5000)  # damaged in place: same inode and size, a new mtime
    os.utime(stored, ns=(stored.stat().st_atime_ns, stored.stat().st_mtime_ns + 1))  # coarse clocks
    assert store.get("k") is None and not stored.exists()
    assert len(hashed) == 2


def test_an_unchanged_record_decodes_to_the_same_objects(store: DiskStore) -> None:
    # The cache policy remembers facts per stored-response object; disk hits keep them by getting the same one.
    stream(store, "k", body(100 * KIB))
    first, second = store.get("k"), store.get("k")
    assert first is not None and second is not None and first.meta is second.meta
    assert store.variants("k")[0][1] is first.meta
    store.update("k", meta(100 * KIB, etag='"2"'))
    third = store.get("k")
    assert third is not None and third.meta is not first.meta and third.meta.headers.get("etag") == '"2"'


def test_one_big_body_evicts_as_many_entries_as_it_needs(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, size_limit=2 * 2**20)
    for i in range(30):
        store.put(f"small{i}", meta(40 * KIB), body(40 * KIB))
    stream(store, "big", body(1536 * KIB))
    assert store.stats().disk.bytes <= 2 * 2**20
    assert store.get("big") is not None


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))


def test_checksum_mismatch_of_a_body_read_whole_is_a_miss_and_drops_it(
    store: DiskStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stream(store, "k", body(100 * KIB))
    (stored,) = files(tmp_path / "store", ".val")
    flip_byte(stored, 5000)
    assert store.get("k") is None
    assert not stored.exists() and "checksum" in caplog.text
    assert store.get("k") is None


def test_inline_body_checksum_mismatch_is_a_miss(store: DiskStore) -> None:
    cache = database(store)
    good = codec.encode(meta(3), stamp=codec.new_stamp(), digest=codec.checksum(b"abc"), inline=b"abd")
    cache.set("k", backend.Adopt(good))
    assert store.get("k") is None and store.stamp("k") is None


def test_truncated_big_body_is_a_miss_and_drops_it(store: DiskStore, tmp_path: Path) -> None:
    stream(store, "k", body(600 * KIB))
    (stored,) = files(tmp_path / "store", ".val")
    os.truncate(stored, 100)
    assert store.get("k") is None
    assert store.stats().disk.entries == 0


def test_vanished_body_file_is_a_miss_and_drops_the_row(store: DiskStore, tmp_path: Path) -> None:
    stream(store, "k", body(600 * KIB))
    (stored,) = files(tmp_path / "store", ".val")
    stored.unlink()
    assert store.get("k") is None
    assert store.stats().disk.entries == 0


def test_other_format_version_is_a_miss_left_in_place(store: DiskStore) -> None:
    cache = database(store)
    cache.set("k", backend.Adopt(codec.HEADER.pack(codec.MAGIC, 2, b"s" * 16, 2) + b"{}"))
    assert store.get("k") is None
    assert store.stats().disk.entries == 1
    assert list(store.iterate()) == []


def test_unreadable_record_is_a_miss_and_dropped(store: DiskStore) -> None:
    database(store).set("k", backend.Adopt(b"garbage"))
    assert store.get("k") is None
    assert store.stats().disk.entries == 0


def test_foreign_diskcache_values_are_a_miss(store: DiskStore) -> None:
    cache = database(store)
    cache._sql(
        "INSERT INTO Cache(key, raw, store_time, access_time, mode, value) VALUES ('k', 1, 0, 0, 4, x'80')"
    )
    assert store.get("k") is None


def test_variants_list_a_primary_and_its_variants_only(store: DiskStore) -> None:
    primary = "GET http://a/p"
    store.put(primary, meta(1), b"0")
    store.put(variant_key(primary, "accept-encoding=gzip"), meta(1, etag='"gz"'), b"1")
    store.put(variant_key(primary, "accept-encoding=br"), meta(1, etag='"br"'), b"2")
    store.put("GET http://a/pq", meta(1), b"3")
    store.put(variant_key("GET http://a/pq", ""), meta(1), b"4")
    listed = store.variants(primary)
    assert sorted(k for k, _ in listed) == sorted(
        [primary, variant_key(primary, "accept-encoding=br"), variant_key(primary, "accept-encoding=gzip")]
    )
    assert {m.headers.get("ETag") for _, m in listed} == {'"1"', '"gz"', '"br"'}
    assert store.variants(primary + "\0") == []
    assert store.purge(primary) == 3
    assert store.variants(primary) == [] and len(store.variants("GET http://a/pq")) == 2


def test_iterate_yields_metadata_of_every_entry(store: DiskStore) -> None:
    for i in range(600):
        store.put(f"k{i}", meta(1, url=f"http://a/{i}"), b"x")
    stream(store, "big", body(600 * KIB))
    listed = dict(store.iterate())
    assert len(listed) == 601 and listed["k599"].url == "http://a/599"
    assert listed["big"].body_length == 600 * KIB


def test_the_row_walk_reads_every_row_once_a_page_at_a_time(store: DiskStore) -> None:
    for i in range(7):
        store.put(f"k{i}", meta(1, url=f"http://a/{i}"), b"x")
    walked = list(store.db.rows("listing", page=3))  # pages of 3, 3 and 1, then an empty one
    assert [key for _, key, _, _ in walked] == [f"k{i}" for i in range(7)]
    rowids = [rowid for rowid, _, _, _ in walked]
    assert rowids == sorted(set(rowids))
    assert store.db.errors == 0


def test_update_replaces_metadata_and_keeps_the_body(store: DiskStore, tmp_path: Path) -> None:
    data = body(100 * KIB)
    stream(store, "k", data)
    before = store.get("k")
    refreshed = meta(len(data), etag='"2"')
    stamp = store.update("k", refreshed)
    after = store.get("k")
    assert before is not None and after is not None and stamp == after.stamp != before.stamp
    assert after.meta == refreshed and after.body == data
    assert store.update("k", meta(1)) is None  # a 304 never changes the stored length
    assert store.update("absent", refreshed) is None


def test_update_of_an_inline_body(store: DiskStore) -> None:
    store.put("k", meta(3), b"abc")
    assert store.update("k", meta(3, etag='"9"')) is not None
    entry = store.get("k")
    assert entry is not None and entry.body == b"abc" and entry.meta.headers.get("ETag") == '"9"'


def test_verify_one_entry(store: DiskStore, tmp_path: Path) -> None:
    stream(store, "k", body(600 * KIB))
    store.put("small", meta(2), b"ok")
    assert store.verify("k") is Verification.OK and store.verify("small") is Verification.OK
    assert store.verify("absent") is Verification.MISSING
    (stored,) = files(tmp_path / "store", ".val")
    flip_byte(stored, 300 * KIB)  # same length: only the checksum can tell
    entry = store.get("k")
    assert entry is not None and isinstance(entry.body, BodyFile)  # big reads check length only
    entry.body.close()
    assert store.verify("k") is Verification.BAD
    assert store.get("k") is None


def test_verify_all_drops_damage_and_removes_orphans(store: DiskStore, tmp_path: Path) -> None:
    for i in range(3):
        stream(store, f"k{i}", body(100 * KIB, seed=i))
    store.put("small", meta(1), b"x")
    flip_byte(files(tmp_path / "store", ".val")[0], 10)
    orphan = tmp_path / "store" / "zz" / "zz" / "orphan.val"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a crash")
    young = verify_all(store)
    assert (young.checked, young.bad, young.orphans) == (4, 1, 0)  # too young to be sure
    report = verify_all(store, orphan_age=0)
    assert (report.checked, report.bad, report.orphans) == (3, 0, 1)
    assert not orphan.exists() and len(files(tmp_path / "store", ".val")) == 2


def test_stats_count_entries_and_bytes(store: DiskStore) -> None:
    stream(store, "k", body(600 * KIB))
    stats = store.stats()
    assert stats.disk.entries == 1 and stats.disk.bytes >= 600 * KIB and stats.disk.evictions == 0
    assert (stats.disk_full, stats.errors, stats.last_error) == (False, 0, "")


def test_eviction_removes_only_what_is_needed(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, size_limit=4 * 2**20)
    for i in range(12):
        stream(store, f"k{i}", body(256 * KIB, seed=i))
    stream(store, "big", body(2**20))  # diskcache's own cull would drop ten entries at once here
    kept = [i for i in range(12) if store.get(f"k{i}") is not None]
    assert kept == list(range(12 - len(kept), 12)) and len(kept) >= 10
    stats = store.stats().disk
    assert stats.evictions == 12 - len(kept) and stats.bytes <= 4 * 2**20


def test_hits_share_decoded_metadata_within_a_byte_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record decodes to the very same objects on every hit, small inline bodies included (the policy's
    per-object memos then hold for disk hits); the remembered decodings stay within their byte budget."""
    from fwdproxy.store import disk

    store = DiskStore(tmp_path)
    assert store.put("small", meta(KIB), b"s" * KIB) is Outcome.STORED  # inline in its row
    assert store.put("file", meta(100 * KIB), b"f" * 100 * KIB) is Outcome.STORED
    for key in ("small", "file"):
        first, second = store.get(key), store.get(key)
        assert first is not None and second is not None and first.meta is second.meta
    monkeypatch.setattr(disk, "DECODED_BYTES_MAX", 8 * KIB)
    for i in range(10):
        assert store.put(f"k{i}", meta(KIB), bytes([i]) * KIB) is Outcome.STORED
        entry = store.get(f"k{i}")
        assert entry is not None and entry.body == bytes([i]) * KIB
    assert store._decoded_bytes == sum(len(r) + len(d.inline) for r, d in store._decoded.items()) <= 8 * KIB
    assert 2 <= len(store._decoded) < 10
