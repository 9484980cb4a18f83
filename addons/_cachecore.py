"""The cache addon's machinery shared by its request and response sides: answering from the store, the
sidecar, background flows, and everything after the origin answered (storing, 304s, stale-on-error)."""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from mitmproxy import connection, ctx, http
from mitmproxy.addons.clientplayback import ReplayHandler

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons import _respond
from addons._cacheflow import CacheFlow, background_copy, without_our_status
from addons._cachehttp import content_length, make_response, read_body, to_response
from addons._notes import FlowNotes, notes, peek
from fwdproxy import cache
from fwdproxy import store as storage
from fwdproxy.bodysource import FileBody, Progress
from fwdproxy.cache import After304, CacheConfig, CacheStatus, Fwd
from fwdproxy.cache.answer import answer, close
from fwdproxy.http_model import Response, StoredResponse
from fwdproxy.inflight import Flights, KeyLocks, Shape
from fwdproxy.sidecar import Sidecar, response_head

log = logging.getLogger("fwdproxy.cache")

TOO_BIG_FOR_DISK = "too-big-for-disk"
"""Cache-Status detail of a response kept out of the store because it would not fit within the disk limit."""


def _failed(flow: http.HTTPFlow) -> bool:
    """The origin could not be reached: the response is one addons/errors.py made."""
    noted = peek(flow)
    return noted is not None and noted.error is not None


