"""The shared HTTP cache: adapts mitmproxy's hooks to the RFC 9111 policy in fwdproxy.cache and the store."""

# No `from __future__ import annotations` here: mitmdump -s executes this file outside sys.modules, where a
# dataclass with string annotations cannot be built.
import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.addons.clientplayback import ReplayHandler

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons import _respond
from addons._cachehttp import answer, close, content_length, make_response, read_body, to_request, to_response
from fwdproxy import cache, store
from fwdproxy.bodysource import FileBody, GrowingBody, Progress
from fwdproxy.cache import After304, CacheConfig, CacheStatus, Fwd, LookupDecision, Verdict
from fwdproxy.cache.key import vary_matches
from fwdproxy.cache.status import CACHE_NAME
from fwdproxy.config import read_toml
from fwdproxy.http_model import Headers, Request, Response, StoredResponse
from fwdproxy.inflight import Flight, Flights, KeyLocks, Shape
from fwdproxy.sidecar import Sidecar, response_head
from fwdproxy.units import parse_duration, parse_size

log = logging.getLogger("fwdproxy.cache")

STATE = "fwd_cache"
"""flow.metadata key of the per-flow CacheFlow record."""
BACKGROUND = "fwd_background"
"""flow.metadata key marking our own background revalidations (RFC 5861 §3)."""
RESUME = "fwd_resume"
"""flow.metadata key of our own Range request that finishes a body whose leader's client left (the CacheFlow)."""
SIDECAR = "fwd_sidecar"
"""flow.metadata key marking flows re-pointed at the sidecar: no probe, no upstream, no storing."""
REMOTE = object()
"""_lookup's answer when another process is fetching the key."""
COLLAPSE_WAIT = 120.0
"""Seconds a collapsed request waits for each step of its leader (headers, commit) before it goes to the
origin itself; long enough for a slow registry, short enough that a hung leader does not hang everyone."""


@dataclass
class CacheFlow:
    """What the request hook learnt about one flow, for the response hooks."""

    request: Request
    """The request as the cache saw it (before validators were added)."""
    decision: LookupDecision
    primary: str = ""
    candidates: list[tuple[str, StoredResponse]] = field(default_factory=list)
    """Stored responses our validators were taken from, the selected one first (§4.3.1)."""
    body: bytes | store.BodyFile | None = None
    """The selected stored body, held while the origin is asked, so a 304 or an error can be answered from it."""
    request_time: float = 0.0
    served: bool = False
    """Answered by the cache: the response hooks leave the flow alone."""
    writer: store.TieredWriter | None = None
    key: str = ""
    complete: bool = False
    stored: bool = False
    """The response (or a 304's refresh) reached the store."""
    fwd_status: int | None = None
    """The status the next hop answered with (RFC 9211 fwd-status)."""
    lock_fd: int | None = None
    """The cross-process lock of a leader (fwdproxy.inflight.KeyLocks)."""
    flight: Flight | None = None
    """Set when this flow leads a collapsed request: followers wait on it."""
    whole_for_range: bool = False
    """The client's Range was removed to fetch the whole object (--range-fetch-whole-below)."""


