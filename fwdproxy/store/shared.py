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
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    LockError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from fwdproxy.http_model import StoredResponse
from fwdproxy.store import shared_layout as layout
from fwdproxy.store.shared_breaker import RETRY, Breaker, Event, State
from fwdproxy.store.shared_layout import SharedMeta, SharedUrl

log = logging.getLogger("fwdproxy.shared")

T = TypeVar("T")

WINDOW = 4
"""Chunks fetched (MGET) or written (one pipeline) per round trip: 4 MiB in flight per transfer."""
CHUNK_TIMEOUT = 5.0
"""Seconds one batch of chunks may take (at least; 10 × --shared-timeout when that is longer): 4 MiB over a
1 Gbit/s link take 35 ms, so this only catches a server that stopped answering."""
LOCK_TTL = 10.0
"""Seconds a fetch lock lives unless renewed: a node that died holding it stops the others this long."""
LOCK_RENEW = LOCK_TTL / 3
LOCK_POLL = 0.05
"""Seconds between checks, by a node waiting for another one's download, that the lock is gone."""
REFUSALS = (OutOfMemoryError, ReadOnlyError)
FAILURES = (RedisError, OSError, TimeoutError)


class Unavailable(Exception):
    """The operation did not reach a usable answer (breaker open, timeout, connection or server error)."""


class Missing(Exception):
    """A chunk of a body is gone (evicted under its metadata)."""


class Corrupt(Exception):
    """A chunk does not match its digest."""


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


def _policies(found: object) -> set[str]:
    """maxmemory-policy values in a CONFIG GET answer (a Cluster nests one answer per node)."""
    out: set[str] = set()
    if isinstance(found, dict):
        for name, value in found.items():
            if isinstance(value, dict):
                out |= _policies(value)
            elif (name.decode() if isinstance(name, bytes) else str(name)) == "maxmemory-policy":
                out.add(value.decode() if isinstance(value, bytes) else str(value))
    return out


