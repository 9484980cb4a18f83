"""The memory tier: an LRU bounded in bytes, a per-object limit, no copies."""

from __future__ import annotations

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store.memory import MemoryStore, meta_size

STAMP = b"s" * 16


def meta(length: int, url: str = "http://a/") -> StoredResponse:
    return StoredResponse(url, 200, "OK", Headers.of({"Content-Type": "x/y"}), 1.0, 2.0, length)


OVERHEAD = meta_size(meta(0))


def test_a_hit_returns_the_stored_bytes_object() -> None:
    store = MemoryStore()
    body = b"x" * 1000
    store.put("k", meta(1000), body, STAMP)
    cached = store.get("k")
    assert cached is not None and cached.body is body and cached.stamp == STAMP


def test_size_counts_body_and_metadata_estimate() -> None:
    store = MemoryStore()
    store.put("k", meta(1000), b"x" * 1000, STAMP)
    assert store.stats().bytes == 1000 + OVERHEAD > 1500


def test_total_stays_within_limit_evicting_least_recently_used() -> None:
    item = 1000 + OVERHEAD
    store = MemoryStore(max_bytes=3 * item, max_object=2000)
    for key in "abc":
        store.put(key, meta(1000), b"x" * 1000, STAMP)
    assert store.get("a") is not None  # a is now the most recently used
    store.put("d", meta(1000), b"x" * 1000, STAMP)
    assert [k for k in "abcd" if store.get(k) is not None] == ["a", "c", "d"]
    stats = store.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (3, 3 * item, 1)
    assert stats.bytes <= stats.limit


def test_one_big_entry_evicts_several_small_ones() -> None:
    store = MemoryStore(max_bytes=10_000, max_object=10_000)
    for key in "abcd":
        store.put(key, meta(100), b"x" * 100, STAMP)
    store.put("big", meta(9000), b"x" * 9000, STAMP)
    assert store.stats().entries == 1 and store.stats().evictions == 4


@pytest.mark.parametrize(
    "length, kept",
    [
        pytest.param(1024, True, id="at the per-object limit"),
        pytest.param(1025, False, id="over the per-object limit"),
    ],
)
def test_per_object_limit(length: int, kept: bool) -> None:
    store = MemoryStore(max_bytes=10**6, max_object=1024)
    assert store.put("k", meta(length), b"x" * length, STAMP) is kept
    assert (store.get("k") is not None) is kept


def test_an_object_too_big_for_memory_removes_its_older_version() -> None:
    store = MemoryStore(max_bytes=10**6, max_object=1024)
    store.put("k", meta(10), b"x" * 10, STAMP)
    assert store.put("k", meta(2000), b"x" * 2000, STAMP) is False
    assert store.get("k") is None


def test_update_keeps_the_body_object() -> None:
    store = MemoryStore()
    body = b"body"
    store.put("k", meta(4), body, STAMP)
    newer = StoredResponse("http://a/", 200, "OK", Headers.of({"ETag": '"2"'}), 5.0, 6.0, 4)
    assert store.update("k", newer, b"t" * 16)
    cached = store.get("k")
    assert cached is not None and cached.body is body and cached.meta == newer and cached.stamp == b"t" * 16
    assert store.update("absent", newer, STAMP) is False


def test_delete_and_clear() -> None:
    store = MemoryStore()
    store.put("a", meta(1), b"a", STAMP)
    store.put("b", meta(1), b"b", STAMP)
    assert store.delete("a") and not store.delete("a")
    store.clear()
    assert store.stats().entries == 0 and store.stats().bytes == 0


def test_negative_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        MemoryStore(max_bytes=-1)
