"""Generation marks: memory hits of unchanged keys skip the disk, and every change is seen at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import TieredStore, variant_key
from fwdproxy.store import tiered as tiered_module
from fwdproxy.store.generations import FILENAME, GLOBAL, SLOTS, Generations, primary_of, slot_of

PRIMARY = "GET http://a/"
KEY = variant_key(PRIMARY, "")


def meta(length: int, etag: str = '"1"') -> StoredResponse:
    return StoredResponse("http://a/", 200, "OK", Headers.of({"ETag": etag}), 1.0, 2.0, length)


class DiskReads:
    """Counts the disk tier's reads that memory hits are meant to avoid."""

    def __init__(self, store: TieredStore) -> None:
        self.count = 0
        for name in ("stamp", "variants", "get"):
            original = getattr(store.disk, name)

            def counted(*args: object, _original: object = original) -> object:
                self.count += 1
                return _original(*args)  # type: ignore[operator]

            setattr(store.disk, name, counted)


def test_slots_are_stable_per_primary_and_never_global() -> None:
    assert slot_of(PRIMARY) == slot_of(primary_of(variant_key(PRIMARY, "accept-encoding=gzip")))
    assert all(0 < slot_of(f"GET http://h/{i}") < SLOTS for i in range(1000))


def test_marks_are_shared_through_the_file(tmp_path: Path) -> None:
    a, b = Generations(tmp_path), Generations(tmp_path)
    before = b.read(7)
    a.mark(7)
    assert b.read(7) != before and a.shared


def test_without_a_map_every_read_is_a_change(tmp_path: Path) -> None:
    gens = Generations(tmp_path / "missing-dir")
    assert not gens.shared and gens.read(1) != gens.read(1)


def test_a_repeated_memory_hit_reads_nothing_from_disk(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path)
    store.put(KEY, meta(2), b"v1")
    store.variants(PRIMARY), store.get(KEY)  # first look: checked against the disk
    reads = DiskReads(store)
    for _ in range(3):
        listing = store.variants(PRIMARY)
        entry = store.get(KEY)
        assert entry is not None and entry.body == b"v1" and listing[0][0] == KEY
    assert reads.count == 0


def test_the_database_is_looked_at_again_after_the_follow_interval(tmp_path: Path, monkeypatch) -> None:
    store = TieredStore.open(tmp_path)
    store.put(KEY, meta(2), b"v1")
    store.get(KEY)
    monkeypatch.setattr(tiered_module, "FOLLOW_INTERVAL", 0.0)
    reads = DiskReads(store)
    store.get(KEY)
    assert reads.count == 1  # one stamp check (and one stat) per interval, then hits are free again


@pytest.mark.parametrize("change", ["overwrite", "update", "delete", "purge", "new variant"])
def test_another_process_change_is_seen_by_the_next_lookup(tmp_path: Path, change: str) -> None:
    writer, reader = TieredStore.open(tmp_path), TieredStore.open(tmp_path)
    writer.put(KEY, meta(2), b"v1")
    assert reader.get(KEY) is not None and len(reader.variants(PRIMARY)) == 1
    match change:
        case "overwrite":
            writer.put(KEY, meta(2), b"v2")
            entry = reader.get(KEY)
            assert entry is not None and entry.body == b"v2"
        case "update":
            writer.update(KEY, meta(2, etag='"2"'))
            assert reader.variants(PRIMARY)[0][1].headers.get("ETag") == '"2"'
            entry = reader.get(KEY)
            assert entry is not None and entry.meta.headers.get("ETag") == '"2"'
        case "delete":
            writer.delete(KEY)
            assert reader.get(KEY) is None and reader.variants(PRIMARY) == []
        case "purge":
            writer.purge(PRIMARY)
            assert reader.get(KEY) is None and reader.variants(PRIMARY) == []
        case "new variant":
            writer.put(variant_key(PRIMARY, "accept-encoding=br"), meta(1), b"b")
            assert len(reader.variants(PRIMARY)) == 2


def test_eviction_marks_the_evicted_keys(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, disk_size=400 * 1024, memory_object_max=64 * 1024)
    gens = Generations(tmp_path)
    store.put(KEY, meta(40 * 1024), b"a" * 40 * 1024)
    before = gens.read(slot_of(PRIMARY))
    for i in range(30):  # pushes the first entry out of the disk tier
        store.put(variant_key(f"GET http://b/{i}", ""), meta(40 * 1024), b"b" * 40 * 1024)
    assert store.disk.get(KEY) is None
    assert gens.read(slot_of(PRIMARY)) != before
    assert store.get(KEY) is None  # and memory does not answer for it


def test_a_replaced_database_voids_other_processes_copies(tmp_path: Path) -> None:
    a, b = TieredStore.open(tmp_path), TieredStore.open(tmp_path)
    a.put(KEY, meta(2), b"v1")
    assert b.get(KEY) is not None
    before = Generations(tmp_path).read(GLOBAL)
    a.disk.db.generation += 1  # as a recovery that opened an empty database would
    a.get("other")
    assert Generations(tmp_path).read(GLOBAL) != before
    reads = DiskReads(b)
    b.get(KEY)
    assert reads.count >= 1  # checked against the disk again, not answered blindly from memory


def test_the_marks_file_is_allocated_not_sparse(tmp_path: Path) -> None:
    """A store into a hole of a mapped sparse file needs a new block; on a full disk that is a SIGBUS that
    kills the proxy (found filling an 8 MiB tmpfs). Every block is allocated when the file is opened."""
    path = tmp_path / FILENAME
    path.write_bytes(b"")
    os.truncate(path, SLOTS * 8)  # a sparse file, as an older version left it
    Generations(tmp_path)
    assert path.stat().st_size == SLOTS * 8
    assert path.stat().st_blocks * 512 >= SLOTS * 8