def _client(url: SharedUrl, *, ca: str | None, connect_timeout: float) -> Any:
    """A redis-py asyncio client; retries off: the breaker decides what happens after a failure."""
    common: dict[str, Any] = {
        "username": url.username,
        "password": url.password,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": CHUNK_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    if url.tls:
        common |= {"ssl": True, "ssl_ca_certs": ca}
    if url.cluster:
        nodes = [ClusterNode(host, port) for host, port in url.nodes]
        return RedisCluster(startup_nodes=nodes, **common)
    host, port = url.nodes[0]
    return aioredis.Redis(host=host, port=port, db=url.db, **common)


def _plain(url: SharedUrl, node: tuple[str, int], *, ca: str | None, connect_timeout: float) -> Any:
    """A client of one server: pub/sub in a Cluster goes to any node (PUBLISH reaches every node)."""
    single = SharedUrl((node,), False, url.tls, 0 if url.cluster else url.db, url.username, url.password)
    return _client(single, ca=ca, connect_timeout=connect_timeout)


PASSWORD_ENV = "FWDPROXY_SHARED_CACHE_PASSWORD"
"""Where the password comes from when neither the URL nor --shared-cache-password-file gives one."""


def password_from(url: SharedUrl, password_file: str | None, env: dict[str, str]) -> SharedUrl:
    """The URL with its password: its own, else the file's first line, else the environment's.

    Raises:
        ValueError: the file cannot be read.
    """
    if url.password is not None:
        return url
    secret = None
    if password_file:
        try:
            with open(os.path.expanduser(password_file), encoding="utf-8") as f:
                secret = f.readline().rstrip("\r\n")
        except OSError as e:
            raise ValueError(f"--shared-cache-password-file {password_file}: {e.strerror}") from None
    elif env.get(PASSWORD_ENV):
        secret = env[PASSWORD_ENV]
    return dataclasses.replace(url, password=secret) if secret else url


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
        self.subscribed = False
        self.client: Any = _client(url, ca=ca, connect_timeout=max(timeout, 1.0))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._locks: dict[str, Lock] = {}
        self._logged_refusal = False

    @property
    def state(self) -> State:
        return self.breaker.state

    # -- plumbing -------------------------------------------------------------------------------------

    def _note(self, event: Event, err: BaseException | None = None, doing: str = "") -> None:
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

    async def _call(
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
            self._note(Event.REFUSED, e, doing)
            raise Unavailable(doing) from e
        except FAILURES as e:
            if isinstance(e, ResponseError) and not isinstance(e, RedisClusterException):
                self._note(Event.REFUSED, e, doing)  # an error answer: the server is there
            else:
                self._note(Event.FAILED, e, doing)
            raise Unavailable(doing) from e
        self._note(Event.WRITE_OK if write else Event.OK)
        return result

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run a background job; its failures are already counted by _call."""

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
            "subscribed": self.subscribed,
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
                await self._call(
                    "learning the cluster's slots", self.client.initialize, timeout=CHUNK_TIMEOUT
                )
        await self.check_policy()
        loop = asyncio.get_running_loop()
        for job in (self._subscribe_forever(on_invalidate, on_resubscribe), self._probe_forever()):
            task = loop.create_task(job)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def check_policy(self) -> str:
        """The server's maxmemory-policy ("" when unknown); warns when it is noeviction."""
        try:
            found = await self._call(
                "reading maxmemory-policy",
                lambda: self.client.config_get("maxmemory-policy"),
                timeout=CHUNK_TIMEOUT,
            )
        except Unavailable:
            return ""
        policies = _policies(found)
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
                self._note(Event.OK)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(*FAILURES):
            await self.client.aclose()

    # -- invalidation over pub/sub --------------------------------------------------------------------

    async def publish(self, primary: str, key: str = "") -> None:
        """Tell the other nodes that primary (or only its variant key) went."""
        message = json.dumps({"n": self.node, "p": primary, "k": key}, ensure_ascii=True)
        await self._call("publishing an invalidation", lambda: self.client.publish(layout.CHANNEL, message))

    async def _subscribe_forever(
        self, on_invalidate: Callable[[str, str], None], on_resubscribe: Callable[[], None]
    ) -> None:
        lost, attempt = False, 0
        while True:
            node = self.url.nodes[attempt % len(self.url.nodes)]
            attempt += 1
            client = _plain(self.url, node, ca=self.ca, connect_timeout=max(self.timeout, 1.0))
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
        if not isinstance(doc, dict) or not isinstance(doc.get("p"), str) or doc.get("n") == self.node:
            return
        key = doc.get("k")
        on_invalidate(doc["p"], key if isinstance(key, str) else "")

    # -- reads ----------------------------------------------------------------------------------------

    async def listing(self, primary: str, *, timeout: float | None = None) -> list[tuple[str, SharedMeta]]:
        """(variant key, record) of every variant stored for primary; raises Unavailable."""
        started = time.perf_counter()
        try:
            found = await self._call(
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
            values: list[object] = await self._call(
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
        await self._call("dropping an entry", lambda: self.client.hdel(layout.meta_key(primary), key))

    async def drop_body(self, digest: str, length: int, chunk: int = layout.CHUNK) -> None:
        """Remove a body's chunks (they did not match their digest), so the next upload writes them anew."""
        keys = [layout.chunk_key(digest, i) for i in range(layout.chunk_count(length, chunk))]
        if keys:
            await self._call("dropping a body", lambda: self.client.delete(*keys), write=True)

    # -- writes ---------------------------------------------------------------------------------------

    async def has_body(self, digest: str, length: int, chunk: int = layout.CHUNK) -> bool:
        """Whether every chunk of this body is stored already (one artifact under two URLs is stored once)."""
        count = layout.chunk_count(length, chunk)
        if count == 0:
            return True
        keys = [layout.chunk_key(digest, i) for i in range(count)]
        found = await self._call("checking a body", lambda: self.client.exists(*keys))
        return int(found) == count

    async def put_chunks(self, digest: str, start: int, values: list[bytes]) -> None:
        """Write chunks start, start+1, … of a body in one pipeline."""

        async def run() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for offset, value in enumerate(values):
                pipe.set(layout.chunk_key(digest, start + offset), value, ex=layout.TTL)
            return await pipe.execute()

        await self._call("writing a body", run, timeout=self.chunk_timeout, write=True)
        self.stats.bytes_written += sum(len(v) for v in values)

    async def put_meta(self, primary: str, key: str, entry: SharedMeta) -> None:
        """Make one variant visible to every node (after its chunks)."""
        name, value = layout.meta_key(primary), layout.encode_meta(entry)

        async def run() -> Any:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(name, key, value)
            pipe.expire(name, layout.TTL)
            return await pipe.execute()

        await self._call("writing metadata", run, write=True)

    async def update_meta(self, primary: str, key: str, meta: StoredResponse) -> None:
        """A 304 refreshed a variant (§4.3.4): the shared record gets the new metadata, same body."""
        for found_key, entry in await self.listing(primary):
            if found_key == key and entry.meta.body_length == meta.body_length:
                await self.put_meta(primary, key, dataclasses.replace(entry, meta=meta))

    async def forget(self, primary: str, key: str = "") -> None:
        """Remove a primary key (or one variant) from the shared tier and tell the other nodes."""
        name = layout.meta_key(primary)
        if key:
            await self._call("deleting an entry", lambda: self.client.hdel(name, key), write=True)
        else:
            await self._call("purging an entry", lambda: self.client.delete(name), write=True)
        await self.publish(primary, key)

    # -- the cross-node fetch lock --------------------------------------------------------------------

    async def claim(self, primary: str) -> bool:
        """Take primary's fetch lock (SET NX PX through redis-py's Lock); renewed until release()."""
        if primary in self._locks:
            return True
        lock = Lock(
            self.client, layout.lock_key(primary), timeout=LOCK_TTL, blocking=False, thread_local=False
        )
        try:
            taken = await self._call("taking a fetch lock", lock.acquire, write=True)
        except Unavailable:
            return False
        if taken:
            self._locks[primary] = lock
            self.spawn(self._renew(primary, lock))
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
                async with asyncio.timeout(max(self.timeout, 1.0)):
                    await lock.reacquire()
            except LockError:
                break  # it lapsed (and maybe another node holds it now): ours no longer
            except FAILURES as e:
                self._note(Event.FAILED, e, "renewing a fetch lock")
                if not self.breaker.allows(time.monotonic()):
                    break
            else:
                self._note(Event.OK)
        if self._locks.get(primary) is lock:
            del self._locks[primary]

    def holds(self, primary: str) -> bool:
        return primary in self._locks

    async def release(self, primary: str) -> None:
        """Let the other nodes look in the shared tier again (idempotent)."""
        lock = self._locks.pop(primary, None)
        if lock is None or not self.breaker.allows(time.monotonic()):
            return  # unreachable: it expires within LOCK_TTL
        try:
            async with asyncio.timeout(self.timeout):
                await lock.release()
        except LockError:
            pass  # it expired meanwhile (and maybe another node holds it now): nothing of ours to remove
        except FAILURES as e:
            self._note(Event.FAILED, e, "releasing a fetch lock")

    async def wait_released(self, primary: str, deadline: float) -> bool:
        """Wait until another node's lock on primary is gone; False at the deadline or on a failure."""
        name = layout.lock_key(primary)
        while time.monotonic() < deadline:
            try:
                # Not on a client's critical path (it waits anyway), and a busy event loop makes a 100 ms
                # deadline expire without Redis being slow: a longer one here, and one failed poll is retried.
                watch = max(self.timeout, 1.0)
                if not await self._call(
                    "watching a fetch lock", lambda: self.client.exists(name), timeout=watch
                ):
                    return True
            except Unavailable:
                if not self.breaker.allows(time.monotonic()):
                    return False
            await asyncio.sleep(LOCK_POLL)
        return False
