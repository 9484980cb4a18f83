"""Bodies being written count against the disk limit: reservations, eviction for room, refusal (issue 16)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import DiskStore, Outcome, budget

KIB = 1024
MIB = 2**20
LIMIT = 4 * MIB


def meta(length: int) -> StoredResponse:
    return StoredResponse("http://a/", 200, "OK", Headers.of({}), 1.0, 2.0, length)


def body(length: int, seed: int = 0) -> bytes:
    block = bytes((i * 7 + seed) % 251 for i in range(251))
    return (block * (length // 251 + 1))[:length]


def used(store: DiskStore) -> int:
    """What the budget counts: the committed volume plus every reservation in flight."""
    cache = store.db.live()
    assert cache is not None
    return int(cache.volume()) + budget.in_flight(store.db.tmp_dir)


def parts(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "tmp").glob("*.part"))


@pytest.fixture
def store(tmp_path: Path) -> DiskStore:
    return DiskStore(tmp_path, size_limit=LIMIT, read_whole_max=64 * KIB)


@pytest.mark.parametrize(
    "limit, expected",
    [(MIB, 64 * KIB), (8 * MIB, 128 * KIB), (100 * MIB, 100 * MIB // 64), (10 * 2**30, 8 * MIB)],
)
def test_step_is_a_64th_of_the_limit_within_bounds(limit: int, expected: int) -> None:
    assert budget.step(limit) == expected


def test_in_flight_counts_apparent_sizes_of_temp_files_only(tmp_path: Path) -> None:
    (tmp_path / "a.part").write_bytes(b"x" * 100)
    with open(tmp_path / "b.part", "wb") as f:
        f.truncate(5000)  # sparse: a reservation
    (tmp_path / ".budget").write_bytes(b"y" * 7)
    assert budget.in_flight(str(tmp_path)) == 5100
    assert budget.in_flight(str(tmp_path), exclude=str(tmp_path / "b.part")) == 100
    assert budget.in_flight(str(tmp_path / "missing")) == 0


def test_a_body_of_unknown_length_reserves_step_by_step(store: DiskStore) -> None:
    writer = store.writer("k")
    for i in range(40):
        assert writer.write(body(64 * KIB, seed=i))
        assert writer.temp_path is not None
        assert os.path.getsize(writer.temp_path) == writer.reserved >= writer.written
        assert writer.reserved - writer.written <= store.reserve_step + 64 * KIB
        assert used(store) <= LIMIT
    assert writer.commit(meta(writer.written)) is Outcome.STORED
    (stored,) = Path(store.db.store_dir).rglob("*.val")
    assert stored.stat().st_size == 40 * 64 * KIB  # the reservation's tail was given back


def test_an_announced_length_is_reserved_at_once(store: DiskStore) -> None:
    writer = store.writer("k", expected_length=3 * MIB)
    assert writer.failure is None and writer.temp_path is not None
    assert os.path.getsize(writer.temp_path) == writer.reserved == 3 * MIB
    second = store.writer("k2", expected_length=2 * MIB)  # 3 + 2 > 4 MiB: refused before any byte
    assert second.failure is Outcome.NO_ROOM and second.temp_path is not None
    assert not os.path.exists(second.temp_path)
    assert second.write(b"x") is False
    assert second.commit(meta(1)) is Outcome.NO_ROOM
    writer.abort()
    assert parts(Path(store.db.directory)) == []


def test_a_body_bigger_than_the_limit_is_refused_without_evicting_anything(store: DiskStore) -> None:
    assert store.put("small", meta(100 * KIB), body(100 * KIB)) is Outcome.STORED
    writer = store.writer("huge", expected_length=LIMIT + 1)
    assert writer.failure is Outcome.NO_ROOM
    assert store.get("small") is not None


def test_reserving_evicts_least_recently_used_entries_for_room(store: DiskStore) -> None:
    for i in range(3):
        assert store.put(f"old{i}", meta(MIB), body(MIB, seed=i)) is Outcome.STORED
    assert used(store) > 3 * MIB
    writer = store.writer("new", expected_length=2 * MIB)
    assert writer.failure is None
    assert used(store) <= LIMIT
    assert store.get("old0") is None and store.get("old2") is not None  # the oldest went first
    for i in range(2 * MIB // (64 * KIB)):
        assert writer.write(body(64 * KIB, seed=i))
    assert writer.commit(meta(2 * MIB)) is Outcome.STORED
    assert used(store) <= LIMIT


def test_a_growing_body_that_meets_the_others_in_flight_is_abandoned(store: DiskStore) -> None:
    holder = store.writer("holder", expected_length=3 * MIB)
    grower = store.writer("grower")
    written = 0
    while grower.write(body(64 * KIB)):
        written += 64 * KIB
        assert used(store) <= LIMIT
    assert grower.failure is Outcome.NO_ROOM
    assert MIB - 128 * KIB <= written <= MIB
    assert grower.temp_path is not None and not os.path.exists(grower.temp_path)  # its room is free again
    holder.abort()


def test_processes_sharing_a_directory_see_each_others_reservations(tmp_path: Path) -> None:
    one = DiskStore(tmp_path, size_limit=LIMIT)
    other = DiskStore(tmp_path, size_limit=LIMIT)  # what a second process opens
    first = one.writer("a", expected_length=3 * MIB)
    assert first.failure is None
    assert other.writer("b", expected_length=2 * MIB).failure is Outcome.NO_ROOM
    first.abort()
    assert other.writer("b", expected_length=2 * MIB).failure is None


def test_the_temp_file_of_a_dead_writer_is_swept_when_room_is_short(store: DiskStore, tmp_path: Path) -> None:
    dead = tmp_path / "tmp" / ("ab" * 16 + ".part")
    with open(dead, "wb") as f:
        f.truncate(3 * MIB)  # a reservation no live process holds (its writer was killed)
    writer = store.writer("k", expected_length=2 * MIB)
    assert writer.failure is None
    assert not dead.exists()
    writer.abort()


def test_commit_evicts_within_the_limit_beside_what_is_in_flight(store: DiskStore) -> None:
    holder = store.writer("holder", expected_length=2 * MIB)
    for i in range(3):
        assert store.put(f"k{i}", meta(600 * KIB), body(600 * KIB, seed=i)) is Outcome.STORED
        assert used(store) <= LIMIT
    holder.abort()


def test_a_body_that_could_not_fit_even_after_evicting_everything_evicts_nothing(store: DiskStore) -> None:
    assert store.put("small", meta(100 * KIB), body(100 * KIB)) is Outcome.STORED
    holder = store.writer("holder", expected_length=2 * MIB)
    # 2 MiB fit beside the holder's 2 MiB only without the database's own pages: refused, "small" kept.
    assert store.writer("k", expected_length=2 * MIB).failure is Outcome.NO_ROOM
    assert store.get("small") is not None
    holder.abort()
