"""What keeps a fleet in step: invalidations over pub/sub, and the cross-node fetch lock (SET NX PX).

Both work through their SharedTier's breaker and counters (shared.py); fleet.py decides when to use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from fwdproxy.store import shared_layout as layout
from fwdproxy.store.shared_breaker import RETRY, Breaker, Event
from fwdproxy.store.shared_client import FAILURES, Unavailable, plain_client
from fwdproxy.store.shared_layout import SharedUrl

T = TypeVar("T")


class Tier(Protocol):
    """What these helpers use of their SharedTier (shared.py), which owns them: no import back to it."""

    url: SharedUrl
    ca: str | None
    timeout: float
    node: str
    client: Any
    breaker: Breaker

    async def call(
        self,
        doing: str,
        make: Callable[[], Awaitable[T]],
        *,
        timeout: float | None = None,
        write: bool = False,
    ) -> T: ...

    def note(self, event: Event, err: BaseException | None = None, doing: str = "") -> None: ...

    def spawn(self, coro: Awaitable[Any]) -> None: ...


log = logging.getLogger("fwdproxy.shared")

LOCK_TTL = 10.0
"""Seconds a fetch lock lives unless renewed: a node that died holding it stops the others this long."""
LOCK_RENEW = LOCK_TTL / 3
LOCK_POLL = 0.05
"""Seconds between checks, by a node waiting for another one's download, that the lock is gone."""


class Invalidations:
    """Publishes this node's deletes and purges; applies the other nodes' to the local tiers."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self.subscribed = False

    # -- invalidation over pub/sub --------------------------------------------------------------------

    async def publish(self, primary: str, key: str = "") -> None:
        """Tell the other nodes that primary (or only its variant key) went."""
        message = json.dumps({"n": self.tier.node, "p": primary, "k": key}, ensure_ascii=True)
        await self.tier.call(
            "publishing an invalidation", lambda: self.tier.client.publish(layout.CHANNEL, message)
        )

    async def subscribe_forever(
        self, on_invalidate: Callable[[str, str], None], on_resubscribe: Callable[[], None]
    ) -> None:
        lost, attempt = False, 0
        while True:
            node = self.tier.url.nodes[attempt % len(self.tier.url.nodes)]
            attempt += 1
            client = plain_client(
                self.tier.url, node, ca=self.tier.ca, connect_timeout=max(self.tier.timeout, 1.0)
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(layout.CHANNEL)
                if lost:
                    # Messages sent while we were away are lost: what memory holds may have been purged.
                    log.warning("shared cache subscription restored; dropping the memory tier")
                    on_resubscribe()
                lost, self.subscribed = False, True
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        self._received(message.get("data"), on_invalidate)
            except FAILURES as e:
                if not lost:
                    log.info("shared cache subscription lost (%s); retrying", e)
                lost, self.subscribed = True, False
                await asyncio.sleep(RETRY)
            finally:
                with contextlib.suppress(*FAILURES):
                    await pubsub.aclose()
                with contextlib.suppress(*FAILURES):
                    await client.aclose()

    def _received(self, data: object, on_invalidate: Callable[[str, str], None]) -> None:
        try:
            doc = json.loads(data) if isinstance(data, bytes | str) else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("p"), str) or doc.get("n") == self.tier.node:
            return
        key = doc.get("k")
        on_invalidate(doc["p"], key if isinstance(key, str) else "")


class FetchLocks:
    """The fetch locks this node holds (one per primary key), renewed while its download runs."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self._locks: dict[str, Lock] = {}

    # -- the cross-node fetch lock --------------------------------------------------------------------

    async def claim(self, primary: str) -> bool:
        """Take primary's fetch lock (SET NX PX through redis-py's Lock); renewed until release()."""
        if primary in self._locks:
            return True
        lock = Lock(
            self.tier.client, layout.lock_key(primary), timeout=LOCK_TTL, blocking=False, thread_local=False
        )
        try:
            taken = await self.tier.call("taking a fetch lock", lock.acquire, write=True)
        except Unavailable:
            return False
        if taken:
            self._locks[primary] = lock
            self.tier.spawn(self._renew(primary, lock))
        return bool(taken)

    async def _renew(self, primary: str, lock: Lock) -> None:
        # Bounded: a leader that never lands (a bug, a hung origin) stops blocking others after this long.
        deadline = time.monotonic() + 120.0
        while self._locks.get(primary) is lock and time.monotonic() < deadline:
            await asyncio.sleep(LOCK_RENEW)
            if self._locks.get(primary) is not lock:
                return
            try:
                # A longer deadline than a lookup's: a renewal that only timed out on a busy event loop
                # would let the lock lapse and another node fetch the same body.
                async with asyncio.timeout(max(self.tier.timeout, 1.0)):
                    await lock.reacquire()
            except LockError:
                break  # it lapsed (and maybe another node holds it now): ours no longer
            except FAILURES as e:
                self.tier.note(Event.FAILED, e, "renewing a fetch lock")
                if not self.tier.breaker.allows(time.monotonic()):
                    break
            else:
                self.tier.note(Event.OK)
        if self._locks.get(primary) is lock:
            del self._locks[primary]

    def holds(self, primary: str) -> bool:
        return primary in self._locks

    async def release(self, primary: str) -> None:
        """Let the other nodes look in the shared tier again (idempotent)."""
        lock = self._locks.pop(primary, None)
        if lock is None or not self.tier.breaker.allows(time.monotonic()):
            return  # unreachable: it expires within LOCK_TTL
        try:
            async with asyncio.timeout(self.tier.timeout):
                await lock.release()
        except LockError:
            pass  # it expired meanwhile (and maybe another node holds it now): nothing of ours to remove
        except FAILURES as e:
            self.tier.note(Event.FAILED, e, "releasing a fetch lock")

    async def wait_released(self, primary: str, deadline: float) -> bool:
        """Wait until another node's lock on primary is gone; False at the deadline or on a failure."""
        name = layout.lock_key(primary)
        while time.monotonic() < deadline:
            try:
                # Not on a client's critical path (it waits anyway), and a busy event loop makes a 100 ms
                # deadline expire without Redis being slow: a longer one here, and one failed poll is retried.
                watch = max(self.tier.timeout, 1.0)
                if not await self.tier.call(
                    "watching a fetch lock", lambda: self.tier.client.exists(name), timeout=watch
                ):
                    return True
            except Unavailable:
                if not self.tier.breaker.allows(time.monotonic()):
                    return False
            await asyncio.sleep(LOCK_POLL)
        return False
