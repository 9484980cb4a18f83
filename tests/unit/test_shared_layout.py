"""The shared tier's layout and URL parsing (pure)."""

from __future__ import annotations

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store.shared_layout import (
    CHUNK,
    SharedMeta,
    SharedUrl,
    chunk_count,
    chunk_key,
    decode_meta,
    encode_meta,
    lock_key,
    meta_key,
    parse_url,
)

DIGEST = "ab" * 32


def test_meta_round_trips_with_its_digest_and_chunk_size() -> None:
    meta = StoredResponse("http://a/", 200, "OK", Headers.of({"ETag": '"1"'}), 1.0, 2.0, 3 * CHUNK)
    digests = tuple(bytes([i % 256]) * 32 for i in range(3 * CHUNK // 4096))
    back = decode_meta(encode_meta(SharedMeta(meta, DIGEST, 4096, digests)))
    assert back == SharedMeta(meta, DIGEST, 4096, digests)


def test_metadata_without_a_digest_for_each_chunk_reads_as_a_miss() -> None:
    meta = StoredResponse("http://a/", 200, "OK", Headers(), 1.0, 2.0, 2 * CHUNK)
    assert decode_meta(encode_meta(SharedMeta(meta, DIGEST, CHUNK, (b"x" * 32,)))) is None


@pytest.mark.parametrize(
    "value",
    [b"", b"FS", b"XX\x01\x00\x10\x00\x00garbage", b"FS\x02\x00\x10\x00\x00", b"FS\x01\x00\x00\x00\x00FW"],
    ids=["empty", "short", "magic", "version", "zero-chunk"],
)
def test_damaged_or_foreign_metadata_reads_as_a_miss(value: bytes) -> None:
    assert decode_meta(value) is None


def test_keys_hash_tag_what_must_share_a_cluster_slot() -> None:
    assert chunk_key(DIGEST, 7) == f"fwd:c:{{{DIGEST}}}:7"
    assert meta_key("GET http://a/") != meta_key("GET http://b/")
    assert meta_key("GET http://a/").startswith("fwd:m:{") and meta_key("GET http://a/").endswith("}")
    assert lock_key("GET http://a/")[len("fwd:l:") :] == meta_key("GET http://a/")[len("fwd:m:") :]


@pytest.mark.parametrize("length, chunks", [(0, 0), (1, 1), (CHUNK, 1), (CHUNK + 1, 2), (256 * CHUNK, 256)])
def test_chunk_count(length: int, chunks: int) -> None:
    assert chunk_count(length) == chunks


@pytest.mark.parametrize(
    "url, parsed",
    [
        ("redis://127.0.0.1:6380/2", SharedUrl((("127.0.0.1", 6380),), db=2)),
        ("redis://cache.lan", SharedUrl((("cache.lan", 6379),))),
        (
            "rediss://u:p%40ss@r.lan:6390/0",
            SharedUrl((("r.lan", 6390),), tls=True, username="u", password="p@ss"),
        ),
        ("redis://:secret@r:1", SharedUrl((("r", 1),), password="secret")),
        (
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
            SharedUrl((("10.0.0.1", 7000), ("10.0.0.2", 7001)), cluster=True),
        ),
    ],
)
def test_parse_url(url: str, parsed: SharedUrl) -> None:
    assert parse_url(url) == parsed


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://r:1", "not a redis://"),
        ("redis://a:1,b:2", "names several servers"),
        ("redis://r:1/x", "database is a number"),
        ("redis+cluster://r:1/3", "database is a number"),
        ("redis://r:notaport", "not host:port"),
        ("redis://:1", "has no host"),
    ],
)
def test_bad_urls_say_what_to_write(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


def test_the_password_never_shows() -> None:
    url = parse_url("redis://admin:hunter2@r:1/0")
    assert "hunter2" not in url.redacted()
    assert url.redacted() == "redis://admin:***@r:1/0"
