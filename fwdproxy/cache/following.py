"""The cache service's readers: entries read and checksum-checked, a key's leader followed (its growing file, or
what it stored), the fleet's shared tier copied from, and bodies offered to the sidecar."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Any

from fwdproxy import ranges
from fwdproxy import store as storage
from fwdproxy.bodysource import FileBody, GrowingBody
from fwdproxy.cache.answer import Answer, range_of
from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.exchange import Exchange
from fwdproxy.cache.filling import Noted, held
from fwdproxy.cache.headers import served_headers
from fwdproxy.cache.key import vary_matches
from fwdproxy.cache.policy import Verdict, lookup
from fwdproxy.cache.states import Action
from fwdproxy.cache.status import CacheStatus, render
from fwdproxy.cache.validation import client_conditional_matches
from fwdproxy.http_model import Headers, Request, StoredResponse
from fwdproxy.inflight import Flight, KeyLocks, Shape
from fwdproxy.sidecar import Sidecar, response_head
from fwdproxy.store.fleet import FleetStore, Growing

log = logging.getLogger("fwdproxy.cache")

COLLAPSE_WAIT = 120.0
"""Seconds a collapsed request waits for each step of its leader (headers, commit) before it goes to the
origin itself; long enough for a slow registry, short enough that a hung leader does not hang everyone."""


class Following:
    """The state the readers use; CacheService (service.py) is one."""

    store: storage.TieredStore | None
    fleet: FleetStore | None
    locks: KeyLocks | None
    sidecar: Sidecar | None
    config: CacheConfig
    tasks: set[asyncio.Task[None]]
    checks: dict[tuple[str, tuple[bytes, int, int, int, int]], asyncio.Future[None]]
    """Checksum checks of big body files under way, per (key, file identity): a crowd waits for one."""

    def keep(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a task of the cache's own (cancelled when the service closes)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def wait(self, ex: Exchange, noted: Noted) -> Flight | None:
        """AWAIT_CHECK or WAIT_REMOTE: wait for the body check, or for another process's lock on the key;
        FOLLOW: the leader to follow (``held.leader``)."""
        mine = held(noted)
        pending, leader, mine.pending, mine.leader = mine.pending, mine.leader, None, None
        if pending is not None:
            await asyncio.shield(pending)  # the check confirmed the body file or dropped the entry
        elif leader is None and self.locks is not None:
            # Another process fetches this key (--workers, or a second proxy on the cache dir): wait for its
            # lock, then look again in the shared store.
            await self.locks.wait(ex.primary, COLLAPSE_WAIT)
        return leader

    async def follow(self, ex: Exchange, flight: Flight) -> str | tuple[storage.Entry, float] | None:
        """Wait for the leader of this key: a sidecar token reading its growing body, the stored entry (and
        when it was read) to answer from, or None (go to the origin yourself)."""
        try:
            shape = await asyncio.wait_for(asyncio.shield(flight.shape), COLLAPSE_WAIT)
            if shape is Shape.STREAMING and self.sidecar is not None and can_tail(ex.request, flight):
                await asyncio.wait_for(flight.file_ready.wait(), COLLAPSE_WAIT)
                if (token := self._offer_tail(ex, flight)) is not None:
                    ex.followed()
                    return token
            if shape is not Shape.NOT_SHARED and await asyncio.wait_for(
                asyncio.shield(flight.done), COLLAPSE_WAIT
            ):
                assert self.store is not None
                now = time.time()
                listing = self.store.variants(ex.primary)
                decision = lookup(ex.request, [m for _, m in listing], now=now, config=self.config)
                key = next((k for k, m in listing if m is decision.stored), "")
                got = (
                    self.checked_get(key, may_check=True)
                    if decision.verdict is Verdict.SERVE and key
                    else None
                )
                if isinstance(got, asyncio.Future):
                    await asyncio.shield(got)
                    got = self.checked_get(key, may_check=False)
                if got is not None and not isinstance(got, asyncio.Future):
                    ex.followed()
                    return got, now
        except TimeoutError:
            log.info("collapsed request for %s waited too long; going to the origin", ex.request.url)
        return None

    def _offer_tail(self, ex: Exchange, flight: Flight) -> str | None:
        """Serve a follower from the leader's temp file while it grows (Squid's collapsed forwarding)."""
        assert flight.meta is not None and flight.progress is not None and self.sidecar is not None
        if flight.path is None or flight.progress.failed:
            return None
        status = ex.collapsed_status(flight.meta.status)
        head, parts = tail_head(ex.request, flight, render(status), now=time.time())
        try:
            return self.sidecar.offer(head, GrowingBody(flight.path, flight.progress, parts))
        except (OSError, ValueError) as e:  # the temp file was committed (renamed) meanwhile
            log.debug("cannot tail %s: %s", flight.path, e)
            return None

    async def from_shared(self, ex: Exchange, noted: Noted) -> str | None:
        """LOOKUP_SHARED (issue 20): copy the entry this request may use from the shared tier into the local
        tiers. A sidecar token when a big entry streams to this request while it is copied in (every byte
        checked against its chunk's digest; a copy that fails cuts the transfer); None: a new exchange looks
        again locally (``noted.shared_hit``: the copy arrived).

        On a shared miss this node takes the fleet's fetch lock for the key (a Range request never leads), or
        waits while another node downloads it (cross-node collapsing); landing gives the lock back."""
        fleet, config = self.fleet, self.config
        assert fleet is not None

        def choose(listing: list[tuple[str, StoredResponse]]) -> str:
            return ex.choose(listing, now=time.time(), config=config)

        claim = "range" not in ex.request.headers
        got = await fleet.fetch(ex.primary, choose, claim=claim, wait=COLLAPSE_WAIT)
        if isinstance(got, Growing):
            now = time.time()
            if ex.streaming(got.meta, now=now, config=config) is Action.SERVE and self.sidecar is not None:
                meta = got.meta
                fields = served_headers(meta, now=now).with_("Content-Length", str(meta.body_length))
                headers = [*fields, ("Cache-Status", render(ex.status()))]
                try:
                    return self.sidecar.offer(
                        response_head(meta.status, meta.reason, headers), GrowingBody(got.path, got.progress)
                    )
                except (OSError, ValueError) as e:  # committed (renamed) meanwhile: the local copy answers
                    log.debug("cannot stream %s from the shared tier: %s", ex.request.url, e)
            got = await fleet.settled(ex.primary)  # AWAIT_SHARED: then answer from the local tiers
        noted.shared_hit = got
        return None

    def offer(self, ex: Exchange, ans: Answer, status: CacheStatus) -> str | None:
        """A sidecar token streaming an answer whose body is a file; None: answer it from memory instead."""
        if ans.file is None or self.sidecar is None:
            return None
        head = response_head(ans.status, ans.reason, [*ans.headers, ("Cache-Status", render(status))])
        try:
            return self.sidecar.offer(head, FileBody(ans.file.file, ans.parts))
        except (OSError, ValueError) as e:
            log.warning("cannot stream %s from disk: %s", ex.request.url, e)
            return None

    def checked_get(self, key: str, *, may_check: bool) -> storage.Entry | asyncio.Future[None] | None:
        """The stored entry, or a check to await first when its body is a file this process has not hashed
        yet (issue 16: a damaged body is never served); with ``may_check`` False such an entry is a miss."""
        assert self.store is not None
        entry = self.store.get(key)
        if entry is None or not isinstance(entry.body, storage.BodyFile) or not entry.body.digest:
            return entry
        pending = self._confirm(key, entry.body)
        return pending if may_check else None

    def _confirm(self, key: str, body: storage.BodyFile) -> asyncio.Future[None]:
        """Hash a body file in a worker thread (at disk speed, the event loop free), once for all who ask;
        the store then remembers it as confirmed, or drops the entry. Takes ownership of ``body``."""
        ident = (key, body.seen)
        if (pending := self.checks.get(ident)) is not None:
            body.close()
            return pending
        pending = self.checks[ident] = asyncio.get_running_loop().create_future()
        the_store = self.store
        assert the_store is not None

        async def run() -> None:
            try:
                try:
                    matches = await asyncio.to_thread(storage.body_matches, body)
                finally:
                    body.close()
                the_store.confirm(key, body, matches)
            finally:
                del self.checks[ident]
                if not pending.done():
                    pending.set_result(None)

        self.keep(run())
        return pending


def can_tail(request: Request, flight: Flight) -> bool:
    """Whether a follower can read the leader's growing body as it is: same variant, and the whole body or
    ranges of it (a 416, or a client validator that matches, waits for the stored entry)."""
    meta = flight.meta
    return (
        meta is not None
        and vary_matches(meta, request)
        and not isinstance(range_of(request, meta), ranges.Unsatisfiable)
        and not client_conditional_matches(request, meta)
    )


def tail_head(
    request: Request, flight: Flight, cache_status: str, *, now: float
) -> tuple[bytes, tuple[bytes | ranges.ByteRange, ...] | None]:
    """The response head for a follower of a STREAMING leader, and the parts of a 206 (None: the whole
    body): a range of the body on its way is a 206 whose parts wait for their bytes (uv's parallel ranges
    behind one whole fetch, --range-fetch-whole-below)."""
    meta = flight.meta
    assert meta is not None
    headers = served_headers(meta, now=now)
    code, reason, parts = meta.status, meta.reason, None
    if isinstance(wanted := range_of(request, meta), ranges.Partial):
        layout = ranges.partial_body(
            wanted, meta.body_length, meta.headers.get("content-type"), secrets.token_hex(16)
        )
        kept = headers.without("content-length", "content-range", *(k for k, _ in layout.headers))
        headers, parts = Headers(kept.fields + layout.headers.fields), layout.parts
        code, reason = 206, "Partial Content"
    else:
        headers = headers.with_("Content-Length", str(meta.body_length))
    return response_head(code, reason, [*headers, ("Cache-Status", cache_status)]), parts
