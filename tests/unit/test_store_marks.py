"""Marks of what the tiered store answered with (for the fast hit layer): they hold exactly while the store
would answer the same, and a disk body read again is the file's current, checked bytes."""

from __future__ import annotations

import os
from pathlib import Path

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import TieredStore

KIB = 1024


def meta(length: int, etag: str = '"1"') -> StoredResponse:
    return StoredResponse("http://a/", 200, "OK", Headers.of({"ETag": etag}), 1.0, 2.0, length)


def test_memory_mark_holds_until_the_entry_is_rewritten_deleted_or_evicted(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=2**20, memory_object_max=64 * KIB)
    assert store.memory_mark("k") is None
    store.put("k", meta(3), b"abc")
    assert store.memory_get("k") is not None
    mark = store.memory_mark("k")
    assert mark is not None
    assert store.unchanged(mark)
    store.put("k", meta(3, '"2"'), b"xyz")  # a new version: its slot's mark moves
    assert not store.unchanged(mark)
    assert store.memory_get("k") is not None
    again = store.memory_mark("k")
    assert again is not None and store.unchanged(again)
    store.memory.delete("k")  # evicted from memory, still on disk
    assert not store.unchanged(again)
    store.get("k")  # promoted again; the next memory hit checks the copy against the disk row
    assert store.memory_mark("k") is None
    assert store.memory_get("k") is not None
    last = store.memory_mark("k")
    assert last is not None
    store.delete("k")
    assert not store.unchanged(last)


def test_another_store_on_the_same_directory_voids_a_mark(tmp_path: Path) -> None:
    one = TieredStore.open(tmp_path, memory_size=2**20)
    other = TieredStore.open(tmp_path, memory_size=2**20)
    one.put("k", meta(3), b"abc")
    assert one.memory_get("k") is not None
    mark = one.memory_mark("k")
    assert mark is not None and one.unchanged(mark)
    other.put("k", meta(3, '"2"'), b"new")  # another process's write marks the slot
    assert not one.unchanged(mark)


def test_disk_body_reads_the_file_again_and_refuses_a_changed_file(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    data = os.urandom(100 * KIB)  # over the inline limit: a body file
    store.put("k", meta(len(data)), data)
    entry = store.get("k")
    assert entry is not None and entry.body == data
    mark = store.disk_mark("k")
    assert mark is not None
    again = store.disk_body(mark)
    assert again == data and again is not entry.body  # read from the file, not remembered
    # The same bytes written back through the file system: another mtime/ctime, not the checked file.
    Path(mark.path).write_bytes(data)
    assert store.disk_body(mark) is None
    assert store.get("k") is not None  # read and hashed anew by the store: then the mark is good again
    assert store.disk_body(store.disk_mark("k") or mark) == data
    store.delete("k")
    assert store.disk_body(mark) is None


def test_an_inline_body_is_marked_without_its_body_and_read_from_its_row(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0)
    store.put("k", meta(3), b"abc")
    assert store.get("k") is not None
    mark = store.disk_mark("k")
    assert mark is not None and mark.path is None and mark.inline is not None
    assert not mark.inline.prefix.endswith(b"abc")
    assert store.disk_body(mark) == b"abc"
    store.put("k", meta(3, '"2"'), b"xyz")
    assert store.disk_body(mark) is None  # a new version: its slot's mark moved
    assert store.get("k") is not None
    assert store.disk_body(store.disk_mark("k") or mark) == b"xyz"
