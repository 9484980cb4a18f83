"""The shared tier's I/O: one Redis (or Cluster) that every node of a fleet reads and writes (issue 20).

Every operation is bounded (``timeout`` for metadata, CHUNK_TIMEOUT per batch of chunks) and goes through
the circuit breaker (shared_breaker.py): a failure is counted, logged once per state change, and reads as
a miss or a skipped write, never as an error to a client. The layout is shared_layout.py's; how a lookup
and a commit use this tier is fleet.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, ResponseError

from fwdproxy.http_model import StoredResponse
from fwdproxy.store import shared_layout as layout
from fwdproxy.store.shared_breaker import RETRY, Breaker, Event, State
from fwdproxy.store.shared_client import (
    CHUNK_TIMEOUT,
    FAILURES,
    REFUSALS,
    Corrupt,
    Missing,
    Unavailable,
    client_for,
)
from fwdproxy.store.shared_client import policies as shared_policies
from fwdproxy.store.shared_layout import SharedMeta, SharedUrl
from fwdproxy.store.shared_sync import FetchLocks, Invalidations

log = logging.getLogger("fwdproxy.shared")

T = TypeVar("T")

WINDOW = 4
"""Chunks fetched (MGET) or written (one pipeline) per round trip: 4 MiB in flight per transfer."""


@dataclass(slots=True)
class SharedStats:
    """Counters of this node's shared tier, for /metrics and the status page."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    uploads: int = 0
    dropped: int = 0
    """Entries removed because a chunk was missing or the body did not match its digest."""
    lookups: int = 0
    lookup_seconds: float = 0.0
    last_error: str = ""
    collapsed: int = 0
    """Lookups that waited for another node's download instead of asking the origin."""


