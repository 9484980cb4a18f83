"""FleetStore over a real redis-server (single node and a 3-node Cluster): two stores are two nodes."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import Outcome, variant_key
from fwdproxy.store.fleet import FleetStore
from fwdproxy.store.shared import SharedTier
from fwdproxy.store.shared_breaker import State
from fwdproxy.store.shared_layout import CHUNK, chunk_key, lock_key, meta_key, parse_url
from tests.support_redis import RedisClusterNodes, RedisServer

PRIMARY = "GET http://origin.test/pkg.whl"
KEY = variant_key(PRIMARY, "")


def meta(length: int, url: str = "http://origin.test/pkg.whl") -> StoredResponse:
    return StoredResponse(url, 200, "OK", Headers.of({"ETag": '"1"'}), 1.0, 2.0, length)


def first(listing: list[tuple[str, StoredResponse]]) -> str:
    return listing[0][0] if listing else ""


def node(tmp: Path, url: str, *, timeout: float = 0.5, object_max: int = 256 * 1024**2) -> FleetStore:
    store = FleetStore.open(tmp, memory_size=64 * 1024**2, memory_object_max=1024**2)
    store.attach(SharedTier(parse_url(url), timeout=timeout, object_max=object_max))
    return store


async def settle(store: FleetStore) -> None:
    """Wait for the background uploads of a store."""
    assert store.shared is not None
    for _ in range(500):
        if not store._uploading:
            await asyncio.sleep(0.02)
            if not store._uploading:
                return
        await asyncio.sleep(0.01)
    raise AssertionError("uploads did not finish")


@pytest.fixture
def two_nodes(tmp_path: Path) -> Callable[[str], AsyncIterator[tuple[FleetStore, FleetStore]]]:
    async def make(url: str) -> AsyncIterator[tuple[FleetStore, FleetStore]]:
        a, b = node(tmp_path / "a", url), node(tmp_path / "b", url)
        await a.start()
        await b.start()
        try:
            yield a, b
        finally:
            await a.close_shared()
            await b.close_shared()
            a.close()
            b.close()

    return make


def body_of(store: FleetStore, key: str) -> bytes:
    entry = store.get(key)
    assert entry is not None
    if isinstance(entry.body, bytes):
        return entry.body
    with entry.body as f:
        return f.file.read()


@pytest.mark.parametrize("size", [0, 5, 3 * CHUNK + 17], ids=["empty", "small", "chunked"])
def test_a_commit_on_one_node_is_a_hit_on_the_other(two_nodes, redis: RedisServer, size: int) -> None:  # type: ignore[no-untyped-def]
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def run() -> None:
        async for a, b in two_nodes(redis.url):
            assert a.put(KEY, meta(len(data)), data) is Outcome.STORED
            await settle(a)
            assert b.get(KEY) is None  # not local yet
            assert await b.fetch(PRIMARY, first, claim=False, wait=1) is True
            assert body_of(b, KEY) == data
            assert b.shared is not None and b.shared.stats.hits == 1
            assert b.shared.stats.bytes_read == len(data)

    asyncio.run(run())
    digest = hashlib.sha256(data).hexdigest()
    assert redis.keys(chunk_key(digest, 0).replace("{", "\\{").replace("}", "\\}")) == (
        [chunk_key(digest, 0)] if size else []
    )


def test_one_body_under_two_urls_is_stored_once(two_nodes, redis: RedisServer) -> None:  # type: ignore[no-untyped-def]
    data = b"w" * (CHUNK + 1)

    async def run() -> None:
        async for a, _ in two_nodes(redis.url):
            a.put(KEY, meta(len(data)), data)
            other = variant_key("GET http://mirror.test/pkg.whl", "")
            a.put(other, meta(len(data), "http://mirror.test/pkg.whl"), data)
            await settle(a)

    asyncio.run(run())
    assert len(redis.keys("fwd:c:*")) == 2  # two chunks, once
    assert len(redis.keys("fwd:m:*")) == 2


def test_purge_on_one_node_reaches_the_others_tiers(two_nodes, redis: RedisServer) -> None:  # type: ignore[no-untyped-def]
    async def run() -> None:
        async for a, b in two_nodes(redis.url):
            a.put(KEY, meta(3), b"abc")
            await settle(a)
            assert await b.fetch(PRIMARY, first, claim=False, wait=1)
            assert b.get(KEY) is not None
            assert a.purge(PRIMARY) == 1
            for _ in range(200):
                if b.get(KEY) is None:
                    break
                await asyncio.sleep(0.01)
            assert b.get(KEY) is None
            assert b.memory.get(KEY) is None
            assert await b.fetch(PRIMARY, first, claim=False, wait=1) is False

    asyncio.run(run())
    assert redis.keys("fwd:m:*") == []


def test_an_evicted_chunk_is_a_miss_and_drops_the_metadata(two_nodes, redis: RedisServer) -> None:  # type: ignore[no-untyped-def]
    data = b"e" * (2 * CHUNK + 5)
    digest = hashlib.sha256(data).hexdigest()

    async def run() -> None:
        async for a, b in two_nodes(redis.url):
            a.put(KEY, meta(len(data)), data)
            await settle(a)
            redis.cli("del", chunk_key(digest, 1))
            assert await b.fetch(PRIMARY, first, claim=False, wait=1) is False
            assert b.get(KEY) is None

    asyncio.run(run())
    assert redis.cli("exists", meta_key(PRIMARY)) == "0"


def test_a_corrupted_chunk_is_a_miss_and_is_dropped(two_nodes, redis: RedisServer) -> None:  # type: ignore[no-untyped-def]
    data = b"c" * (CHUNK + 100)
    digest = hashlib.sha256(data).hexdigest()

    async def run() -> None:
        async for a, b in two_nodes(redis.url):
            a.put(KEY, meta(len(data)), data)
            await settle(a)
            redis.cli("setrange", chunk_key(digest, 1), "10", "X")
            assert await b.fetch(PRIMARY, first, claim=False, wait=1) is False
            assert b.get(KEY) is None

    asyncio.run(run())
    assert redis.cli("exists", meta_key(PRIMARY)) == "0"
    assert redis.keys("fwd:c:*") == []  # the bad chunks went too: the next upload writes them anew


def test_bigger_than_shared_object_max_stays_local(tmp_path: Path, redis: RedisServer) -> None:
    async def run() -> None:
        a = node(tmp_path / "a", redis.url, object_max=10)
        await a.start()
        a.put(KEY, meta(11), b"x" * 11)
        await settle(a)
        await a.close_shared()

    asyncio.run(run())
    assert redis.keys("fwd:*") == []


def test_redis_down_is_a_miss_then_the_breaker_skips_it(tmp_path: Path, private_redis: RedisServer) -> None:
    async def run() -> None:
        a = node(tmp_path / "a", private_redis.url, timeout=0.1)
        await a.start()
        assert a.shared is not None
        private_redis.kill()
        for _ in range(4):
            assert await a.fetch(PRIMARY, first, claim=True, wait=1) is False
        assert a.shared.state is State.DEGRADED
        assert a.put(KEY, meta(2), b"ok") is Outcome.STORED  # the local tiers go on
        private_redis.start()
        for _ in range(300):
            if a.shared.state is State.CONNECTED:
                break
            await asyncio.sleep(0.01)
        assert a.shared.state is State.CONNECTED
        a.put(KEY, meta(2), b"ok")
        await settle(a)
        assert a.shared.stats.uploads == 1
        await a.close_shared()

    asyncio.run(run())


def test_a_full_server_refuses_writes_and_nothing_fails(tmp_path: Path, private_redis: RedisServer) -> None:
    private_redis.cli("config", "set", "maxmemory-policy", "noeviction")
    private_redis.cli("config", "set", "maxmemory", "2mb")
    data = b"f" * (3 * CHUNK)

    async def run() -> None:
        a = node(tmp_path / "a", private_redis.url)
        await a.start()
        assert a.shared is not None
        assert a.put(KEY, meta(len(data)), data) is Outcome.STORED
        await settle(a)
        assert a.shared.state is State.FULL
        assert a.shared.stats.errors >= 1
        assert a.shared.stats.uploads == 0
        assert body_of(a, KEY) == data
        await a.close_shared()

    asyncio.run(run())


def test_the_cluster_shares_like_a_single_server(two_nodes, redis_cluster: RedisClusterNodes) -> None:  # type: ignore[no-untyped-def]
    data = b"k" * (5 * CHUNK + 3)

    async def run() -> None:
        async for a, b in two_nodes(redis_cluster.url):
            assert a.put(KEY, meta(len(data)), data) is Outcome.STORED
            await settle(a)
            assert await b.fetch(PRIMARY, first, claim=False, wait=1)
            assert body_of(b, KEY) == data
            a.purge(PRIMARY)
            for _ in range(200):
                if b.get(KEY) is None:
                    break
                await asyncio.sleep(0.01)
            assert b.get(KEY) is None

    asyncio.run(run())


def test_one_node_claims_a_cold_key_and_the_other_waits_for_its_body(two_nodes, redis: RedisServer) -> None:  # type: ignore[no-untyped-def]
    async def run() -> None:
        async for a, b in two_nodes(redis.url):
            assert await a.fetch(PRIMARY, first, claim=True, wait=5) is False  # a leads
            assert a.shared is not None and a.shared.locks.holds(PRIMARY)
            waiting = asyncio.create_task(b.fetch(PRIMARY, first, claim=True, wait=5))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            a.put(KEY, meta(4), b"lead")
            a.landed(PRIMARY)
            assert await waiting is True
            assert body_of(b, KEY) == b"lead"
            assert b.shared is not None and b.shared.stats.collapsed == 1

    asyncio.run(run())


def test_the_eviction_policy_is_read_and_noeviction_warned(
    redis: RedisServer, redis_cluster: RedisClusterNodes, caplog: pytest.LogCaptureFixture
) -> None:
    async def policy(url: str) -> str:
        tier = SharedTier(parse_url(url), timeout=0.5, object_max=1)
        try:
            return await tier.check_policy()
        finally:
            await tier.close()

    assert asyncio.run(policy(redis.url)) == "allkeys-lru"
    assert "noeviction" not in caplog.text
    assert asyncio.run(policy(redis_cluster.url)) == "noeviction"  # the Cluster's nodes run with the default
    assert "maxmemory-policy noeviction" in caplog.text


def test_a_lock_whose_holder_died_expires_and_another_node_takes_over(
    two_nodes, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from fwdproxy.store import shared_sync as shared_module

    monkeypatch.setattr(shared_module, "LOCK_TTL", 0.5)
    monkeypatch.setattr(shared_module, "LOCK_RENEW", 0.15)

    async def run() -> None:
        async for a, b in two_nodes(redis.url):
            assert a.shared is not None and b.shared is not None
            assert await a.fetch(PRIMARY, first, claim=True, wait=5) is False
            await asyncio.sleep(0.6)
            assert redis.cli("exists", lock_key(PRIMARY)) == "1"  # renewed past its 0.5 s
            a.shared.locks._locks.clear()  # a dies: no renewal, no release
            started = time.monotonic()
            assert await b.fetch(PRIMARY, first, claim=True, wait=5) is False
            assert b.shared.locks.holds(PRIMARY)  # b leads now
            assert time.monotonic() - started < 2.0
            assert b.shared.stats.collapsed == 1

    asyncio.run(run())
