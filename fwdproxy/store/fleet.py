"""The store of a fleet node: the memory and disk tiers in front of the shared tier (issue 20).

Lookups stay synchronous and local: only on a local miss does the caller await ``fetch``, which copies the
entry from the shared tier into the local tiers chunk by chunk (never the whole body in memory), checks it
against its digest before it becomes visible, and then lets the local lookup serve it. A commit here is
copied to the shared tier in the background, after the local commit, so a client never waits for Redis.
Deletes, purges and 304 refreshes go to the shared tier too, and the other nodes hear of deletes and purges
over pub/sub. ``fetch`` also takes the cross-node fetch lock on a shared miss, so a crowd spread over the
fleet makes one origin request; ``landed`` gives it back once the body is in the shared tier.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fwdproxy.bodysource import Progress
from fwdproxy.http_model import StoredResponse
from fwdproxy.store import codec
from fwdproxy.store.disk import DiskStore
from fwdproxy.store.generations import primary_of
from fwdproxy.store.memory import MemoryStore
from fwdproxy.store.record import Outcome, is_partial_key, partial_key
from fwdproxy.store.shared import WINDOW, SharedTier
from fwdproxy.store.shared_breaker import State
from fwdproxy.store.shared_client import Corrupt, Missing, Unavailable
from fwdproxy.store.shared_layout import CHUNK, SharedMeta
from fwdproxy.store.tiered import TieredStore, TieredWriter
from fwdproxy.store.writer import DiskWriter

log = logging.getLogger("fwdproxy.shared")


@dataclass(frozen=True, slots=True)
class Growing:
    """A big body on its way from the shared tier into a local temp file: a client may read along."""

    key: str
    meta: StoredResponse
    path: str
    """The writer's temp file (committed, i.e. renamed, at the end: open it while it is announced)."""
    progress: Progress
    """Bytes in the file, each from a chunk that matched its digest; failed if the copy is abandoned."""


Choose = Callable[[list[tuple[str, StoredResponse]]], str]
"""Picks the variant key a request may use from the shared listing ("" for none): the cache's §4.1 match."""


class FleetWriter(TieredWriter):
    """A TieredWriter whose successful commit is copied to the shared tier in the background."""

    def __init__(self, store: FleetStore, disk: DiskWriter) -> None:
        super().__init__(store, disk)
        self._fleet = store

    def commit(self, meta: StoredResponse) -> Outcome:
        outcome = super().commit(meta)
        if outcome is Outcome.STORED and not is_partial_key(self.key):  # pieces stay local (shared-tier.md)
            self._fleet.copy_up(self.key)
        return outcome


