"""The response side of the cache service: the origin's answer into the store, as the exchange decided.

Tee a streamed body into a store writer (followers read the growing temp file), store a held one, freshen
stored entries after a 304 or a HEAD (§4.3.4, §4.3.5), finish a body for followers whose leader's client
left (RFC 9110 §14.2), and land the leader's flight. The cache addon calls these from its response hooks
and applies what they return to the flow (a chunk copier, a Cache-Status, an answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fwdproxy import store as storage
from fwdproxy.bodysource import Progress
from fwdproxy.cache.answer import close
from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.exchange import Exchange
from fwdproxy.cache.freshness import record_lifetime
from fwdproxy.cache.invalidation import invalidated_keys
from fwdproxy.cache.states import Action, Limits
from fwdproxy.cache.validation import After304, freshen_from_head
from fwdproxy.http_model import Response
from fwdproxy.inflight import Flight, Flights, KeyLocks, Shape
from fwdproxy.store.fleet import FleetStore

log = logging.getLogger("fwdproxy.cache")

Copier = Callable[[bytes], bytes]
"""A streamed body's chunk hook (mitmproxy's ``response.stream``): copies each chunk into the store."""


@dataclass(slots=True)
class Held:
    """What the cache holds for one flow while the origin answers (the exchange holds the decisions)."""

    body: bytes | storage.BodyFile | None = None
    """The selected stored body, held while the origin is asked, so a 304 or an error can be answered from it."""
    writer: storage.TieredWriter | None = None
    """The store writer the body streams into (TEE)."""
    flight: Flight | None = None
    """The flight this flow leads: followers wait on it."""
    lock_fd: int | None = None
    """The cross-process lock of a leader (fwdproxy.inflight.KeyLocks)."""
    pending: asyncio.Future[None] | None = None
    """CHECK: the body check to await before looking again."""
    leader: Flight | None = None
    """FOLLOW: the flight this flow follows (None: another process fetches the key)."""


class Noted(Protocol):
    """What the service keeps in a flow's notes (addons/_notes.py FlowNotes has these fields)."""

    held: Held | None
    whole: tuple[Flight, int | None] | None
    background: bool
    shared_tried: bool
    shared_hit: bool


def held(noted: Noted) -> Held:
    """The flow's Held record, made on first use (a hit never needs one)."""
    found = noted.held
    if found is None:
        found = noted.held = Held()
    return found


