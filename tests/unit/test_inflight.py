"""Collapsing bookkeeping: one leader per key in a process, lock files across processes."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

from fwdproxy.inflight import Flights, KeyLocks, Shape


def test_one_leader_then_followers_then_landing() -> None:
    async def scenario() -> None:
        flights = Flights()
        first, leads = flights.join("k")
        second, follows = flights.join("k")
        assert leads and not follows and first is second and first.followers == 1
        first.set_shape(Shape.BUFFERED)
        flights.land("k", first, True, body_complete=True)
        assert await first.shape is Shape.BUFFERED and await first.done is True
        assert len(flights) == 0
        third, leads_again = flights.join("k")
        assert leads_again and third is not first

    asyncio.run(scenario())


def test_landing_without_shape_means_not_shared() -> None:
    async def scenario() -> None:
        flights = Flights()
        flight, _ = flights.join("k")
        flights.land("k", flight, False, body_complete=False)
        assert await flight.shape is Shape.NOT_SHARED and await flight.done is False
        assert flight.file_ready.is_set()

    asyncio.run(scenario())


def _hold(directory: str, key: str, ready, release) -> None:  # type: ignore[no-untyped-def]
    locks = KeyLocks(directory)
    fd = locks.try_lock(key)
    assert fd is not None and fd >= 0
    ready.set()
    release.wait(10)
    locks.unlock(key, fd)


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(str(tmp_path), "GET http://x/", ready, release))
    child.start()
    assert ready.wait(20)
    locks = KeyLocks(str(tmp_path))
    assert locks.try_lock("GET http://x/") is None
    assert asyncio.run(locks.wait("GET http://x/", timeout=0.2)) is False
    release.set()
    assert asyncio.run(locks.wait("GET http://x/", timeout=10)) is True
    child.join(10)
    fd = locks.try_lock("GET http://x/")
    assert fd is not None and fd >= 0
    locks.unlock("GET http://x/", fd)
    assert not list((tmp_path / "inflight").iterdir())  # lock files do not pile up
