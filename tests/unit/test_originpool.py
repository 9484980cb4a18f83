"""The shared origin pool's bookkeeping: reuse, the per-origin limit, waiters, and freed slots."""

from __future__ import annotations

import asyncio

from fwdproxy.originpool import OriginPool, PoolKey

A = PoolKey("http", "a.test", 80)
B = PoolKey("http", "b.test", 80)


def test_new_slot_then_reuse_last_in_first_out() -> None:
    async def scenario() -> None:
        pool: OriginPool[str] = OriginPool(max_per_origin=4)
        assert await pool.acquire(A) is None and await pool.acquire(A) is None
        pool.put(A, "one")
        pool.put(A, "two")
        assert await pool.acquire(A) == "two"  # the most recently used first
        assert await pool.acquire(B) is None  # another origin has its own connections
        assert (pool.busy(A), pool.idle(A), pool.busy(B)) == (2, 1, 1)
        assert (pool.opened, pool.reused) == (3, 1)

    asyncio.run(scenario())


def test_limit_makes_requests_wait_for_a_returned_connection() -> None:
    async def scenario() -> None:
        pool: OriginPool[str] = OriginPool(max_per_origin=2)
        await pool.acquire(A)
        await pool.acquire(A)
        third = asyncio.create_task(pool.acquire(A))
        await asyncio.sleep(0)
        assert not third.done()
        pool.put(A, "returned")
        assert await third == "returned"
        assert pool.busy(A) == 2

    asyncio.run(scenario())


def test_a_closed_connection_passes_its_slot_to_a_waiter() -> None:
    async def scenario() -> None:
        pool: OriginPool[str] = OriginPool(max_per_origin=1)
        await pool.acquire(A)
        waiting = asyncio.create_task(pool.acquire(A))
        await asyncio.sleep(0)
        pool.discard(A)
        assert await waiting is None  # a slot: the waiter opens its own connection
        assert pool.busy(A) == 1
        pool.discard(A)
        assert pool.busy(A) == 0

    asyncio.run(scenario())


def test_cancelled_waiter_gives_back_what_it_was_handed() -> None:
    async def scenario() -> None:
        pool: OriginPool[str] = OriginPool(max_per_origin=1)
        await pool.acquire(A)
        gone = asyncio.create_task(pool.acquire(A))
        await asyncio.sleep(0)
        pool.put(A, "conn")  # handed to the waiter...
        gone.cancel()  # ...whose client leaves before it runs
        await asyncio.sleep(0)
        assert gone.cancelled()
        assert pool.idle(A) == 1 and pool.busy(A) == 1
        assert await pool.acquire(A) == "conn"

    asyncio.run(scenario())


def test_remove_idle_frees_the_slot_once() -> None:
    async def scenario() -> None:
        pool: OriginPool[str] = OriginPool(max_per_origin=1)
        await pool.acquire(A)
        pool.put(A, "conn")
        assert pool.remove_idle(A, "conn") is True
        assert pool.remove_idle(A, "conn") is False
        assert pool.busy(A) == 0
        assert await pool.acquire(A) is None

    asyncio.run(scenario())
