"""Big body files are hashed before a process first serves them, and again whenever the file changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import BodyFile, DiskStore, Outcome, body_matches

KIB = 1024
BIG = 600 * KIB
"""Above the whole-read size of the fixture: comes as a BodyFile."""


def meta(length: int) -> StoredResponse:
    return StoredResponse("http://a/", 200, "OK", Headers.of({"ETag": '"1"'}), 1.0, 2.0, length)


def body(length: int, seed: int = 0) -> bytes:
    block = bytes((i * 7 + seed) % 251 for i in range(251))
    return (block * (length // 251 + 1))[:length]


@pytest.fixture
def store(tmp_path: Path) -> DiskStore:
    return DiskStore(tmp_path, read_whole_max=256 * KIB)


def big_file(store: DiskStore, key: str = "k") -> BodyFile:
    entry = store.get(key)
    assert entry is not None and isinstance(entry.body, BodyFile)
    return entry.body


def body_path(store: DiskStore) -> Path:
    (path,) = Path(store.db.store_dir).rglob("*.val")
    return path


def damage(path: Path, at: int, *, keep_mtime: bool) -> None:
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 1]))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_the_process_that_wrote_a_body_needs_no_hash_to_serve_it(store: DiskStore) -> None:
    assert store.put("k", meta(BIG), body(BIG)) is Outcome.STORED
    with big_file(store) as f:
        assert f.digest == ""


def test_an_unconfirmed_big_body_carries_its_digest_until_confirmed(store: DiskStore, tmp_path: Path) -> None:
    assert store.put("k", meta(BIG), body(BIG)) is Outcome.STORED
    store = DiskStore(tmp_path, read_whole_max=256 * KIB)  # another process: never hashed it
    with big_file(store) as first:
        assert first.digest  # never hashed in this process: the caller must check it
        assert body_matches(first) is True
        store.confirm("k", first, True)
    with big_file(store) as again:
        assert again.digest == ""  # the very same file, confirmed: served without hashing


def test_a_new_process_hashes_before_its_first_serve(store: DiskStore, tmp_path: Path) -> None:
    store.put("k", meta(BIG), body(BIG))
    with big_file(store) as f:
        assert f.digest == ""
    other = DiskStore(tmp_path, read_whole_max=256 * KIB)  # what another process opens
    with big_file(other) as f:
        assert f.digest


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["mtime-changed", "mtime-restored-ctime-not"])
def test_a_file_damaged_after_confirmation_is_hashed_again_and_dropped(
    store: DiskStore, keep_mtime: bool
) -> None:
    store.put("k", meta(BIG), body(BIG))
    with big_file(store) as f:
        assert f.digest == ""  # confirmed: the writer's own
    damage(body_path(store), BIG // 2, keep_mtime=keep_mtime)
    with big_file(store) as f:
        assert f.digest, "a changed file must be checked again"
        assert body_matches(f) is False
        store.confirm("k", f, False)
    assert store.get("k") is None  # dropped: a miss from now on
    assert not list(Path(store.db.store_dir).rglob("*.val"))


def test_a_failed_read_neither_confirms_nor_drops(store: DiskStore, tmp_path: Path) -> None:
    store.put("k", meta(BIG), body(BIG))
    store = DiskStore(tmp_path, read_whole_max=256 * KIB)
    with big_file(store) as f:
        store.confirm("k", f, None)
    with big_file(store) as f:
        assert f.digest


def test_a_verdict_on_an_old_version_does_not_drop_the_new_one(store: DiskStore, tmp_path: Path) -> None:
    store.put("k", meta(BIG), body(BIG))
    reader = DiskStore(tmp_path, read_whole_max=256 * KIB)
    old = big_file(reader)
    store.put("k", meta(BIG), body(BIG, seed=1))  # another process stored a new version meanwhile
    reader.confirm("k", old, False)
    old.close()
    with big_file(reader) as f:
        assert f.digest and body_matches(f) is True


@pytest.mark.parametrize("block", [1, 4096, 8 * 2**20])
def test_body_matches_reads_the_whole_file_in_any_block_size(
    store: DiskStore, tmp_path: Path, block: int
) -> None:
    size = 300 * KIB + 7 if block > 1 else 260 * KIB
    store.put("k", meta(size), body(size))
    with big_file(DiskStore(tmp_path, read_whole_max=256 * KIB)) as f:
        assert body_matches(f, block) is True
        assert f.file.tell() == 0  # pread: the sender still starts at 0


def test_body_matches_catches_a_longer_or_shorter_file(store: DiskStore, tmp_path: Path) -> None:
    store.put("k", meta(BIG), body(BIG))
    f = big_file(DiskStore(tmp_path, read_whole_max=256 * KIB))
    with open(body_path(store), "ab") as tail:
        tail.write(b"x")
    assert body_matches(f) is False
    os.truncate(body_path(store), BIG - 10)
    assert body_matches(f) is False
    f.close()


def test_small_bodies_are_rehashed_when_only_the_ctime_changed(store: DiskStore) -> None:
    size = 100 * KIB  # a file, read whole (and hashed in get)
    store.put("k", meta(size), body(size))
    assert store.get("k") is not None
    damage(body_path(store), 50 * KIB, keep_mtime=True)
    assert store.get("k") is None
