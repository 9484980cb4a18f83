"""The tiered store: memory in front of disk, promotion, and coherence between processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import BodyFile, Outcome, Store, TieredStore, Verification, backend, variant_key

KIB = 1024


def meta(length: int, etag: str = '"1"') -> StoredResponse:
    return StoredResponse("http://a/", 200, "OK", Headers.of({"ETag": etag}), 1.0, 2.0, length)


def open_store(path: Path, coherent: bool = True) -> TieredStore:
    return TieredStore.open(path, memory_size=1 * 2**20, memory_object_max=64 * KIB, coherent=coherent)


def test_is_a_store(tmp_path: Path) -> None:
    typed: Store = open_store(tmp_path)
    assert typed.get("nothing") is None


def test_defaults_follow_the_issue(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path)
    stats = store.stats()
    assert stats.memory is not None and stats.memory.limit == 256 * 2**20
    assert store.memory.max_object == store.disk.read_whole_max == 2**20
    assert stats.disk.limit == 10 * 2**30


def test_put_goes_to_both_tiers_and_a_hit_is_the_same_bytes_object(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    data = b"x" * 10 * KIB
    assert store.put("k", meta(len(data)), data) is Outcome.STORED
    first, second = store.get("k"), store.get("k")
    assert first is not None and second is not None
    assert first.body is data and second.body is data
    assert store.disk.get("k") is not None


def test_streamed_body_reaches_memory_when_it_fits(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    writer = store.writer("k")
    for _ in range(4):
        assert writer.write(b"y" * 10 * KIB)
    assert writer.temp_path is not None and writer.written == 40 * KIB
    assert writer.commit(meta(40 * KIB)) is Outcome.STORED
    cached = store.memory.get("k")
    assert cached is not None and cached.body == b"y" * 40 * KIB


def test_big_body_stays_on_disk_and_comes_as_a_file(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put("k", meta(10), b"0123456789")
    data = b"z" * 100 * KIB
    assert store.put("k", meta(len(data)), data) is Outcome.STORED
    assert store.memory.get("k") is None  # the small older version went too
    entry = store.get("k")
    assert entry is not None and isinstance(entry.body, BodyFile)
    with entry.body as f:
        assert f.file.read() == data


def test_disk_hit_of_a_small_body_is_promoted(tmp_path: Path) -> None:
    open_store(tmp_path).put("k", meta(5), b"hello")
    store = open_store(tmp_path)  # a restart: memory is empty
    assert store.memory.get("k") is None
    entry = store.get("k")
    assert entry is not None and entry.body == b"hello"
    cached = store.memory.get("k")
    assert cached is not None and cached.body is entry.body


def test_failed_write_reaches_neither_tier(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    writer = store.writer("k", max_length=10)
    writer.write(b"12345678901")
    assert writer.commit(meta(11)) is Outcome.TOO_BIG
    assert store.get("k") is None and store.memory.get("k") is None
    mismatch = store.writer("k")
    mismatch.write(b"abc")
    assert mismatch.commit(meta(4)) is Outcome.LENGTH_MISMATCH
    assert store.memory.get("k") is None


def test_delete_removes_both_tiers(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put("k", meta(1), b"k")
    assert store.delete("k")
    assert store.get("k") is None and store.memory.get("k") is None and store.disk.get("k") is None


def test_another_process_overwrite_or_delete_is_never_answered_from_memory(tmp_path: Path) -> None:
    a, b = open_store(tmp_path), open_store(tmp_path)
    a.put("k", meta(2), b"v1")
    seen = b.get("k")
    assert seen is not None and seen.body == b"v1" and b.memory.get("k") is not None
    a.put("k", meta(2), b"v2")
    seen = b.get("k")
    assert seen is not None and seen.body == b"v2"
    a.update("k", meta(2, etag='"3"'))
    seen = b.get("k")
    assert seen is not None and seen.meta.headers.get("ETag") == '"3"'
    a.delete("k")
    assert b.get("k") is None and b.memory.get("k") is None


def test_a_disk_hit_reads_its_row_once_until_another_process_changes_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TieredStore.open(tmp_path, memory_size=0)  # every hit from disk
    other = TieredStore.open(tmp_path, memory_size=0)  # another process on the same directory
    assert store.put("k", meta(100 * KIB), b"a" * 100 * KIB) is Outcome.STORED
    reads: list[str] = []
    real = backend.read
    monkeypatch.setattr(backend, "read", lambda cache, key: (reads.append(key), real(cache, key))[1])
    for _ in range(5):
        entry = store.get("k")
        assert entry is not None and entry.body == b"a" * 100 * KIB
    assert reads == ["k"]  # the body file is read each time, the database row once
    assert other.put("k", meta(100 * KIB, etag='"2"'), b"b" * 100 * KIB) is Outcome.STORED
    entry = store.get("k")
    assert entry is not None and entry.body == b"b" * 100 * KIB and entry.meta.headers.get("etag") == '"2"'
    assert reads == ["k", "k"]
    assert other.delete("k")
    assert store.get("k") is None


def test_a_disk_hit_stats_the_database_once_and_a_zero_memory_tier_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fwdproxy.store import handle

    store = TieredStore.open(tmp_path, memory_size=0)
    assert store.put("k", meta(KIB), b"a" * KIB) is Outcome.STORED
    assert not store.memory.fits(KIB) and not store.memory.fits(0)
    kept: list[str] = []
    monkeypatch.setattr(store.memory, "put", lambda key, *_: kept.append(key))
    stats: list[str] = []
    real = handle._ident
    monkeypatch.setattr(handle, "_ident", lambda path: (stats.append(path), real(path))[1])
    for _ in range(3):
        entry = store.get("k")
        assert entry is not None and entry.body == b"a" * KIB
    assert len(stats) == 3 and kept == []  # one stat() per hit (it notices a replaced file); no memory put


def test_without_coherence_memory_answers_alone(tmp_path: Path) -> None:
    a, b = open_store(tmp_path), open_store(tmp_path, coherent=False)
    a.put("k", meta(2), b"v1")
    b.get("k")
    a.delete("k")
    stale = b.get("k")  # the documented price of coherent=False with several processes
    assert stale is not None and stale.body == b"v1"


def test_update_refreshes_metadata_in_both_tiers(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    data = b"body"
    store.put("k", meta(4), data)
    stamp = store.update("k", meta(4, etag='"2"'))
    entry = store.get("k")
    assert entry is not None and entry.stamp == stamp and entry.body is data
    assert entry.meta.headers.get("ETag") == '"2"'
    assert store.update("k", meta(5)) is None and store.memory.get("k") is None


def test_variants_and_purge(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    primary = "GET http://a/"
    for secondary in ("accept-encoding=gzip", "accept-encoding=br"):
        store.put(variant_key(primary, secondary), meta(1), b"v")
    assert len(store.variants(primary)) == 2 and len(dict(store.iterate())) == 2
    assert store.purge(primary) == 2
    assert store.variants(primary) == [] and store.memory.stats().entries == 0


def test_verify_drops_a_damaged_entry_from_memory_too(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put("k", meta(40 * KIB), b"a" * 40 * KIB)
    assert store.verify("k") is Verification.OK
    (stored,) = (tmp_path / "store").rglob("*.val")
    stored.write_bytes(b"b" * 40 * KIB)
    assert store.verify("k") is Verification.BAD
    assert store.memory.get("k") is None and store.get("k") is None


def test_stats_per_tier(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=50 * KIB, memory_object_max=30 * KIB)
    for i in range(3):
        store.put(f"k{i}", meta(20 * KIB), b"x" * 20 * KIB)
    stats = store.stats()
    assert stats.memory is not None
    assert (stats.memory.entries, stats.memory.evictions) == (2, 1)
    assert stats.memory.bytes <= 50 * KIB
    assert stats.disk.entries == 3 and stats.disk.bytes >= 60 * KIB


@pytest.mark.parametrize("length, in_memory", [(64 * KIB, True), (64 * KIB + 1, False)])
def test_memory_object_limit(tmp_path: Path, length: int, in_memory: bool) -> None:
    store = open_store(tmp_path)
    store.put("k", meta(length), b"q" * length)
    assert (store.memory.get("k") is not None) is in_memory