class Cache:
    """A shared cache (RFC 9111): fresh hits answered here, stale entries revalidated, responses stored."""

    def __init__(self) -> None:
        self.store: store.TieredStore | None = None
        self.config = CacheConfig()
        self.max_object = 1024**3
        self.stream_threshold = 1024**2
        self.fetch_whole_below = 0
        self.revalidating: set[str] = set()
        """Primary keys with a background revalidation in flight (once per key, RFC 5861 §3)."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.flights = Flights()
        self.locks: KeyLocks | None = None
        self.sidecar: Sidecar | None = None

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option("fwd_cache_dir", str, "~/.cache/fwdproxy", "Where the disk cache lives.")
        loader.add_option("fwd_memory_cache_size", str, "256MiB", "Bytes the memory tier may hold.")
        loader.add_option("fwd_disk_cache_size", str, "10GiB", "Bytes the disk tier may hold.")
        loader.add_option("fwd_max_object_size", str, "1GiB", "Bigger responses pass through unstored.")
        loader.add_option("fwd_memory_object_max", str, "1MiB", "Bigger objects stay on disk only.")
        loader.add_option(
            "fwd_stream_threshold", str, "1MiB", "Bodies bigger than this stream to the client."
        )
        loader.add_option("fwd_negative_ttl", str, "60s", "Cap on the heuristic freshness of a 404/410.")
        loader.add_option(
            "fwd_serve_stale_on_error", str, "0", "Serve entries this stale when the origin fails."
        )
        loader.add_option("fwd_offline", bool, False, "Answer only from the cache; 504 on a miss.")
        loader.add_option(
            "fwd_range_fetch_whole_below",
            str,
            "0",
            "On a miss, fetch objects this small whole to answer a range.",
        )
        loader.add_option("fwd_preset", Sequence[str], [], "Bundles of cache rules, e.g. ci.")
        loader.add_option("fwd_config", str, "", "fwdproxy TOML file whose [[cache.rule]] tables apply.")

    def configure(self, updated: set[str]) -> None:
        sizes = {"fwd_cache_dir", "fwd_memory_cache_size", "fwd_disk_cache_size", "fwd_memory_object_max"}
        try:
            self.config = CacheConfig(
                negative_ttl=parse_duration(ctx.options.fwd_negative_ttl),
                serve_stale_on_error=parse_duration(ctx.options.fwd_serve_stale_on_error or "0"),
                offline=ctx.options.fwd_offline,
                rules=self._rules() if updated & {"fwd_preset", "fwd_config"} else self.config.rules,
            )
            self.max_object = parse_size(ctx.options.fwd_max_object_size)
            self.stream_threshold = parse_size(ctx.options.fwd_stream_threshold)
            self.fetch_whole_below = parse_size(ctx.options.fwd_range_fetch_whole_below)
            if updated & sizes or self.store is None:
                directory = os.path.expanduser(ctx.options.fwd_cache_dir)
                os.makedirs(directory, exist_ok=True)
                if self.store is not None:
                    self.store.close()
                self.locks = KeyLocks(directory)
                self.store = store.TieredStore.open(
                    directory,
                    memory_size=parse_size(ctx.options.fwd_memory_cache_size),
                    memory_object_max=parse_size(ctx.options.fwd_memory_object_max),
                    disk_size=parse_size(ctx.options.fwd_disk_cache_size),
                )
        except (ValueError, OSError) as e:
            raise exceptions.OptionsError(f"cache: {e}") from e

    def _rules(self) -> tuple[cache.Rule, ...]:
        rules: list[cache.Rule] = []
        if ctx.options.fwd_config:
            section = read_toml(ctx.options.fwd_config).get("cache", {})
            if not isinstance(section, dict) or set(section) - {"rule"}:
                raise ValueError(f"{ctx.options.fwd_config}: [cache] holds only [[cache.rule]] tables")
            rules += cache.parse_rules(section.get("rule", []))
        for name in ctx.options.fwd_preset:
            if name not in cache.PRESETS:
                raise ValueError(f"preset {name!r} is unknown; known presets: {', '.join(cache.PRESETS)}")
            rules += cache.PRESETS[name]
        return tuple(rules)

    async def running(self) -> None:
        self.sidecar = Sidecar()
        await self.sidecar.start()

    async def done(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.sidecar is not None:
            await self.sidecar.close()
        if self.store is not None:
            self.store.close()

    # -- request side ---------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or self.store is None or RESUME in flow.metadata:
            return
        flight = self._lookup(flow, collapse=True)
        if flight is REMOTE:
            # Another process fetches this key (--workers, or a second proxy on the cache dir): wait for its
            # lock, then look again in the shared store.
            assert self.locks is not None
            await self.locks.wait(flow.metadata[STATE].primary, COLLAPSE_WAIT)
            self._lookup(flow, collapse=False)
            return
        if isinstance(flight, Flight) and await self._follow(flow, flight):
            return
        if flight is not None:
            self._lookup(
                flow, collapse=False
            )  # the leader's response was not for us: ask the origin ourselves

    def _lookup(self, flow: http.HTTPFlow, *, collapse: bool) -> Flight | object | None:
        """§4: answer from the store, or prepare the flow for the origin. Returns a flight to follow instead."""
        assert self.store is not None
        now = time.time()
        req = to_request(flow.request)
        if req.method not in ("GET", "HEAD"):
            state = CacheFlow(req, LookupDecision(Verdict.FORWARD, fwd=Fwd.METHOD), request_time=now)
            flow.metadata[STATE] = state
            if self.config.offline:
                self._gateway_timeout(flow, state, "offline")
            return None
        primary = cache.primary_key(req.method, req.url)
        listing = self.store.variants(primary)
        decision = cache.lookup(req, [meta for _, meta in listing], now=now, config=self.config)
        state = CacheFlow(req, decision, primary, request_time=now)
        flow.metadata[STATE] = state
        selected = next((k for k, m in listing if m is decision.stored), "")
        if flow.metadata.get(BACKGROUND) and decision.stored is not None:
            decision = state.decision = LookupDecision(
                Verdict.REVALIDATE,
                decision.stored,
                Fwd.STALE,
                decision.age,
                decision.ttl,
                "stale-while-revalidate",
            )
        if decision.verdict in (Verdict.SERVE, Verdict.STALE_WHILE_REVALIDATE):
            entry = self.store.get(selected) if selected else None
            if entry is not None:
                self._serve(flow, state, entry.meta, entry.body, decision.cache_status(), now)
                if decision.verdict is Verdict.STALE_WHILE_REVALIDATE:
                    self._revalidate_later(flow, primary)
                return None
            decision = state.decision = LookupDecision(Verdict.FORWARD, fwd=Fwd.MISS, detail="entry-vanished")
        if decision.verdict is Verdict.GATEWAY_TIMEOUT:
            self._gateway_timeout(flow, state, decision.detail or "only-if-cached")
            return None
        if collapse and self._collapsible(flow, state):
            if self.locks is not None and primary not in self.flights.table:
                fd = self.locks.try_lock(primary)
                if fd is None:
                    return REMOTE
                state.lock_fd = fd
            flight, leader = self.flights.join(primary)
            if not leader:
                return flight
            state.flight = flight
        if decision.verdict is Verdict.REVALIDATE:
            self._add_validators(flow, state, listing, selected)
        elif self.fetch_whole_below and req.method == "GET" and "Range" in flow.request.headers:
            # Squid's range_offset_limit: fetch the whole object so it is stored, then answer the range from
            # it (response hook); a server may always ignore Range (RFC 9110 §14.2).
            state.whole_for_range = True
            flow.request.headers.pop("Range")
            flow.request.headers.pop("If-Range", None)
        return None

    def _collapsible(self, flow: http.HTTPFlow, state: CacheFlow) -> bool:
        """Whether this request may share one origin request with others for the same key."""
        fwd = state.decision.fwd
        return (
            state.request.method == "GET"
            and fwd
            in (Fwd.URI_MISS, Fwd.VARY_MISS, Fwd.STALE)  # not when the client itself asked to go forward
            and not flow.metadata.get(BACKGROUND)
            and (
                "Range" not in flow.request.headers or state.primary in self.flights.table
            )  # ranges follow, never lead
        )

    async def _follow(self, flow: http.HTTPFlow, flight: Flight) -> bool:
        """Wait for the leader of this key; True when the flow was answered from its response."""
        state: CacheFlow = flow.metadata[STATE]
        try:
            shape = await asyncio.wait_for(asyncio.shield(flight.shape), COLLAPSE_WAIT)
            if shape is Shape.STREAMING and self._stream_from_flight(flow, state, flight):
                await asyncio.wait_for(flight.file_ready.wait(), COLLAPSE_WAIT)
                if self._tail(flow, state, flight):
                    return True
            if shape is not Shape.NOT_SHARED and await asyncio.wait_for(
                asyncio.shield(flight.done), COLLAPSE_WAIT
            ):
                assert self.store is not None
                now = time.time()
                listing = self.store.variants(state.primary)
                decision = cache.lookup(state.request, [m for _, m in listing], now=now, config=self.config)
                key = next((k for k, m in listing if m is decision.stored), "")
                entry = self.store.get(key) if decision.verdict is Verdict.SERVE and key else None
                if entry is not None:
                    status = CacheStatus(fwd=state.decision.fwd, fwd_status=entry.meta.status, collapsed=True)
                    self._serve(flow, state, entry.meta, entry.body, status, now)
                    return True
        except TimeoutError:
            log.info("collapsed request for %s waited too long; going to the origin", state.request.url)
        return False

    def _stream_from_flight(self, flow: http.HTTPFlow, state: CacheFlow, flight: Flight) -> bool:
        """Whether a follower can read the leader's growing body as it is: same variant, whole body, a sidecar."""
        return (
            self.sidecar is not None
            and flight.meta is not None
            and vary_matches(flight.meta, state.request)
            and "Range" not in flow.request.headers
            and not cache.client_conditional_matches(state.request, flight.meta)
        )

    def _tail(self, flow: http.HTTPFlow, state: CacheFlow, flight: Flight) -> bool:
        """Serve a follower from the leader's temp file while it grows (Squid's collapsed forwarding)."""
        assert self.sidecar is not None and flight.meta is not None and flight.progress is not None
        if flight.path is None or flight.progress.failed:
            return False
        meta = flight.meta
        status = CacheStatus(fwd=state.decision.fwd, fwd_status=meta.status, collapsed=True)
        headers = cache.served_headers(meta, now=time.time()).with_("Content-Length", str(meta.body_length))
        head = response_head(meta.status, meta.reason, [*headers, ("Cache-Status", cache.render(status))])
        try:
            token = self.sidecar.offer(head, GrowingBody(flight.path, flight.progress))
        except (OSError, ValueError) as e:  # the temp file was committed (renamed) meanwhile
            log.debug("cannot tail %s: %s", flight.path, e)
            return False
        self._repoint(flow, token)
        state.served = True
        return True

    def _serve(
        self,
        flow: http.HTTPFlow,
        state: CacheFlow,
        meta: StoredResponse,
        body: bytes | store.BodyFile,
        status: CacheStatus,
        now: float,
    ) -> None:
        """Answer from a stored entry: in memory, or through the sidecar when the body is a file."""
        ans = answer(state.request, meta, body, now)
        state.served = True
        if ans.file is not None and self.sidecar is not None:
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
        flow.response = make_response(ans.status, ans.reason, ans.headers, content, status, now)

    def _repoint(self, flow: http.HTTPFlow, token: str) -> None:
        """Send the flow to the sidecar, which streams the body like an origin would (mitmproxy-notes §4)."""
        assert self.sidecar is not None
        flow.request.scheme = "http"
        flow.request.host = "127.0.0.1"
        flow.request.port = self.sidecar.port
        flow.request.path = "/" + token
        flow.server_conn = connection.Server(address=("127.0.0.1", self.sidecar.port))
        flow.metadata[SIDECAR] = True

    def _gateway_timeout(self, flow: http.HTTPFlow, state: CacheFlow, why: str) -> None:
        """§5.2.1.7 only-if-cached, or --offline: nothing usable is stored and the origin may not be asked."""
        flow.response = _respond.text(504, f"{state.request.url} is not in the cache ({why})")
        status = CacheStatus(fwd=state.decision.fwd or Fwd.MISS, detail=why)
        flow.response.headers["Cache-Status"] = cache.render(status)
        state.served = True

    def _add_validators(
        self, flow: http.HTTPFlow, state: CacheFlow, listing: list[tuple[str, StoredResponse]], selected: str
    ) -> None:
        """§4.3.1: ask the origin whether the selected stored response (and its siblings) is still good."""
        assert self.store is not None
        entry = self.store.get(selected) if selected else None
        if entry is None:
            return
        state.body = entry.body
        state.candidates = [(selected, entry.meta)] + [(k, m) for k, m in listing if k != selected]
        flow.metadata["fwd_probe"] = (
            True  # addons/errors.py: check the origin, so an outage can be answered stale
        )
        cond = cache.conditional_request_headers(state.request, [m for _, m in state.candidates])
        for name in ("If-None-Match", "If-Modified-Since"):
            value = cond.get(name)
            if value is not None and value != state.request.headers.get(name):
                flow.request.headers[name] = value

    def _revalidate_later(self, flow: http.HTTPFlow, primary: str) -> None:
        """RFC 5861 §3: one background revalidation per key, through the whole chain like any request."""
        if primary in self.revalidating:
            return
        self.revalidating.add(primary)
        background = _background_copy(flow)
        background.metadata[BACKGROUND] = True
        self._spawn(background, lambda: self.revalidating.discard(primary))

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
        background = _background_copy(flow)
        background.request.headers["Range"] = f"bytes={writer.written}-"
        background.request.headers["If-Range"] = validator
        background.metadata[RESUME] = state
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
            state.stored = writer.commit(flight.meta) is store.Outcome.STORED
        else:
            writer.abort()
            state.complete = False

    # -- response side --------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if (resumed := flow.metadata.get(RESUME)) is not None:
            self._resume_headers(flow, resumed)
            return
        self._responseheaders(flow)
        state: CacheFlow | None = flow.metadata.get(STATE)
        if state is not None and not state.served and flow.response is not None and flow.response.stream:
            # A streamed body's headers leave now, before the response hook: say what the cache does here.
            flow.response.headers["Cache-Status"] = cache.render(
                self._forward_status(state, stored=state.writer is not None)
            )

    def _forward_status(self, state: "CacheFlow", *, stored: bool) -> CacheStatus:
        decision = state.decision
        return CacheStatus(
            fwd=decision.fwd or Fwd.MISS,
            fwd_status=state.fwd_status,
            stored=stored,
            ttl=decision.ttl if decision.stored is not None and not stored else None,
            detail=decision.detail,
        )

    def _responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(SIDECAR) and flow.response is not None:
            flow.response.stream = True  # a big body from disk or a growing temp file: never held in memory
            return
        state: CacheFlow | None = flow.metadata.get(STATE)
        if state is None or state.served or flow.response is None or self.store is None:
            return
        resp = flow.response
        state.fwd_status = resp.status_code
        length = content_length(resp)
        big = length is None or length > self.stream_threshold
        flight = state.flight
        if resp.status_code == 304 or state.request.method != "GET" or self._stale_on_error(flow, state):
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
        state.key = store.variant_key(
            state.primary, cache.secondary_key(to_response(resp).headers, state.request.headers)
        )
        if not big:
            if flight is not None:
                flight.set_shape(Shape.BUFFERED)
            return
        writer = self.store.writer(state.key, max_length=self.max_object)
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
        if (resumed := flow.metadata.get(RESUME)) is not None:
            self._resume_done(flow, resumed)  # landing follows when the background task ends
            return
        state: CacheFlow | None = flow.metadata.get(STATE)
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
            fwd_status = None if "fwd_error" in flow.metadata else resp.status
            status = CacheStatus(fwd=Fwd.STALE, fwd_status=fwd_status, detail=allowed)
            self._serve(flow, state, meta, state.body, status, now)
            return
        close(state.body)
        if state.request.method == "HEAD" and resp.status == 200:
            self._freshen_from_head(state, resp, now)
        stored = self._store(flow, state, resp, now)
        if state.whole_for_range and stored and flow.response.raw_content is not None:
            raw = flow.response.raw_content
            if len(raw) <= self.fetch_whole_below:
                listing = self.store.variants(state.primary)
                whole = next((m for k, m in listing if k == state.key), None)
                if whole is not None:
                    status = CacheStatus(
                        fwd=state.decision.fwd or Fwd.MISS, fwd_status=resp.status, stored=True
                    )
                    self._serve(flow, state, whole, raw, status, now)
                    return
        if not flow.response.stream:
            state.fwd_status = resp.status
            flow.response.headers["Cache-Status"] = cache.render(self._forward_status(state, stored=stored))

    def _stale_on_error(self, flow: http.HTTPFlow, state: CacheFlow) -> str:
        """RFC 5861 §4 / --serve-stale-on-error: the reason a stale entry may stand in for this error, or ""."""
        if not state.candidates or flow.response is None:
            return ""
        failed = "fwd_error" in flow.metadata  # the origin could not be reached (addons/errors.py)
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
        if state.writer is not None:
            outcome = state.writer.commit(meta)
        else:
            assert raw is not None
            outcome = self.store.put(state.key, meta, raw)
        if outcome is not store.Outcome.STORED:
            log.info("not stored %s: %s", state.request.url, outcome)
        state.stored = outcome is store.Outcome.STORED
        return state.stored

    @staticmethod
    def _meta(
        state: CacheFlow, resp: Response, length: int, response_time: float, decision: cache.StoreDecision
    ) -> StoredResponse:
        """The record to store for this response (RFC 9111 §3.1: minus hop-by-hop and Connection-named fields)."""
        return StoredResponse(
            url=state.request.url,
            status=resp.status,
            reason=resp.reason,
            headers=cache.storable_headers(_without_our_status(resp.headers), response_time=response_time),
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
                self.store.update(key, fresh)

    def error(self, flow: http.HTTPFlow) -> None:
        if (resumed := flow.metadata.get(RESUME)) is not None:
            self._resume_done(flow, resumed)
            return
        state: CacheFlow | None = flow.metadata.get(STATE)
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


def _background_copy(flow: http.HTTPFlow) -> http.HTTPFlow:
    """A new flow for the same request, without the client's conditionals, made by the proxy itself."""
    background = http.HTTPFlow(
        flow.client_conn, connection.Server(address=(flow.request.host, flow.request.port))
    )
    background.request = flow.request.copy()
    for name in (
        "If-None-Match",
        "If-Modified-Since",
        "If-Match",
        "If-Unmodified-Since",
        "If-Range",
        "Range",
    ):
        background.request.headers.pop(name, None)
    background.is_replay = "request"  # addons/access.py: not a client's request
    return background


def _without_our_status(headers: Headers) -> Headers:
    """The fields minus our own Cache-Status member (set on streamed responses before they are stored);
    members of caches in front of the origin are kept (RFC 9211 §2: each cache adds its own)."""
    lines = headers.get_all("cache-status")
    if not any(CACHE_NAME in line for line in lines):
        return headers
    kept = [m.strip() for line in lines for m in line.split(",") if not m.strip().startswith(CACHE_NAME)]
    out = headers.without("cache-status")
    return out.with_("Cache-Status", ", ".join(kept)) if kept else out


addons = [Cache()]