class SharedTier:
    """A connection to the shared tier, its breaker and counters; every public coroutine is bounded."""

    def __init__(self, url: SharedUrl, *, timeout: float, object_max: int, ca: str | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.object_max = object_max
        self.ca = ca
        self.node = uuid.uuid4().hex
        """Names this process in invalidation messages, so it ignores its own."""
        self.breaker = Breaker()
        self.stats = SharedStats()
        self.client: Any = client_for(url, ca=ca, connect_timeout=max(timeout, 1.0))
        self._tasks: set[asyncio.Task[Any]] = set()
        self.invalidations = Invalidations(self)
        self.locks = FetchLocks(self)
        self._logged_refusal = False

    @property
    def state(self) -> State:
        return self.breaker.state

    # -- plumbing -------------------------------------------------------------------------------------

    def note(self, event: Event, err: BaseException | None = None, doing: str = "") -> None:
        before = self.breaker
        self.breaker = before.after(event, time.monotonic())
        if err is not None:
            self.stats.errors += 1
            self.stats.last_error = f"{doing}: {type(err).__name__}: {err}"
        if self.breaker.state is not before.state:
            match self.breaker.state:
                case State.DEGRADED:
                    log.warning(
                        "shared cache %s unreachable (%s); this node goes on alone and retries every %gs",
                        self.url.redacted(),
                        self.stats.last_error,
                        RETRY,
                    )
                case State.FULL:
                    log.warning("shared cache %s refuses writes (%s)", self.url.redacted(), err)
                case State.CONNECTED:
                    log.warning("shared cache %s is back", self.url.redacted())
                case State.OFF:
                    pass

    async def call(
        self,
        doing: str,
        make: Callable[[], Awaitable[T]],
        *,
        timeout: float | None = None,
        write: bool = False,
    ) -> T:
        """Run one Redis operation under the breaker and a deadline; raises Unavailable on any failure."""
        if not self.breaker.allows(time.monotonic()):
            raise Unavailable(doing)
        try:
            async with asyncio.timeout(timeout or self.timeout):
                result = await make()
        except REFUSALS as e:
            self.note(Event.REFUSED, e, doing)
            raise Unavailable(doing) from e
        except FAILURES as e:
            if isinstance(e, ResponseError) and not isinstance(e, RedisClusterException):
                self.note(Event.REFUSED, e, doing)  # an error answer: the server is there
            else:
                self.note(Event.FAILED, e, doing)
            raise Unavailable(doing) from e
        self.note(Event.WRITE_OK if write else Event.OK)
        return result

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run a background job; its failures are already counted by call()."""

        async def run() -> None:
            with contextlib.suppress(Unavailable, asyncio.CancelledError):
                await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def snapshot(self) -> dict[str, Any]:
        """What /stats.json, /metrics and the status page show (never the password)."""
        st = self.stats
        return {
            "state": self.state.value,
            "url": self.url.redacted(),
            "subscribed": self.invalidations.subscribed,
            "hits": st.hits,
            "misses": st.misses,
            "errors": st.errors,
            "bytes_read": st.bytes_read,
            "bytes_written": st.bytes_written,
            "uploads": st.uploads,
            "dropped": st.dropped,
            "collapsed": st.collapsed,
            "lookups": st.lookups,
            "lookup_seconds": st.lookup_seconds,
            "last_error": st.last_error,
        }

    @property
    def chunk_timeout(self) -> float:
        return max(CHUNK_TIMEOUT, 10 * self.timeout)

    # -- start, probe, stop ---------------------------------------------------------------------------

    async def start(
        self, on_invalidate: Callable[[str, str], None], on_resubscribe: Callable[[], None]
    ) -> None:
        """Check the server once (warn about noeviction), then keep the subscription and the probe running."""
        if isinstance(self.client, RedisCluster):
            # Learning the slot map takes a few round trips: not on a client's lookup, with its short deadline.
            with contextlib.suppress(Unavailable):
                await self.call("learning the cluster's slots", self.client.initialize, timeout=CHUNK_TIMEOUT)
        await self.check_policy()
        loop = asyncio.get_running_loop()
        for job in (
            self.invalidations.subscribe_forever(on_invalidate, on_resubscribe),
            self._probe_forever(),
        ):
            task = loop.create_task(job)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def check_policy(self) -> str:
        """The server's maxmemory-policy ("" when unknown); warns when it is noeviction."""
        try:
            found = await self.call(
                "reading maxmemory-policy",
                lambda: self.client.config_get("maxmemory-policy"),
                timeout=CHUNK_TIMEOUT,
            )
        except Unavailable:
            return ""
        policies = shared_policies(found)
        if "noeviction" in policies:
            log.warning(
                "shared cache %s has maxmemory-policy noeviction: once full it refuses new entries; "
                "set allkeys-lru (or volatile-lru) for a cache",
                self.url.redacted(),
            )
        return ",".join(sorted(policies))

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(RETRY / 4)
            if self.breaker.probe_due(time.monotonic()):
                self.breaker = Breaker(State.DEGRADED, self.breaker.failures, time.monotonic() + RETRY)
                try:
                    async with asyncio.timeout(max(self.timeout, 0.5)):
                        await self.client.ping()
                except FAILURES as e:
                    self.stats.last_error = f"probing: {type(e).__name__}: {e}"
                    continue
                self.note(Event.OK)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(*FAILURES):
            await self.client.aclose()

    # -- reads ----------------------------------------------------------------------------------------

    async def listing(self, primary: str, *, timeout: float | None = None) -> list[tuple[str, SharedMeta]]:
        """(variant key, record) of every variant stored for primary; raises Unavailable."""
        started = time.perf_counter()
        try:
            found = await self.call(
                "listing variants", lambda: self.client.hgetall(layout.meta_key(primary)), timeout=timeout
            )
        finally:
            self.stats.lookups += 1
            self.stats.lookup_seconds += time.perf_counter() - started
        out: list[tuple[str, SharedMeta]] = []
        for field_, value in found.items():
            key = field_.decode("utf-8", "surrogatepass") if isinstance(field_, bytes) else str(field_)
            record = layout.decode_meta(value) if isinstance(value, bytes) else None
            if record is None:
                continue  # another version's or damaged: a miss, left for its writer or the TTL
            out.append((key, record))
        return out

    async def chunks(self, entry: SharedMeta) -> AsyncIterator[bytes]:
        """The body's chunks in order, WINDOW per round trip; raises Missing or Unavailable."""
        count = layout.chunk_count(entry.meta.body_length, entry.chunk)
        for start in range(0, count, WINDOW):
            keys = [layout.chunk_key(entry.digest, i) for i in range(start, min(count, start + WINDOW))]
            values: list[object] = await self.call(
                "reading a body", functools.partial(self.client.mget, keys), timeout=self.chunk_timeout
            )
            for index, value in enumerate(values, start):
                if not isinstance(value, bytes):
                    raise Missing(entry.digest)
                if hashlib.sha256(value).digest() != entry.chunk_digests[index]:
                    raise Corrupt(entry.digest)
                self.stats.bytes_read += len(value)
                yield value

    async def drop(self, primary: str, key: str) -> None:
        """Remove one variant's metadata (its chunks may serve another URL; Redis evicts them in time)."""
        self.stats.dropped += 1
        await self.call("dropping an entry", lambda: self.client.hdel(layout.meta_key(primary), key))

    async def drop_body(self, digest: str, length: int, chunk: int = layout.CHUNK) -> None:
        """Remove a body's chunks (they did not match their digest), so the next upload writes them anew."""
        keys = [layout.chunk_key(digest, i) for i in range(layout.chunk_count(length, chunk))]
        if keys:
            await self.call("dropping a body", lambda: self.client.delete(*keys), write=True)

    # -- writes ---------------------------------------------------------------------------------------

    async def has_body(self, digest: str, length: int, chunk: int = layout.CHUNK) -> bool:
        """Whether every chunk of this body is stored already (one artifact under two URLs is stored once)."""
        count = layout.chunk_count(length, chunk)
        if count == 0:
            return True
        keys = [layout.chunk_key(digest, i) for i in range(count)]
        found = await self.call("checking a body", lambda: self.client.exists(*keys))
        return int(found) == count

    async def put_chunks(self, digest: str, start: int, values: list[bytes]) -> None:
        """Write chunks start, start+1, … of a body in one pipeline."""

        async def run() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for offset, value in enumerate(values):
                pipe.set(layout.chunk_key(digest, start + offset), value, ex=layout.TTL)
            return await pipe.execute()

        await self.call("writing a body", run, timeout=self.chunk_timeout, write=True)
        self.stats.bytes_written += sum(len(v) for v in values)

    async def put_meta(self, primary: str, key: str, entry: SharedMeta) -> None:
        """Make one variant visible to every node (after its chunks)."""
        name, value = layout.meta_key(primary), layout.encode_meta(entry)

        async def run() -> Any:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(name, key, value)
            pipe.expire(name, layout.TTL)
            return await pipe.execute()

        await self.call("writing metadata", run, write=True)

    async def update_meta(self, primary: str, key: str, meta: StoredResponse) -> None:
        """A 304 refreshed a variant (§4.3.4): the shared record gets the new metadata, same body."""
        for found_key, entry in await self.listing(primary):
            if found_key == key and entry.meta.body_length == meta.body_length:
                await self.put_meta(primary, key, dataclasses.replace(entry, meta=meta))

    async def forget(self, primary: str, key: str = "") -> None:
        """Remove a primary key (or one variant) from the shared tier and tell the other nodes."""
        name = layout.meta_key(primary)
        if key:
            await self.call("deleting an entry", lambda: self.client.hdel(name, key), write=True)
        else:
            await self.call("purging an entry", lambda: self.client.delete(name), write=True)
        await self.invalidations.publish(primary, key)
