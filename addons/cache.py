"""The shared HTTP cache: adapts mitmproxy's hooks to the RFC 9111 policy in fwdproxy.cache and the store."""

# No `from __future__ import annotations` here: mitmdump -s executes this file outside sys.modules, where a
# dataclass with string annotations cannot be built.
import asyncio
import logging
import os
import secrets
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from mitmproxy import ctx, exceptions, http

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons import _flowinfo, _respond, _wideread
from addons._cachecore import CacheCore
from addons._cacheflow import (
    COLLAPSE_WAIT,
    REMOTE,
    CacheFlow,
    background_copy,
)
from addons._cachehttp import to_request
from addons._notes import notes
from fwdproxy import cache, ranges, store, unkeyed
from fwdproxy.bodysource import GrowingBody
from fwdproxy.cache import CacheConfig, CacheStatus, Fwd, LookupDecision, Verdict
from fwdproxy.cache.answer import close, range_of
from fwdproxy.cache.key import vary_matches
from fwdproxy.config import read_toml
from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.inflight import Flight, Flights, KeyLocks, Shape
from fwdproxy.sidecar import Sidecar, response_head
from fwdproxy.units import parse_duration, parse_size

log = logging.getLogger("fwdproxy.cache")


STALE_ON_ERROR_DEFAULT = "1d"
"""fwd_serve_stale_on_error's default: connection failures only (see CacheConfig.stale_if_disconnected)."""


def _stale_on_error(value: str) -> tuple[float, float]:
    """CacheConfig's (stale_if_disconnected, serve_stale_on_error) for the option: the default covers
    unreachable origins only (RFC 9111 §4.2.4); a value set on purpose extends to 5xx too (registry outage
    mode), and 0 turns both off."""
    seconds = parse_duration(value or "0")
    return (seconds, 0.0) if value == STALE_ON_ERROR_DEFAULT else (seconds, seconds)