class CacheCore:
    """State and response-side hooks of the Cache addon (addons/cache.py adds options and the request side)."""

    store: storage.TieredStore | None
    config: CacheConfig
    max_object: int
    stream_threshold: int
    fetch_whole_below: int
    tasks: set[asyncio.Task[None]]
    flights: Flights
    locks: KeyLocks | None
    sidecar: Sidecar | None
    checks: dict[tuple[str, tuple[bytes, int, int, int, int]], "asyncio.Future[None]"]
    """Checksum checks of big body files under way, per (key, file identity): a crowd waits for one."""

    def _checked_get(self, key: str, *, may_check: bool) -> "storage.Entry | asyncio.Future[None] | None":
        """The stored entry, or a check to await first when its body is a file this process has not hashed
        yet (issue 16: a damaged body is never served); with ``may_check`` False such an entry is a miss."""
        assert self.store is not None
        entry = self.store.get(key)
        if entry is None or not isinstance(entry.body, storage.BodyFile) or not entry.body.digest:
            return entry
        pending = self._confirm(key, entry.body)
        return pending if may_check else None

    def _confirm(self, key: str, body: storage.BodyFile) -> "asyncio.Future[None]":
        """Hash a body file in a worker thread (at disk speed, the event loop free), once for all who ask;
        the store then remembers it as confirmed, or drops the entry. Takes ownership of ``body``."""
        ident = (key, body.seen)
        if (pending := self.checks.get(ident)) is not None:
            body.close()
            return pending
        loop = asyncio.get_running_loop()
        pending = self.checks[ident] = loop.create_future()
        store = self.store
        assert store is not None

        async def run() -> None:
            try:
                try:
                    matches = await asyncio.to_thread(storage.body_matches, body)
                finally:
                    body.close()
                store.confirm(key, body, matches)
            finally:
                del self.checks[ident]
                if not pending.done():
                    pending.set_result(None)

        task = loop.create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return pending

    def _serve(
        self,
        flow: http.HTTPFlow,
        state: CacheFlow,
        meta: StoredResponse,
        body: bytes | storage.BodyFile,
        status: CacheStatus,
        now: float,
        *,
        stream: bool = True,
    ) -> None:
        """Answer from a stored entry: in memory, or through the sidecar when the body is a file (``stream``:
        only before the flow has gone to the origin)."""
        ans = answer(state.request, meta, body, now)
        state.served = True
        if ans.file is not None and self.sidecar is not None and stream:
            head = response_head(
                ans.status, ans.reason, [*ans.headers, ("Cache-Status", cache.render(status))]
            )
            try:
                token = self.sidecar.offer(head, FileBody(ans.file.file, ans.parts))
            except (OSError, ValueError) as e:
                log.warning("cannot stream %s from disk: %s", state.request.url, e)
            else:
                self._repoint(flow, token)
                return
        content = ans.content if ans.file is None else read_body(ans.file)  # no sidecar (tests): read it
        if ans.parts is not None:
            content = b"".join(p if isinstance(p, bytes) else content[p.start : p.end + 1] for p in ans.parts)
        flow.response = make_response(
            ans.status, ans.reason, ans.headers, content, status, now, stable=ans.stable and ans.parts is None
        )

    def _repoint(self, flow: http.HTTPFlow, token: str) -> None:
        """Send the flow to the sidecar, which streams the body like an origin would (mitmproxy-notes §4)."""
        assert self.sidecar is not None
        flow.request.scheme = "http"
        flow.request.host = "127.0.0.1"
        flow.request.port = self.sidecar.port
        flow.request.path = "/" + token
        flow.server_conn = connection.Server(address=("127.0.0.1", self.sidecar.port))
        notes(flow).sidecar = True

    def _spawn(self, background: http.HTTPFlow, finally_: Callable[[], None]) -> None:
        """Run a flow of our own through the whole chain to the origin (mitmproxy's replay machinery)."""

        async def run() -> None:
            try:
                await ReplayHandler(background, ctx.options).replay()
            finally:
                finally_()

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _resume_for_followers(self, flow: http.HTTPFlow, state: "CacheFlow") -> bool:
        """The leader's client went away mid-body while followers read along: fetch the rest of the body with a
        Range request of our own (RFC 9110 §14.2, guarded by If-Range §13.1.5) into the same temp file."""
        flight, writer = state.flight, state.writer
        if (
            flight is None
            or flight.followers == 0
            or writer is None
            or writer.failure is not None
            or flight.meta is None
            or flow.error is None
            or "client disconnected" not in flow.error.msg.lower()
        ):
            return False
        etag = flight.meta.headers.get("etag")
        validator = etag if etag and not etag.startswith("W/") else flight.meta.headers.get("last-modified")
        if not validator or not 0 < writer.written < flight.meta.body_length:
            return False
        background = background_copy(flow)
        background.request.headers["Range"] = f"bytes={writer.written}-"
        background.request.headers["If-Range"] = validator
        notes(background).resume = state
        log.info(
            "%s: client left at %d bytes; fetching the rest for %d follower(s)",
            state.request.url,
            writer.written,
            flight.followers,
        )
        self._spawn(background, lambda: self._land(state))
        return True

    def _resume_headers(self, flow: http.HTTPFlow, state: "CacheFlow") -> None:
        """Accept the continuation only if it is exactly the missing tail of the same representation."""
        resp, writer, flight = flow.response, state.writer, state.flight
        assert resp is not None and writer is not None and flight is not None and flight.meta is not None
        total = flight.meta.body_length
        expected = f"bytes {writer.written}-{total - 1}/{total}"
        if resp.status_code != 206 or resp.headers.get("content-range", "").strip() != expected:
            log.info(
                "%s: the origin did not resume (%s); followers fail", state.request.url, resp.status_code
            )
            writer.abort()
            resp.stream = True
            return
        progress = flight.progress

        def tee(chunk: bytes) -> bytes:
            if chunk:
                writer.write(chunk)
                if progress is not None:
                    progress.advance(writer.written)
            else:
                state.complete = True
            return chunk

        resp.stream = tee

    def _resume_done(self, flow: http.HTTPFlow, state: "CacheFlow") -> None:
        writer, flight = state.writer, state.flight
        assert writer is not None and flight is not None and flight.meta is not None
        if flow.error is None and state.complete and writer.written == flight.meta.body_length:
            state.stored = writer.commit(flight.meta) is storage.Outcome.STORED
        else:
            writer.abort()
            state.complete = False

    # -- response side --------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        noted = peek(flow)
        if noted is None:
            return
        if (resumed := noted.resume) is not None:
            self._resume_headers(flow, resumed)
            return
        self._responseheaders(flow, noted)
        state = noted.cache
        if state is not None and not state.served and flow.response is not None and flow.response.stream:
            # A streamed body's headers leave now, before the response hook: say what the cache does here.
            flow.response.headers["Cache-Status"] = cache.render(
                self._forward_status(state, stored=state.writer is not None)
            )
            if state.writer is not None and flow.response.status_code == 200:
                # Being stored whole, so its hits will answer ranges (RFC 9110 §14.3): say so already, or a
                # client such as uv fetches the object once more in ranges on its next run.
                flow.response.headers["Accept-Ranges"] = "bytes"

    def _forward_status(self, state: "CacheFlow", *, stored: bool) -> CacheStatus:
        decision = state.decision
        return CacheStatus(
            fwd=decision.fwd or Fwd.MISS,
            fwd_status=state.fwd_status,
            stored=stored,
            ttl=decision.ttl if decision.stored is not None and not stored else None,
            detail=decision.detail,
        )

    def _responseheaders(self, flow: http.HTTPFlow, noted: FlowNotes) -> None:
        if noted.sidecar and flow.response is not None:
            flow.response.stream = True  # a big body from disk or a growing temp file: never held in memory
            return
        state = noted.cache
        if state is None or state.served or flow.response is None or self.store is None:
            return
        resp = flow.response
        # An answer we made for a failed origin (fwd_error) is no status the origin sent (RFC 9211 §2.3).
        state.fwd_status = None if noted.error is not None else resp.status_code
        length = content_length(resp)
        big = length is None or length > self.stream_threshold
        flight = state.flight
        if state.whole_for_range and (length is None or length > self.fetch_whole_below):
            # Too big (or of unknown length) to fetch whole for a range: stop reading it; the waiting range
            # requests go to the origin themselves (_follow sees NOT_SHARED).
            if flight is not None:
                flight.set_shape(Shape.NOT_SHARED)
            flow.kill()
            return
        if (
            resp.status_code == 304
            or state.request.method != "GET"
            or state.decision.fwd is Fwd.BYPASS  # never stored (fwdproxy.unkeyed)
            or self._stale_on_error(flow, state)
        ):
            if big and resp.status_code != 304:
                resp.stream = True
            if flight is not None:
                flight.set_shape(Shape.BUFFERED if resp.status_code == 304 else Shape.NOT_SHARED)
            return
        decision = cache.is_storable(state.request, to_response(resp), complete=True, config=self.config)
        if not decision or (length is not None and length > self.max_object):
            if big:
                resp.stream = True  # pass through without holding the body
            if flight is not None:
                flight.set_shape(Shape.NOT_SHARED)
            return
        state.key = storage.variant_key(
            state.primary, cache.secondary_key(to_response(resp).headers, state.request.headers)
        )
        if not big:
            if flight is not None:
                flight.set_shape(Shape.BUFFERED)
            return
        writer = self.store.writer(state.key, max_length=self.max_object, expected_length=length)
        if writer.failure is storage.Outcome.NO_ROOM:
            # Issue 16: the body would take the disk past --disk-cache-size beside what is stored and being
            # written; it streams through unstored (the disk never holds more than the limit).
            self._too_big_for_disk(state)
            resp.stream = True
            if flight is not None:
                flight.set_shape(Shape.NOT_SHARED)
            return
        state.writer = writer
        progress = None
        if flight is not None and length is not None:
            flight.meta = self._meta(
                state, to_response(resp), length, resp.timestamp_start or time.time(), decision
            )
            flight.progress = progress = Progress(length)
            flight.set_shape(Shape.STREAMING)
        elif flight is not None:
            flight.set_shape(Shape.BUFFERED)  # no length to promise followers: they wait for the commit

        def tee(chunk: bytes) -> bytes:
            if chunk:
                writer.write(chunk)
                if progress is not None and writer.temp_path is not None:
                    if flight is not None and flight.path is None:
                        flight.path = writer.temp_path
                        flight.file_ready.set()
                    progress.advance(writer.written)
            else:
                state.complete = True  # mitmproxy-notes §3: the end of the body is signalled by b""
            return chunk

        resp.stream = tee

    def response(self, flow: http.HTTPFlow) -> None:
        noted = peek(flow)
        if noted is None:
            return
        if (resumed := noted.resume) is not None:
            self._resume_done(flow, resumed)  # landing follows when the background task ends
            return
        state = noted.cache
        try:
            self._response(flow, state)
        finally:
            self._land(state)

    def _land(self, state: "CacheFlow | None") -> None:
        """The leader is done: followers serve what it stored, or go to the origin themselves."""
        if state is None or state.flight is None:
            return
        if state.lock_fd is not None and self.locks is not None:
            self.locks.unlock(state.primary, state.lock_fd)
            state.lock_fd = None
        flight, state.flight = state.flight, None
        expected = flight.meta.body_length if flight.meta is not None else -1
        complete = state.writer is not None and state.complete and state.writer.written == expected
        self.flights.land(state.primary, flight, state.stored, body_complete=complete)

    def _response(self, flow: http.HTTPFlow, state: "CacheFlow | None") -> None:
        if state is None or state.served or flow.response is None or self.store is None:
            return
        now = time.time()
        resp = to_response(flow.response)
        for key in cache.invalidated_keys(state.request, resp):  # §4.4
            self.store.purge(key)
        if resp.status == 304 and state.candidates:
            self._on_304(flow, state, resp, now)
            return
        if (allowed := self._stale_on_error(flow, state)) and state.body is not None:
            meta = state.candidates[0][1]
            failed = _failed(flow)
            # Issue 17's contract: an entry standing in for an origin that gave no response at all says
            # `hit; fwd=stale; detail=origin-error` (the body is the cache's; the request did go forward).
            status = CacheStatus(
                hit=failed, fwd=Fwd.STALE, fwd_status=None if failed else resp.status, detail=allowed
            )
            # The response phase: the sidecar would need a request of its own, so a body on disk is read whole.
            self._serve(flow, state, meta, state.body, status, now, stream=False)
            return
        close(state.body)
        if state.request.method == "HEAD" and resp.status == 200 and state.decision.fwd is not Fwd.BYPASS:
            self._freshen_from_head(state, resp, now)
        stored = self._store(flow, state, resp, now)
        if not flow.response.stream:
            state.fwd_status = None if _failed(flow) else resp.status
            flow.response.headers["Cache-Status"] = cache.render(self._forward_status(state, stored=stored))
            if stored and resp.status == 200:
                flow.response.headers["Accept-Ranges"] = "bytes"  # as its hits will say (RFC 9110 §14.3)

    def _stale_on_error(self, flow: http.HTTPFlow, state: CacheFlow) -> str:
        """RFC 5861 §4 / --serve-stale-on-error: the reason a stale entry may stand in for this error, or ""."""
        if not state.candidates or flow.response is None:
            return ""
        failed = _failed(flow)  # the origin could not be reached (addons/errors.py)
        status = None if failed else flow.response.status_code
        verdict = cache.stale_on_error(
            state.request, state.candidates[0][1], status=status, now=time.time(), config=self.config
        )
        return verdict.detail if verdict else ""

    def _store(self, flow: http.HTTPFlow, state: CacheFlow, resp: Response, now: float) -> bool:
        assert self.store is not None and flow.response is not None
        if not state.key:
            return False
        raw = flow.response.raw_content
        expected = content_length(flow.response)
        if state.writer is not None:
            length = state.writer.written
            complete = state.complete and (expected is None or expected == length)
        else:
            length = len(raw) if raw is not None else -1
            complete = raw is not None and (expected is None or expected == length)
        decision = cache.is_storable(state.request, resp, complete=complete, config=self.config)
        if not decision:
            if state.writer is not None:
                state.writer.abort()
            return False
        meta = self._meta(state, resp, length, flow.response.timestamp_start or now, decision)
        meta = cache.record_lifetime(meta, self.config)  # what decided it, for `cache ls/show`
        if state.writer is not None:
            outcome = state.writer.commit(meta)
        else:
            assert raw is not None
            outcome = self.store.put(state.key, meta, raw)
        if outcome is storage.Outcome.NO_ROOM:
            self._too_big_for_disk(state)
        if outcome is not storage.Outcome.STORED:
            log.info("not stored %s: %s", state.request.url, outcome)
        state.stored = outcome is storage.Outcome.STORED
        return state.stored

    @staticmethod
    def _too_big_for_disk(state: CacheFlow) -> None:
        """Say in Cache-Status (RFC 9211 §2.8 detail) that the disk limit, not the response, kept it out."""
        state.key = ""
        state.decision = dataclasses.replace(state.decision, detail=TOO_BIG_FOR_DISK)

    @staticmethod
    def _meta(
        state: CacheFlow, resp: Response, length: int, response_time: float, decision: cache.StoreDecision
    ) -> StoredResponse:
        """The record to store for this response (RFC 9111 §3.1: minus hop-by-hop and Connection-named fields)."""
        return StoredResponse(
            url=state.request.url,
            status=resp.status,
            reason=resp.reason,
            headers=cache.storable_headers(without_our_status(resp.headers), response_time=response_time),
            request_time=state.request_time,
            response_time=response_time,
            body_length=length,
            vary_request=cache.vary_request_headers(resp.headers, state.request.headers),
            rule=decision.rule.name if decision.rule else "",
        )

    def _on_304(self, flow: http.HTTPFlow, state: CacheFlow, resp: Response, now: float) -> None:
        """§4.3.3-4: a 304 answers our validators: freshen the stored entries and answer from them."""
        assert self.store is not None
        outcome = cache.on_not_modified(
            state.request,
            resp,
            [m for _, m in state.candidates],
            request_time=state.request_time,
            response_time=now,
        )
        for updated in outcome.updated:
            # freshen() keeps what identifies a variant (its selecting headers) and the body length
            for key, meta in state.candidates:
                if meta.vary_request == updated.vary_request and meta.body_length == updated.body_length:
                    updated = cache.record_lifetime(updated, self.config)
                    state.stored = self.store.update(key, updated) is not None or state.stored
                    break
        status = CacheStatus(
            fwd=state.decision.fwd or Fwd.STALE, fwd_status=304, detail=state.decision.detail
        )
        match outcome.action:
            case After304.SERVE_STORED | After304.SEND_304:
                assert outcome.serve is not None and state.body is not None
                self._serve(flow, state, outcome.serve, state.body, status, now)
            case After304.PASS_THROUGH:
                close(state.body)
                flow.response.headers["Cache-Status"] = cache.render(status)  # type: ignore[union-attr]
            case After304.RETRY:
                close(state.body)
                for key, _ in state.candidates:
                    self.store.delete(key)
                flow.response = _respond.text(
                    502, f"{state.request.url}: the origin's 304 matches no stored response; retry"
                )

    def _freshen_from_head(self, state: CacheFlow, resp: Response, now: float) -> None:
        """§4.3.5: a 200 to HEAD updates (or voids) the stored GET responses it describes."""
        assert self.store is not None
        for key, meta in self.store.variants(state.primary):
            fresh = cache.freshen_from_head(meta, resp, request_time=state.request_time, response_time=now)
            if fresh is None:
                self.store.delete(key)
            elif fresh is not meta:
                self.store.update(key, cache.record_lifetime(fresh, self.config))

    def error(self, flow: http.HTTPFlow) -> None:
        noted = peek(flow)
        if noted is None:
            return
        if (resumed := noted.resume) is not None:
            self._resume_done(flow, resumed)
            return
        state = noted.cache
        if state is None:
            return
        if self._resume_for_followers(flow, state):
            close(state.body)
            return  # the writer stays open for the continuation; the flight lands when it ends
        if state.writer is not None:
            state.writer.abort()  # a truncated body is never stored
            state.complete = False
        close(state.body)
        self._land(state)
