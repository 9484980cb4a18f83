"""Crash safety and sharing: a killed writer leaves at most a temp file; processes see each other."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import BodyFile, DiskStore, Outcome, verify_all
from fwdproxy.store.tempfiles import target_name

KIB = 1024
spawn = multiprocessing.get_context("spawn")  # a clean interpreter, like a second fwdproxy worker


def meta(length: int) -> StoredResponse:
    return StoredResponse("http://a/", 200, "OK", Headers(), 1.0, 2.0, length)


def body(length: int, seed: int) -> bytes:
    block = bytes((i + seed) % 251 for i in range(251))
    return (block * (length // 251 + 1))[:length]


def files(root: Path, suffix: str) -> list[Path]:
    return sorted(p for p in root.rglob(f"*{suffix}") if p.is_file())


def read_all(entry_body: bytes | BodyFile) -> bytes:
    if isinstance(entry_body, bytes):
        return entry_body
    with entry_body as f:
        return f.file.read()


def write_entries(directory: str, prefix: str, count: int) -> None:
    """Child process: store count entries, alternating small (in the row) and big (a file)."""
    store = DiskStore(directory, read_whole_max=64 * KIB)
    for i in range(count):
        data = body(100 if i % 2 else 100 * KIB, seed=i)
        writer = store.writer(f"{prefix}{i}")
        for at in range(0, len(data), 16 * KIB):
            writer.write(data[at : at + 16 * KIB])
        assert writer.commit(meta(len(data))) is Outcome.STORED


def die_mid_write(directory: str) -> None:
    """Child process: stream half a body, then get killed like `kill -9`."""
    store = DiskStore(directory)
    writer = store.writer("k")
    writer.write(body(200 * KIB, seed=0))
    os.kill(os.getpid(), signal.SIGKILL)


def test_commit_in_a_child_process_is_seen_by_an_open_store(tmp_path: Path) -> None:
    parent = DiskStore(tmp_path, read_whole_max=64 * KIB)
    assert parent.get("child1") is None
    child = spawn.Process(target=write_entries, args=(str(tmp_path), "child", 4))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    for i in range(4):
        entry = parent.get(f"child{i}")
        assert entry is not None and read_all(entry.body) == body(100 if i % 2 else 100 * KIB, seed=i)


def test_concurrent_writers_in_several_processes(tmp_path: Path) -> None:
    children = [spawn.Process(target=write_entries, args=(str(tmp_path), f"p{n}-", 20)) for n in range(2)]
    for child in children:
        child.start()
    write_entries(str(tmp_path), "parent-", 20)
    for child in children:
        child.join(120)
        assert child.exitcode == 0
    store = DiskStore(tmp_path, read_whole_max=64 * KIB)
    for prefix in ("p0-", "p1-", "parent-"):
        for i in range(20):
            entry = store.get(f"{prefix}{i}")
            assert entry is not None and read_all(entry.body) == body(100 if i % 2 else 100 * KIB, seed=i)
    report = verify_all(store, orphan_age=0)
    assert (report.checked, report.bad, report.orphans) == (60, 0, 0)
    assert files(tmp_path, ".part") == []


def test_killed_mid_write_leaves_a_temp_file_that_the_next_open_removes(tmp_path: Path) -> None:
    child = spawn.Process(target=die_mid_write, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    (leftover,) = files(tmp_path / "tmp", ".part")
    assert leftover.stat().st_size >= 200 * KIB  # its reservation (budget.py) counts until it is removed
    store = DiskStore(tmp_path)
    assert files(tmp_path, ".part") == [] and store.get("k") is None and store.stats().disk.entries == 0


def test_simulated_kill_mid_write(tmp_path: Path) -> None:
    DiskStore(tmp_path).close()
    (tmp_path / "tmp" / ("ab" * 16 + ".part")).write_bytes(b"partial body")
    store = DiskStore(tmp_path)
    assert files(tmp_path, ".part") == [] and list(store.iterate()) == []


def test_simulated_kill_between_link_and_database_commit(tmp_path: Path) -> None:
    DiskStore(tmp_path).close()
    name = "cd" * 16 + ".part"
    temp = tmp_path / "tmp" / name
    temp.write_bytes(b"complete body, never committed")
    linked = tmp_path / "store" / target_name(name)
    linked.parent.mkdir(parents=True)
    os.link(temp, linked)
    DiskStore(tmp_path)
    assert not temp.exists() and not linked.exists()


def test_simulated_kill_between_database_commit_and_temp_removal(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    data = body(100 * KIB, seed=3)
    writer = store.writer("k")
    writer.write(data)
    assert writer.commit(meta(len(data))) is Outcome.STORED
    (stored,) = files(tmp_path / "store", ".val")
    hexname = "".join(stored.relative_to(tmp_path / "store").parts).removesuffix(".val")
    temp = tmp_path / "tmp" / f"{hexname}.part"
    os.link(stored, temp)  # as if the process died before unlinking its temp name
    store.close()
    again = DiskStore(tmp_path)
    assert not temp.exists() and stored.exists()
    entry = again.get("k")
    assert entry is not None and entry.body == data


def test_a_live_writers_temp_file_survives_another_store_opening(tmp_path: Path) -> None:
    first = DiskStore(tmp_path)
    writer = first.writer("k")
    writer.write(body(100 * KIB, seed=1))
    second = DiskStore(tmp_path)  # its stale-file sweep must skip the locked file
    assert writer.temp_path is not None and os.path.exists(writer.temp_path)
    writer.write(body(10, seed=2))
    assert writer.commit(meta(100 * KIB + 10)) is Outcome.STORED
    entry = second.get("k")
    assert entry is not None and entry.body == body(100 * KIB, seed=1) + body(10, seed=2)


@pytest.mark.parametrize("stage", ["before commit", "after commit"])
def test_no_entry_is_visible_before_its_body_is_complete(tmp_path: Path, stage: str) -> None:
    writer_store, reader = DiskStore(tmp_path), DiskStore(tmp_path)
    writer = writer_store.writer("k")
    writer.write(body(100 * KIB, seed=0))
    if stage == "after commit":
        writer.commit(meta(100 * KIB))
        entry = reader.get("k")
        assert entry is not None and entry.body == body(100 * KIB, seed=0)
    else:
        assert reader.get("k") is None and list(reader.iterate()) == []
        writer.abort()