class Cache(CacheCore):
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
        self.checks = {}

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
            "fwd_serve_stale_on_error",
            str,
            STALE_ON_ERROR_DEFAULT,
            "Serve entries this stale when the origin cannot be reached; set, also on a 5xx; 0: off.",
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
            disconnected, on_error = _stale_on_error(ctx.options.fwd_serve_stale_on_error)
            self.config = CacheConfig(
                negative_ttl=parse_duration(ctx.options.fwd_negative_ttl),
                stale_if_disconnected=disconnected,
                serve_stale_on_error=on_error,
                offline=ctx.options.fwd_offline,
                rules=self._rules() if updated & {"fwd_preset", "fwd_config"} else self.config.rules,
            )
            self.max_object = parse_size(ctx.options.fwd_max_object_size)
            self.stream_threshold = parse_size(ctx.options.fwd_stream_threshold)
            self.fetch_whole_below = parse_size(ctx.options.fwd_range_fetch_whole_below)
            if updated & sizes or self.store is None:
                directory = os.path.expanduser(ctx.options.fwd_cache_dir)
                os.makedirs(directory, mode=0o700, exist_ok=True)  # it holds decrypted HTTPS responses
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
        _wideread.widen(("127.0.0.1", self.sidecar.port))  # our own loopback server: read it in wide gulps

    async def done(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.sidecar is not None:
            _wideread.narrow(("127.0.0.1", self.sidecar.port))
            await self.sidecar.close()
        if self.store is not None:
            self.store.close()

    # -- request side ---------------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if flow.response is not None or self.store is None or notes(flow).resume is not None:
            return None
        flight = self._lookup(flow, collapse=True)
        if flight is None:
            return None  # answered, or on its way to the origin: no coroutine for the common case (a hit)
        return self._wait_for(flow, flight)

    async def _wait_for(self, flow: http.HTTPFlow, pending: Flight | object) -> None:
        """The lookup has to wait: for a stored body's checksum check, or for another request in flight for the
        key (follow it, or wait and look again). Bounded: one check, then at most one wait for a flight."""
        collapse = may_check = True
        while pending is not None:
            if isinstance(pending, asyncio.Future):
                await asyncio.shield(pending)  # the check confirmed the body file or dropped the entry
                may_check = False
            elif pending is REMOTE:
                # Another process fetches this key (--workers, or a second proxy on the cache dir): wait for
                # its lock, then look again in the shared store.
                assert self.locks is not None
                await self.locks.wait(notes(flow).cache.primary, COLLAPSE_WAIT)  # type: ignore[union-attr]
                collapse = False
            elif isinstance(pending, Flight):
                if await self._follow(flow, pending):
                    return
                collapse = False  # the leader's response was not for us: ask the origin ourselves
            pending = self._lookup(flow, collapse=collapse, may_check=may_check)

    def _lookup(
        self, flow: http.HTTPFlow, *, collapse: bool, may_check: bool = True
    ) -> Flight | object | None:
        """§4: answer from the store, or prepare the flow for the origin. Returns a flight to follow, or a body
        file's checksum check to await, instead (``may_check`` False: an unchecked body file is a miss)."""
        assert self.store is not None
        now = time.time()
        noted = notes(flow)
        req = to_request(flow.request, _flowinfo.note_request(flow)[0])  # the URL worked out once per flow
        if req.method not in ("GET", "HEAD"):
            state = CacheFlow(req, LookupDecision(Verdict.FORWARD, fwd=Fwd.METHOD), request_time=now)
            noted.cache = state
            if self.config.offline:
                self._gateway_timeout(flow, state, "offline")
            return None
        body = unkeyed.has_body(req.headers, flow.request.raw_content)  # raw_content: None while streamed
        if (why := unkeyed.bypass(req.headers, has_body=body)) is not None:
            # Issue 16: the URL does not say what the origin answers to this request, so nothing stored may
            # answer it and its response may answer no one else (Cache-Status fwd=bypass, and no store).
            state = CacheFlow(
                req, LookupDecision(Verdict.FORWARD, fwd=Fwd.BYPASS, detail=why), request_time=now
            )
            noted.cache = state
            if self.config.offline:
                self._gateway_timeout(flow, state, "offline")
            return None
        primary = cache.primary_key(req.method, req.url)
        listing = self.store.variants(primary)
        decision = cache.lookup(req, [meta for _, meta in listing], now=now, config=self.config)
        state = CacheFlow(req, decision, primary, request_time=now)
        noted.cache = state
        if (lead := noted.whole) is not None:
            noted.whole = None
            state.flight, state.lock_fd = lead  # our whole fetch for ranges: it leads, whatever happens next
            state.whole_for_range = True
        selected = next((k for k, m in listing if m is decision.stored), "")
        if noted.background and decision.stored is not None:
            decision = state.decision = LookupDecision(
                Verdict.REVALIDATE,
                decision.stored,
                Fwd.STALE,
                decision.age,
                decision.ttl,
                "stale-while-revalidate",
            )
        if decision.verdict in (Verdict.SERVE, Verdict.STALE_WHILE_REVALIDATE):
            entry = self._checked_get(selected, may_check=may_check) if selected else None
            if isinstance(entry, asyncio.Future):
                return entry
            if entry is not None:
                self._serve(flow, state, entry.meta, entry.body, decision.cache_status(), now)
                if decision.verdict is Verdict.STALE_WHILE_REVALIDATE:
                    self._revalidate_later(flow, primary)
                return None
            decision = state.decision = LookupDecision(Verdict.FORWARD, fwd=Fwd.MISS, detail="entry-vanished")
        if decision.verdict is Verdict.GATEWAY_TIMEOUT:
            self._gateway_timeout(flow, state, decision.detail or "only-if-cached")
            return None
        if decision.verdict is Verdict.REVALIDATE and selected and may_check:
            # A 304 would be answered from this body: have it checked before the origin is asked.
            entry = self._checked_get(selected, may_check=True)
            if isinstance(entry, asyncio.Future):
                return entry
            if entry is not None:
                close(entry.body)
        if collapse and self._fetches_whole(flow, state):
            return self._fetch_whole_for_ranges(flow, state)
        if collapse and state.flight is None and self._collapsible(flow, state):  # not when it leads already
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
        return None

    def _fetches_whole(self, flow: http.HTTPFlow, state: CacheFlow) -> bool:
        """Whether a range request on a miss waits for a whole fetch (--range-fetch-whole-below)."""
        return (
            bool(self.fetch_whole_below)
            and state.request.method == "GET"
            and "Range" in flow.request.headers
            and state.decision.verdict is Verdict.FORWARD
            and state.decision.fwd in (Fwd.URI_MISS, Fwd.VARY_MISS)
            and state.primary not in self.flights.table  # one is in flight: follow it (_collapsible)
            and not notes(flow).background
            and not flow.is_replay
        )

    def _fetch_whole_for_ranges(self, flow: http.HTTPFlow, state: CacheFlow) -> Flight | object:
        """Squid's range_offset_limit, collapsed: fetch the whole object once, in a flow of our own that leads
        the key's flight, and answer this range (and every range that arrives meanwhile, as uv sends eight at
        once) from the stored object (RFC 9111 §3.4 lets a cache use a full response for ranges).
        Returns the flight this request follows, or REMOTE when another process fetches the key."""
        primary = state.primary
        fd: int | None = None
        if self.locks is not None:
            fd = self.locks.try_lock(primary)
            if fd is None:
                return REMOTE
        flight, _ = self.flights.join(primary)  # nobody is in flight (_fetches_whole): the whole fetch leads
        flight.followers += 1  # and this request follows it
        whole = background_copy(flow)  # without Range, If-Range and the client's conditionals
        notes(whole).whole = (flight, fd)

        def abandoned() -> None:
            # The whole fetch ended without the cache taking the lead (an addon answered it first): land it.
            if (noted := notes(whole)).whole is not None:
                noted.whole = None
                if fd is not None and self.locks is not None:
                    self.locks.unlock(primary, fd)
                self.flights.land(primary, flight, False, body_complete=False)

        self._spawn(whole, abandoned)
        return flight

    def _collapsible(self, flow: http.HTTPFlow, state: CacheFlow) -> bool:
        """Whether this request may share one origin request with others for the same key."""
        fwd = state.decision.fwd
        return (
            state.request.method == "GET"
            and fwd
            in (Fwd.URI_MISS, Fwd.VARY_MISS, Fwd.STALE)  # not when the client itself asked to go forward
            and not notes(flow).background
            and (
                "Range" not in flow.request.headers or state.primary in self.flights.table
            )  # ranges follow, never lead
        )

    async def _follow(self, flow: http.HTTPFlow, flight: Flight) -> bool:
        """Wait for the leader of this key; True when the flow was answered from its response."""
        state = notes(flow).cache
        assert state is not None
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
                entry = (
                    self._checked_get(key, may_check=True)
                    if decision.verdict is Verdict.SERVE and key
                    else None
                )
                if isinstance(entry, asyncio.Future):
                    await asyncio.shield(entry)
                    entry = self._checked_get(key, may_check=False)
                if entry is not None and not isinstance(entry, asyncio.Future):
                    status = CacheStatus(fwd=state.decision.fwd, fwd_status=entry.meta.status, collapsed=True)
                    self._serve(flow, state, entry.meta, entry.body, status, now)
                    return True
        except TimeoutError:
            log.info("collapsed request for %s waited too long; going to the origin", state.request.url)
        return False

    def _stream_from_flight(self, flow: http.HTTPFlow, state: CacheFlow, flight: Flight) -> bool:
        """Whether a follower can read the leader's growing body as it is: same variant, a sidecar, and the whole
        body or ranges of it (a 416 waits for the stored entry)."""
        return (
            self.sidecar is not None
            and flight.meta is not None
            and vary_matches(flight.meta, state.request)
            and not isinstance(range_of(state.request, flight.meta), ranges.Unsatisfiable)
            and not cache.client_conditional_matches(state.request, flight.meta)
        )

    def _tail(self, flow: http.HTTPFlow, state: CacheFlow, flight: Flight) -> bool:
        """Serve a follower from the leader's temp file while it grows (Squid's collapsed forwarding)."""
        assert self.sidecar is not None and flight.meta is not None and flight.progress is not None
        if flight.path is None or flight.progress.failed:
            return False
        meta = flight.meta
        status = CacheStatus(fwd=state.decision.fwd, fwd_status=meta.status, collapsed=True)
        headers = cache.served_headers(meta, now=time.time())
        code, reason, parts = meta.status, meta.reason, None
        if isinstance(wanted := range_of(state.request, meta), ranges.Partial):
            # A range of the body on its way: a 206 whose parts wait for their bytes (uv's parallel ranges
            # behind one whole fetch, --range-fetch-whole-below).
            layout = ranges.partial_body(
                wanted, meta.body_length, meta.headers.get("content-type"), secrets.token_hex(16)
            )
            kept = headers.without("content-length", "content-range", *(k for k, _ in layout.headers))
            headers, parts = Headers(kept.fields + layout.headers.fields), layout.parts
            code, reason = 206, "Partial Content"
        else:
            headers = headers.with_("Content-Length", str(meta.body_length))
        head = response_head(code, reason, [*headers, ("Cache-Status", cache.render(status))])
        try:
            token = self.sidecar.offer(head, GrowingBody(flight.path, flight.progress, parts))
        except (OSError, ValueError) as e:  # the temp file was committed (renamed) meanwhile
            log.debug("cannot tail %s: %s", flight.path, e)
            return False
        self._repoint(flow, token)
        state.served = True
        return True

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
        entry = self._checked_get(selected, may_check=False) if selected else None
        if entry is None or isinstance(entry, asyncio.Future):
            return  # gone, or its body file changed since it was checked: fetch it whole
        state.body = entry.body
        state.candidates = [(selected, entry.meta)] + [(k, m) for k, m in listing if k != selected]
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
        background = background_copy(flow)
        notes(background).background = True
        self._spawn(background, lambda: self.revalidating.discard(primary))


addons = [Cache()]