class Filling:
    """The state the response side uses; CacheService (service.py) is one."""

    store: storage.TieredStore | None
    fleet: FleetStore | None
    flights: Flights
    locks: KeyLocks | None
    config: CacheConfig
    limits: Limits

    def head(
        self,
        ex: Exchange,
        mine: Held,
        resp: Response,
        *,
        length: int | None,
        failed: bool,
        now: float,
        response_time: float,
    ) -> tuple[Action, Copier | None]:
        """The origin's response head (``failed``: one we made, the origin unreachable): how it travels —
        ABANDON (kill it), TEE (stream it through the copier), PASS or BUFFER (stream it when ``ex.big``)
        — and what this leader's followers wait for (the flight's shape)."""
        assert self.store is not None
        flight = mine.flight
        action = ex.head(resp, length=length, failed=failed, now=now, config=self.config, limits=self.limits)
        if action is Action.TEE:
            assert ex.storable is not None
            writer = self.store.writer(ex.key, max_length=self.limits.max_object, expected_length=length)
            if writer.failure is not storage.Outcome.NO_ROOM:
                return action, self._tee(ex, mine, writer, resp, length, response_time)
            # Issue 16: the body would take the disk past --disk-cache-size beside what is stored and being
            # written; it streams through unstored (the disk never holds more than the limit).
            action = ex.no_room()
        if flight is not None:
            if action is Action.ABANDON:
                # Too big (or of unknown length) to fetch whole for a range: the waiting range requests go to
                # the origin themselves.
                flight.set_shape(Shape.NOT_SHARED)
            else:  # PASS or BUFFER
                flight.set_shape(Shape.BUFFERED if ex.shared else Shape.NOT_SHARED)
        return action, None

    @staticmethod
    def _tee(
        ex: Exchange,
        mine: Held,
        writer: storage.TieredWriter,
        resp: Response,
        length: int | None,
        response_time: float,
    ) -> Copier:
        """TEE: copy the body into the writer as it streams; followers of this leader read the temp file."""
        assert ex.storable is not None
        mine.writer = writer
        flight, progress = mine.flight, None
        if flight is not None and length is not None:
            flight.meta = ex.record(resp, length, response_time, ex.storable)
            flight.progress = progress = Progress(length)
            flight.set_shape(Shape.STREAMING)
        elif flight is not None:
            flight.set_shape(Shape.BUFFERED)  # no length to promise followers: they wait for the commit

        def copy(chunk: bytes) -> bytes:
            if chunk:
                writer.write(chunk)
                if progress is not None and writer.temp_path is not None:
                    if flight is not None and flight.path is None:
                        flight.path = writer.temp_path
                        flight.file_ready.set()
                    progress.advance(writer.written)
            else:
                ex.complete = True  # the caller signals the end of the body with b"" (mitmproxy-notes §3)
            return chunk

        return copy

    def respond(
        self,
        ex: Exchange,
        mine: Held | None,
        resp: Response,
        *,
        raw: bytes | None,
        expected: int | None,
        failed: bool,
        now: float,
        response_time: float,
    ) -> Action:
        """The whole response: purge what it invalidates (§4.4), then SERVE_REFRESHED (entries freshened;
        answer from ``after_304.serve``), FRESHEN_304 (freshened; the 304 passes, or the candidates were
        dropped when ``after_304.action`` is RETRY), SERVE_STALE (answer from the held body), or STORE
        (stored if it may be: ``ex.stored``). ``raw``: the held body (None when streamed); ``expected``:
        its declared length."""
        assert self.store is not None
        for key in invalidated_keys(ex.request, resp):  # §4.4
            self.store.purge(key)
        body = mine.body if mine is not None else None
        action = ex.response(resp, failed=failed, now=now, config=self.config)
        if action in (Action.SERVE_REFRESHED, Action.FRESHEN_304):
            self._freshen(ex)
            assert ex.after_304 is not None
            if action is Action.FRESHEN_304:
                close(body)
                if ex.after_304.action is After304.RETRY:
                    for key, _ in ex.candidates:
                        self.store.delete(key)
        elif action is Action.STORE:
            close(body)
            if ex.freshens_head(resp):
                self._freshen_from_head(ex, resp, now)
            self._store(ex, mine, resp, raw, expected, response_time)
        return action

    def _freshen(self, ex: Exchange) -> None:
        """§4.3.4: the entries a 304 freshened (``after_304.updated``) replace their stored records."""
        assert ex.after_304 is not None and self.store is not None
        for updated in ex.after_304.updated:
            # freshen() keeps what identifies a variant (its selecting headers) and the body length
            for key, meta in ex.candidates:
                if meta.vary_request == updated.vary_request and meta.body_length == updated.body_length:
                    refreshed = record_lifetime(updated, self.config)
                    ex.stored = self.store.update(key, refreshed) is not None or ex.stored
                    break

    def _freshen_from_head(self, ex: Exchange, resp: Response, now: float) -> None:
        """§4.3.5: a 200 to HEAD updates (or voids) the stored GET responses it describes."""
        assert self.store is not None
        for key, meta in self.store.variants(ex.primary):
            fresh = freshen_from_head(meta, resp, request_time=ex.request_time, response_time=now)
            if fresh is None:
                self.store.delete(key)
            elif fresh is not meta:
                self.store.update(key, record_lifetime(fresh, self.config))

    def _store(
        self,
        ex: Exchange,
        mine: Held | None,
        resp: Response,
        raw: bytes | None,
        expected: int | None,
        response_time: float,
    ) -> None:
        """STORE: commit the teed body, or put the held one, if the exchange keeps it (``ex.stored``)."""
        assert self.store is not None
        writer = mine.writer if mine is not None else None
        if writer is not None:
            length = writer.written
            complete = ex.complete and (expected is None or expected == length)
        else:
            length = len(raw) if raw is not None else -1
            complete = raw is not None and (expected is None or expected == length)
        meta = ex.to_store(
            resp, length=length, complete=complete, response_time=response_time, config=self.config
        )
        if meta is None:
            if writer is not None and ex.key:
                writer.abort()
            return
        if writer is not None:
            outcome = writer.commit(meta)
        else:
            assert raw is not None
            outcome = self.store.put(ex.key, meta, raw)
        if outcome is storage.Outcome.NO_ROOM:
            ex.kept_out()
        if outcome is not storage.Outcome.STORED:
            log.info("not stored %s: %s", ex.request.url, outcome)
        ex.stored = outcome is storage.Outcome.STORED

    def failed(self, ex: Exchange, mine: Held | None, *, client_left: bool) -> Action:
        """The flow failed: RESUME (the leader's client left mid-body while followers read along: the addon
        fetches the rest with ``ex.resume_from`` and ``ex.if_range``, then calls ``land``), or ABORT (any
        partial write dropped, the flight landed)."""
        flight = mine.flight if mine is not None else None
        writer = mine.writer if mine is not None else None
        action = ex.error(
            client_left=client_left,
            followers=flight.followers if flight is not None else 0,
            written=writer.written if writer is not None else 0,
            writing=writer is not None and writer.failure is None,
            meta=flight.meta if flight is not None else None,
        )
        if mine is not None:
            close(mine.body)
        if action is Action.RESUME:
            assert flight is not None
            log.info(
                "%s: client left at %d bytes; fetching the rest for %d follower(s)",
                ex.request.url,
                ex.resume_from,
                flight.followers,
            )
            return action  # the writer stays open for the continuation; the flight lands when it ends
        if writer is not None:
            writer.abort()  # a truncated body is never stored
        if mine is not None:
            self.land(ex, mine)
        return action

    def resuming(self, ex: Exchange, mine: Held, resp: Response) -> Copier | None:
        """Our continuation's head: accept it only if it is exactly the missing tail of the same
        representation (a copier into the leader's writer); None: the followers fail."""
        writer, flight = mine.writer, mine.flight
        assert writer is not None and flight is not None and flight.meta is not None
        if not ex.resumed(resp, flight.meta.body_length):
            log.info("%s: the origin did not resume (%s); followers fail", ex.request.url, resp.status)
            writer.abort()
            return None
        progress = flight.progress

        def copy(chunk: bytes) -> bytes:
            if chunk:
                writer.write(chunk)
                if progress is not None:
                    progress.advance(writer.written)
            else:
                ex.complete = True
            return chunk

        return copy

    @staticmethod
    def resumed(ex: Exchange, mine: Held, *, ok: bool) -> None:
        """Our continuation ended (``ok``: without an error): commit the completed body, or drop it."""
        writer, flight = mine.writer, mine.flight
        assert writer is not None and flight is not None and flight.meta is not None
        complete = ok and ex.complete and writer.written == flight.meta.body_length
        if ex.resume_ended(complete=complete) is Action.STORE:
            ex.stored = writer.commit(flight.meta) is storage.Outcome.STORED
        else:
            writer.abort()

    def land(self, ex: Exchange, mine: Held) -> None:
        """The leader is done: followers serve what it stored, or go to the origin themselves."""
        if mine.flight is None:
            return
        if mine.lock_fd is not None and self.locks is not None:
            self.locks.unlock(ex.primary, mine.lock_fd)
            mine.lock_fd = None
        flight, mine.flight = mine.flight, None
        expected = flight.meta.body_length if flight.meta is not None else -1
        complete = mine.writer is not None and ex.complete and mine.writer.written == expected
        self.flights.land(ex.primary, flight, ex.stored, body_complete=complete)
        if self.fleet is not None:  # issue 20: the fleet's fetch lock goes once this node's upload is done
            self.fleet.landed(ex.primary)