class FleetStore(TieredStore):
    """A TieredStore that also reads from and writes to a SharedTier once ``attach``ed (see the module doc)."""

    def __init__(self, memory: MemoryStore, disk: DiskStore, *, coherent: bool = True) -> None:
        super().__init__(memory, disk, coherent=coherent)
        self.shared: SharedTier | None = None
        self._uploading: Counter[str] = Counter()
        self._release_after: set[str] = set()
        self._fetching: dict[str, asyncio.Task[bool]] = {}
        self._announced: dict[str, asyncio.Future[Growing | None]] = {}
        self.stream_above: int | None = None
        """Bodies bigger than this are announced (``fetch`` returns a Growing) as soon as their copy starts."""

    def attach(self, shared: SharedTier) -> None:
        self.shared = shared

    async def start(self) -> None:
        """Connect: invalidations from other nodes reach the local tiers from now on."""
        if self.shared is not None:
            await self.shared.start(self.invalidated, self.memory.clear)

    async def close_shared(self) -> None:
        if self.shared is not None:
            await self.shared.close()

    def _background(self, make: Callable[[SharedTier], Coroutine[Any, Any, None]]) -> None:
        shared = self.shared
        if shared is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not in the proxy (a command-line tool): nothing to tell
        shared.spawn(make(shared))

    # -- local changes, forwarded --------------------------------------------------------------------

    def writer(
        self, key: str, *, max_length: int | None = None, expected_length: int | None = None
    ) -> TieredWriter:
        disk = self.disk.writer(key, max_length=max_length, expected_length=expected_length)
        return FleetWriter(self, disk)

    def update(self, key: str, meta: StoredResponse) -> bytes | None:
        stamp = super().update(key, meta)
        if stamp is not None:
            self._background(lambda shared: shared.update_meta(primary_of(key), key, meta))
        return stamp

    def delete(self, key: str) -> bool:
        gone = super().delete(key)
        if is_partial_key(key):
            return gone  # never published, so nothing to forget
        self._background(lambda shared: shared.forget(primary_of(key), key))
        return gone

    def purge(self, primary: str) -> int:
        removed = self.purge_local(primary)
        self._background(lambda shared: shared.forget(primary))
        return removed

    def purge_local(self, primary: str) -> int:
        """Purge the local tiers only (what another node told us), the partial entry too."""
        partial = TieredStore.delete(self, partial_key(primary))
        return sum(TieredStore.delete(self, key) for key, _ in self.disk.variants(primary)) + partial

    def invalidated(self, primary: str, key: str) -> None:
        """Another node deleted a variant (``key``) or purged the primary key: drop our copies."""
        if key:
            TieredStore.delete(self, key)
        else:
            self.purge_local(primary)

    # -- copying up after a local commit -------------------------------------------------------------

    def copy_up(self, key: str) -> None:
        """Copy a committed entry to the shared tier in the background (never on the client's time)."""
        shared = self.shared
        if shared is None or not shared.breaker.allows(time.monotonic()):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        primary = primary_of(key)
        self._uploading[primary] += 1
        shared.spawn(self._upload(shared, primary, key))

    async def _upload(self, shared: SharedTier, primary: str, key: str) -> None:
        try:
            row = self.disk.row(key)
            decoded = None if row is None else codec.decode(row.record)
            if row is None or not isinstance(decoded, codec.Decoded):
                return  # replaced or evicted meanwhile
            length = decoded.meta.body_length
            if length > shared.object_max:
                return  # --shared-object-max: big bodies stay local
            entry = SharedMeta(decoded.meta, decoded.checksum)
            upload = not await shared.has_body(entry.digest, length)
            if row.filename is None:
                body = decoded.inline
                batches = [body[at : at + CHUNK * WINDOW] for at in range(0, len(body), CHUNK * WINDOW)]
                digests = await self._put_body(shared, entry, _listed(batches), upload)
            else:
                path = os.path.join(self.disk.db.store_dir, row.filename)
                try:
                    file = open(path, "rb")  # noqa: SIM115 - closed below, read in a thread
                except OSError:
                    return  # evicted meanwhile
                with file:
                    digests = await self._put_body(shared, entry, _read_file(file), upload)
            await shared.put_meta(primary, key, dataclasses.replace(entry, chunk_digests=digests))
            shared.stats.uploads += 1
        finally:
            self._uploading[primary] -= 1
            if self._uploading[primary] <= 0:
                del self._uploading[primary]
                if primary in self._release_after:
                    self._release_after.discard(primary)
                    await shared.locks.release(primary)

    @staticmethod
    async def _put_body(
        shared: SharedTier, entry: SharedMeta, batches: Any, upload: bool
    ) -> tuple[bytes, ...]:
        """Write the chunks (unless ``upload`` is False: stored already under this digest), checking the bytes
        read against the digest they are stored under; the digest of each chunk."""
        check, index, digests = codec.new_checksum(), 0, []
        async for batch in batches:
            check.update(batch)
            values = [batch[at : at + CHUNK] for at in range(0, len(batch), CHUNK)]
            digests += [hashlib.sha256(v).digest() for v in values]
            if upload:
                await shared.put_chunks(entry.digest, index, values)
            index += len(values)
        if check.hexdigest() != entry.digest:
            # The file changed under us (replaced by a newer version): these chunks are not this digest's.
            log.warning("not sharing %s: its body changed while it was copied", entry.meta.url)
            if upload:
                await shared.drop_body(entry.digest, entry.meta.body_length, entry.chunk)
            raise Unavailable("body changed")
        return tuple(digests)

    def landed(self, primary: str) -> None:
        """The local leader of primary is done: release the fleet's lock once its upload (if any) is over."""
        shared = self.shared
        if shared is None or not shared.locks.holds(primary):
            return
        if self._uploading.get(primary):
            self._release_after.add(primary)
        else:
            self._background(lambda s: s.locks.release(primary))

    # -- a local miss looks in the shared tier -------------------------------------------------------

    async def fetch(self, primary: str, choose: Choose, *, claim: bool, wait: float) -> bool | Growing:
        """Copy primary's entry from the shared tier into the local tiers; whether it is there now.

        One fetch per primary key at a time in this process: a local crowd waits for one copy. With
        ``claim``, a shared miss takes the fleet's fetch lock for this node (the caller then asks the origin
        and calls ``landed``), or, when another node holds it, waits up to ``wait`` seconds for that node's
        body to arrive in the shared tier.
        """
        if self.shared is None or not self.shared.breaker.allows(time.monotonic()):
            return False
        task = self._fetching.get(primary)
        if task is None:
            loop = asyncio.get_running_loop()
            fresh: asyncio.Future[Growing | None] = loop.create_future()
            self._announced[primary] = fresh
            task = loop.create_task(self._fetch(self.shared, primary, choose, claim, wait, fresh))
            self._fetching[primary] = task

            def finished(_: object) -> None:
                self._fetching.pop(primary, None)
                if (pending := self._announced.pop(primary, None)) is not None and not pending.done():
                    pending.set_result(None)

            task.add_done_callback(finished)
        announce = self._announced.get(primary)
        if announce is not None:
            either: set[asyncio.Future[Any]] = {task, announce}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if announce.done() and (growing := announce.result()) is not None and not growing.progress.done:
                return growing
        stored: bool = await asyncio.shield(task)
        return stored

    async def settled(self, primary: str) -> bool:
        """Wait for primary's copy from the shared tier (if one runs) to end; whether it was stored."""
        task = self._fetching.get(primary)
        return False if task is None else await asyncio.shield(task)

    async def _fetch(
        self,
        shared: SharedTier,
        primary: str,
        choose: Choose,
        claim: bool,
        wait: float,
        announce: asyncio.Future[Growing | None],
    ) -> bool:
        deadline = time.monotonic() + wait
        timeout: float | None = None
        try:
            while True:
                if await self._copy_down(shared, primary, choose, timeout, announce):
                    shared.stats.hits += 1
                    return True
                if not claim or await shared.locks.claim(primary):
                    shared.stats.misses += 1
                    return False
                shared.stats.collapsed += 1
                if not await shared.locks.wait_released(primary, deadline):
                    shared.stats.misses += 1
                    return False
                # After a wait, a lookup that only timed out would cost a whole origin fetch: allow it longer.
                timeout = max(shared.timeout, 1.0)
                # The holder released (stored, or gave up) or its lock expired (it died): look again.
        except Unavailable:
            shared.stats.misses += 1
            return False

    async def _copy_down(
        self,
        shared: SharedTier,
        primary: str,
        choose: Choose,
        timeout: float | None = None,
        announce: asyncio.Future[Growing | None] | None = None,
    ) -> bool:
        listing = await shared.listing(primary, timeout=timeout)
        if not listing:
            return False
        key = choose([(k, e.meta) for k, e in listing])
        entry = dict(listing).get(key)
        if entry is None:
            return False
        length = entry.meta.body_length
        # The plain TieredWriter: what came from the shared tier is not copied back up.
        writer = TieredStore.writer(self, key, expected_length=length)
        stream = announce is not None and self.stream_above is not None and length > self.stream_above
        progress = Progress(length)
        try:
            async for chunk in shared.chunks(entry):
                if not writer.write(chunk):
                    writer.abort()
                    progress.finish(False)
                    return False
                progress.advance(writer.written)
                if stream and announce is not None and not announce.done() and writer.temp_path is not None:
                    announce.set_result(Growing(key, entry.meta, writer.temp_path, progress))
        except Missing:
            writer.abort()
            progress.finish(False)
            log.info("shared entry %s lost a chunk (evicted); dropping it", entry.meta.url)
            await shared.drop(primary, key)
            return False
        except Corrupt:
            writer.abort()
            progress.finish(False)
            log.warning(
                "shared entry %s has a chunk that does not match its digest; dropping it", entry.meta.url
            )
            await shared.drop(primary, key)
            await shared.drop_body(entry.digest, length, entry.chunk)
            return False
        except BaseException:
            writer.abort()  # Unavailable mid-body, or cancelled: nothing partial becomes visible
            progress.finish(False)  # a client reading along is cut off, as by an origin that failed
            raise
        if writer.written != length or writer.digest != entry.digest:
            writer.abort()
            progress.finish(False)
            log.warning("shared entry %s does not match its digest; dropping it", entry.meta.url)
            await shared.drop(primary, key)
            await shared.drop_body(entry.digest, length, entry.chunk)
            return False
        stored = writer.commit(entry.meta) is Outcome.STORED
        progress.finish(stored)
        return stored

    def shared_state(self) -> State:
        return State.OFF if self.shared is None else self.shared.state


async def _listed(batches: list[bytes]) -> Any:
    for batch in batches:
        yield batch


async def _read_file(file: Any) -> Any:
    while batch := await asyncio.to_thread(file.read, CHUNK * WINDOW):
        yield batch
