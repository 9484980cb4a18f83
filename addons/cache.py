"""The shared HTTP cache: adapts mitmproxy's hooks to the RFC 9111 policy in fwdproxy.cache and the store."""

# No `from __future__ import annotations` here: mitmdump -s executes this file outside sys.modules, where a
# dataclass with string annotations cannot be built.
import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.addons.clientplayback import ReplayHandler

from fwdproxy import cache, store, unkeyed
from fwdproxy.cache import CacheConfig, Verdict
from fwdproxy.cache.answer import close
from fwdproxy.cache.exchange import Exchange
from fwdproxy.cache.states import Action, Fleet, Found, Joined, Limits, State
from fwdproxy.config import Settings
from fwdproxy.http_model import StoredResponse
from fwdproxy.inflight import Flight, Flights, KeyLocks, Shape
from fwdproxy.sidecar import Sidecar
from fwdproxy.store.fleet import FleetStore, Growing
from fwdproxy.store.shared import SharedTier
from fwdproxy.store.shared_client import password_from
from fwdproxy.store.shared_layout import parse_url
from fwdproxy_addons import _cachepartial, _cacheserve, _cachestore, _flowinfo, _mitm
from fwdproxy_addons._cacheflow import COLLAPSE_WAIT, Held, background_copy
from fwdproxy_addons._cachehttp import content_length, to_request, to_response
from fwdproxy_addons._mitm import wideread as _wideread
from fwdproxy_addons._notes import FlowNotes, notes, peek
from fwdproxy_addons._settings import SettingsSource

log = logging.getLogger("fwdproxy.cache")


def _stale_on_error(s: Settings) -> tuple[float, float]:
    """CacheConfig's (stale_if_disconnected, serve_stale_on_error): the default covers unreachable origins
    only (RFC 9111 §4.2.4); a value set on purpose extends to 5xx too (registry outage mode), and 0 turns
    both off."""
    seconds = s.serve_stale_on_error
    return (seconds, seconds) if "serve_stale_on_error" in s.explicit else (seconds, 0.0)


class Cache:
    """A shared cache (RFC 9111): fresh hits answered here, stale entries revalidated, responses stored."""

    def __init__(self, source: SettingsSource | None = None) -> None:
        self.source = source or SettingsSource()
        self.opened: tuple[object, ...] | None = None
        """(directory, memory size, memory object max, disk size, the shared tier's options) of the open store."""
        self.store: store.TieredStore | None = None
        self.fleet: FleetStore | None = None
        """The store again when it is a fleet node's (--shared-cache, issue 20); None: no shared tier."""
        self.config = CacheConfig()
        given = self.source.given
        self.max_object = given.max_object_size
        self.stream_threshold = given.stream_threshold
        self.fetch_whole_below = given.range_fetch_whole_below
        self.limits = Limits(self.max_object, self.stream_threshold, self.fetch_whole_below)
        self.revalidating: set[str] = set()
        """Primary keys with a background revalidation in flight (once per key, RFC 5861 §3)."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.flights = Flights()
        self.locks: KeyLocks | None = None
        self.sidecar: Sidecar | None = None
        self.checks: dict[tuple[str, tuple[bytes, int, int, int, int]], asyncio.Future[None]] = {}
        """Checksum checks of big body files under way, per (key, file identity): a crowd waits for one."""

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(
            loader,
            "fwd_cache_dir",
            "fwd_memory_cache_size",
            "fwd_disk_cache_size",
            "fwd_max_object_size",
            "fwd_memory_object_max",
            "fwd_stream_threshold",
            "fwd_negative_ttl",
            "fwd_serve_stale_on_error",
            "fwd_offline",
            "fwd_range_fetch_whole_below",
            "fwd_preset",
            "fwd_config",
            "fwd_shared_cache",
            "fwd_shared_object_max",
            "fwd_shared_timeout",
            "fwd_shared_cache_password_file",
            "fwd_shared_cache_ca",
        )

    def configure(self, updated: set[str]) -> None:
        s = self.source.current()
        disconnected, on_error = _stale_on_error(s)
        self.config = CacheConfig(
            negative_ttl=s.negative_ttl,
            stale_if_disconnected=disconnected,
            serve_stale_on_error=on_error,
            offline=s.offline,
            rules=self.source.resolved().rules,
        )
        self.max_object = s.max_object_size
        self.stream_threshold = s.stream_threshold
        self.fetch_whole_below = s.range_fetch_whole_below
        self.limits = Limits(self.max_object, self.stream_threshold, self.fetch_whole_below)
        wanted = (
            os.path.expanduser(s.cache_dir),
            s.memory_cache_size,
            s.memory_object_max,
            s.disk_cache_size,
            s.shared_cache,
            s.shared_object_max,
            s.shared_timeout,
            s.shared_cache_password_file,
            s.shared_cache_ca,
        )
        if wanted != self.opened or self.store is None:
            directory = os.path.expanduser(s.cache_dir)
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)  # it holds decrypted HTTPS responses
                shared = self._shared_tier(s)
                if self.store is not None:
                    self.fleet = None
                    self._close_store(self.store)
                self.locks = KeyLocks(directory)
                kind = store.TieredStore if shared is None else FleetStore
                self.store = kind.open(
                    directory,
                    memory_size=s.memory_cache_size,
                    memory_object_max=s.memory_object_max,
                    disk_size=s.disk_cache_size,
                )
                if isinstance(self.store, FleetStore) and shared is not None:
                    self.fleet = self.store
                    self.fleet.attach(shared)
                    if self.sidecar is not None:  # changed while running: connect now
                        asyncio.get_running_loop().create_task(self.fleet.start())
            except (ValueError, OSError) as e:
                raise exceptions.OptionsError(f"cache: {e}") from e
            self.opened = wanted
        if self.fleet is not None:
            self.fleet.stream_above = self.stream_threshold  # a big shared entry streams while copied in

    async def check_store(self) -> bool | None:
        """Check the store's database (SQLite's quick_check); None when no store is open."""
        if self.store is None:
            return None
        # TieredStore.check() is quick_check plus following a reopened database with the memory tier. The
        # quick_check reads the whole file, so it runs in a thread; the memory tier is not thread-safe and
        # follows by itself at its next lookup (tiered.FOLLOW_INTERVAL), so only the disk part runs there.
        return await asyncio.to_thread(self.store.disk.check)

    @staticmethod
    def _shared_tier(s: Settings) -> SharedTier | None:
        """--shared-cache and its companions (issue 20); None when off."""
        if not s.shared_cache:
            return None
        url = password_from(parse_url(s.shared_cache), s.shared_cache_password_file or None, dict(os.environ))
        ca = s.shared_cache_ca or None
        if ca is not None and not os.path.isfile(os.path.expanduser(ca)):
            raise ValueError(f"--shared-cache-ca {ca}: no such file")
        return SharedTier(
            url,
            timeout=s.shared_timeout,
            object_max=s.shared_object_max,
            ca=os.path.expanduser(ca) if ca else None,
        )

    def _close_store(self, old: store.TieredStore) -> None:
        old.close()
        if isinstance(old, FleetStore):
            try:
                asyncio.get_running_loop().create_task(old.close_shared())
            except RuntimeError:
                pass  # configured before the loop runs: nothing was connected yet

    async def running(self) -> None:
        self.sidecar = Sidecar()
        await self.sidecar.start()
        _mitm.install()  # the wide reads (addons/_mitm/wideread.py), also when this addon is loaded alone
        _wideread.widen(("127.0.0.1", self.sidecar.port))  # our own loopback server: read it in wide gulps
        if self.fleet is not None:
            await self.fleet.start()
            assert self.fleet.shared is not None
            log.info("shared cache tier: %s", self.fleet.shared.url.redacted())

    async def done(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.sidecar is not None:
            _wideread.narrow(("127.0.0.1", self.sidecar.port))
            await self.sidecar.close()
        if self.fleet is not None:
            await self.fleet.close_shared()
        if self.store is not None:
            self.store.close()

    # -- request side: drive the exchange ------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if flow.response is not None or self.store is None:
            return None
        noted = notes(flow)
        if noted.resume is not None:
            return None
        ex = self._lookup(flow, noted, collapse=True, may_check=True)
        if ex.state is State.FORWARD:
            _cachepartial.before_forward(flow, ex, self.store, self.config)  # RFC 9111 §3.3 pieces
        if ex.state in (State.SERVED, State.FORWARD):
            return None  # answered, or on its way to the origin: no coroutine for the common case (a hit)
        return self._wait_for(flow, noted, ex)

    async def _wait_for(self, flow: http.HTTPFlow, noted: FlowNotes, ex: Exchange) -> None:
        """The exchange has to wait: for a stored body's checksum check, for the fleet's shared tier, or for
        another request in flight for the key (follow it, or wait and look again). Bounded: one check, one
        look in the shared tier, then at most one wait for a flight."""
        collapse = may_check = True
        while ex.state not in (State.SERVED, State.FORWARD):
            if ex.state is State.SHARED:
                if await self._from_shared(flow, ex, noted):
                    return
                ex = self._lookup(flow, noted, collapse=collapse, may_check=may_check)
                continue
            held = _held(noted)
            pending, leader, held.pending, held.leader = held.pending, held.leader, None, None
            if ex.state is State.CHECK:
                assert pending is not None
                await asyncio.shield(pending)  # the check confirmed the body file or dropped the entry
                may_check = False
            elif leader is None:  # FOLLOW
                # Another process fetches this key (--workers, or a second proxy on the cache dir): wait for
                # its lock, then look again in the shared store.
                assert self.locks is not None
                await self.locks.wait(ex.primary, COLLAPSE_WAIT)
                collapse = False
            else:  # FOLLOW
                if await self._follow(flow, ex, leader):
                    return
                collapse = False  # the leader's response was not for us: ask the origin ourselves
            ex = self._lookup(flow, noted, collapse=collapse, may_check=may_check)
        if ex.state is State.FORWARD and self.store is not None:
            _cachepartial.before_forward(flow, ex, self.store, self.config)  # RFC 9111 §3.3 pieces

    def _lookup(self, flow: http.HTTPFlow, noted: FlowNotes, *, collapse: bool, may_check: bool) -> Exchange:
        """§4: a new exchange for the flow, driven as far as it goes without waiting; the state it stopped
        in says what to wait for (CHECK: ``held.pending``; FOLLOW: ``held.leader``, or another process)."""
        assert self.store is not None
        now = time.time()
        req = to_request(flow.request, _flowinfo.note_request(flow)[0])  # the URL worked out once per flow
        ex = noted.cache = Exchange(req, now)
        bypass = None
        if req.method in ("GET", "HEAD"):
            body = unkeyed.has_body(req.headers, flow.request.raw_content)  # raw_content: None while streamed
            bypass = unkeyed.bypass(req.headers, has_body=body)
        action = ex.begin(bypass=bypass, offline=self.config.offline)
        if action is Action.LOOKUP:
            held = None
            if (lead := noted.whole) is not None:
                noted.whole = None  # our whole fetch for ranges: it leads, whatever happens next
                held = noted.held = Held(flight=lead[0], lock_fd=lead[1])
            action = ex.looked_up(
                self.store.variants(ex.primary),
                now=now,
                config=self.config,
                in_flight=ex.primary in self.flights.table,
                background=noted.background,
                replay=bool(flow.is_replay),
                whole=held is not None,
                may_check=may_check,
                collapse=collapse,
                fetch_whole_below=self.fetch_whole_below,
                fleet=Fleet.OFF if self.fleet is None else _fleet(noted),
            )
        entry = None
        while True:
            match action:
                case Action.READ:
                    got = self._checked_get(ex.selected, may_check=ex.may_check)
                    if isinstance(got, asyncio.Future):
                        _held(noted).pending = got
                        action = ex.read(Found.PENDING)
                    elif got is None:
                        action = ex.read(Found.NONE)
                    else:
                        if ex.verified:  # only checked before validating: read again when the origin answers
                            close(got.body)
                        else:
                            entry = got
                        action = ex.read(Found.ENTRY)
                case Action.SERVE | Action.SERVE_AND_REVALIDATE:
                    assert entry is not None
                    _cacheserve.serve(flow, ex, entry.meta, entry.body, ex.status(), now, self.sidecar)
                    if action is Action.SERVE_AND_REVALIDATE:
                        self._revalidate_later(flow, ex.primary)
                    return ex
                case Action.REJECT:
                    _cacheserve.gateway_timeout(flow, ex)
                    return ex
                case Action.LOOKUP_SHARED:
                    noted.shared_tried = True  # once per flow: _wait_for looks, then a new exchange again
                    return ex
                case Action.JOIN:
                    action = ex.joined(self._join(ex, noted))
                case Action.FETCH_WHOLE:
                    self._fetch_whole_for_ranges(flow, ex, noted)
                    return ex
                case Action.FORWARD_VALIDATING:
                    self._add_validators(flow, ex, noted)
                    return ex
                case _:  # FORWARD; AWAIT_CHECK, FOLLOW and WAIT_REMOTE: _wait_for waits
                    return ex

    async def _from_shared(self, flow: http.HTTPFlow, ex: Exchange, noted: FlowNotes) -> bool:
        """LOOKUP_SHARED (issue 20): copy the entry this request may use from the shared tier into the local
        tiers; True when the flow was answered meanwhile (a big entry streamed while it is copied in).

        On a shared miss this node takes the fleet's fetch lock for the key (a Range request never leads), or
        waits while another node downloads it (cross-node collapsing); _land gives the lock back. The copy
        either way ends in the local tiers, where the next exchange finds it (``noted.shared_hit``)."""
        fleet = self.fleet
        assert fleet is not None
        config = self.config

        def choose(listing: list[tuple[str, StoredResponse]]) -> str:
            return ex.choose(listing, now=time.time(), config=config)

        claim = "range" not in ex.request.headers
        got = await fleet.fetch(ex.primary, choose, claim=claim, wait=COLLAPSE_WAIT)
        if isinstance(got, Growing):
            if ex.streaming(got.meta, now=time.time(), config=config) is Action.SERVE:
                if _cacheserve.stream_growing(flow, ex, got, self.sidecar):
                    return True
                # Not offered (no sidecar, or committed meanwhile): the next exchange reads the local copy.
            got = await fleet.settled(ex.primary)  # AWAIT_SHARED: then answer from the local tiers
        noted.shared_hit = got
        return False

    def _join(self, ex: Exchange, noted: FlowNotes) -> Joined:
        """Join the key's flight: lead it (taking the cross-process lock first), or follow its leader."""
        fd = None
        if self.locks is not None and ex.primary not in self.flights.table:
            fd = self.locks.try_lock(ex.primary)
            if fd is None:
                return Joined.REMOTE
        flight, leader = self.flights.join(ex.primary)
        if not leader:
            _held(noted).leader = flight
            return Joined.FOLLOW
        held = _held(noted)
        held.flight, held.lock_fd = flight, fd
        return Joined.LEAD

    def _fetch_whole_for_ranges(self, flow: http.HTTPFlow, ex: Exchange, noted: FlowNotes) -> None:
        """Squid's range_offset_limit, collapsed: fetch the whole object once, in a flow of our own that leads
        the key's flight, and answer this range (and every range that arrives meanwhile, as uv sends eight at
        once) from the stored object (RFC 9111 §3.4 lets a cache use a full response for ranges).
        This request follows that flight (``held.leader``; None when another process fetches the key)."""
        primary = ex.primary
        fd: int | None = None
        if self.locks is not None:
            fd = self.locks.try_lock(primary)
            if fd is None:
                return
        flight, _ = self.flights.join(primary)  # nobody is in flight (fetches_whole): the whole fetch leads
        flight.followers += 1  # and this request follows it
        _held(noted).leader = flight
        whole = background_copy(flow)  # without Range, If-Range and the client's conditionals
        lead = notes(whole)
        lead.whole = (flight, fd)

        def abandoned() -> None:
            # The whole fetch ended without the cache taking the lead (an addon answered it first): land it.
            if lead.whole is not None:
                lead.whole = None
                if fd is not None and self.locks is not None:
                    self.locks.unlock(primary, fd)
                self.flights.land(primary, flight, False, body_complete=False)

        self._spawn(whole, abandoned)

    async def _follow(self, flow: http.HTTPFlow, ex: Exchange, flight: Flight) -> bool:
        """Wait for the leader of this key; True when the flow was answered from its response."""
        try:
            shape = await asyncio.wait_for(asyncio.shield(flight.shape), COLLAPSE_WAIT)
            if shape is Shape.STREAMING and _cacheserve.can_tail(ex, flight, self.sidecar):
                await asyncio.wait_for(flight.file_ready.wait(), COLLAPSE_WAIT)
                assert self.sidecar is not None
                if _cacheserve.tail(flow, ex, flight, self.sidecar):
                    ex.followed()
                    return True
            if shape is not Shape.NOT_SHARED and await asyncio.wait_for(
                asyncio.shield(flight.done), COLLAPSE_WAIT
            ):
                assert self.store is not None
                now = time.time()
                listing = self.store.variants(ex.primary)
                decision = cache.lookup(ex.request, [m for _, m in listing], now=now, config=self.config)
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
                    ex.followed()
                    status = ex.collapsed_status(entry.meta.status)
                    _cacheserve.serve(flow, ex, entry.meta, entry.body, status, now, self.sidecar)
                    return True
        except TimeoutError:
            log.info("collapsed request for %s waited too long; going to the origin", ex.request.url)
        return False

    def _add_validators(self, flow: http.HTTPFlow, ex: Exchange, noted: FlowNotes) -> None:
        """§4.3.1: ask the origin whether the selected stored response (and its siblings) is still good."""
        entry = self._checked_get(ex.selected, may_check=False) if ex.selected else None
        if entry is None or isinstance(entry, asyncio.Future):
            return  # gone, or its body file changed since it was checked: fetch it whole
        _held(noted).body = entry.body
        cond = ex.hold(entry.meta)
        for name in ("If-None-Match", "If-Modified-Since"):
            value = cond.get(name)
            if value is not None and value != ex.request.headers.get(name):
                flow.request.headers[name] = value

    def _revalidate_later(self, flow: http.HTTPFlow, primary: str) -> None:
        """RFC 5861 §3: one background revalidation per key, through the whole chain like any request."""
        if primary in self.revalidating:
            return
        self.revalidating.add(primary)
        background = background_copy(flow)
        notes(background).background = True
        self._spawn(background, lambda: self.revalidating.discard(primary))

    def _checked_get(self, key: str, *, may_check: bool) -> "store.Entry | asyncio.Future[None] | None":
        """The stored entry, or a check to await first when its body is a file this process has not hashed
        yet (issue 16: a damaged body is never served); with ``may_check`` False such an entry is a miss."""
        assert self.store is not None
        entry = self.store.get(key)
        if entry is None or not isinstance(entry.body, store.BodyFile) or not entry.body.digest:
            return entry
        pending = self._confirm(key, entry.body)
        return pending if may_check else None

    def _confirm(self, key: str, body: store.BodyFile) -> "asyncio.Future[None]":
        """Hash a body file in a worker thread (at disk speed, the event loop free), once for all who ask;
        the store then remembers it as confirmed, or drops the entry. Takes ownership of ``body``."""
        ident = (key, body.seen)
        if (pending := self.checks.get(ident)) is not None:
            body.close()
            return pending
        loop = asyncio.get_running_loop()
        pending = self.checks[ident] = loop.create_future()
        the_store = self.store
        assert the_store is not None

        async def run() -> None:
            try:
                try:
                    matches = await asyncio.to_thread(store.body_matches, body)
                finally:
                    body.close()
                the_store.confirm(key, body, matches)
            finally:
                del self.checks[ident]
                if not pending.done():
                    pending.set_result(None)

        task = loop.create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return pending

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

    # -- response side: the origin's answer into the exchange ---------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        noted = peek(flow)
        if noted is None or flow.response is None:
            return
        if noted.resume is not None:
            _cachestore.resume_headers(flow, noted.resume)
            return
        if noted.sidecar:
            flow.response.stream = True  # a big body from disk or a growing temp file: never held in memory
            return
        ex = noted.cache
        if ex is None or ex.state is not State.FORWARD or self.store is None:
            return
        resp, held = flow.response, noted.held
        flight = held.flight if held is not None else None
        length = content_length(resp)
        record = to_response(resp)
        action = ex.head(
            record,
            length=length,
            failed=noted.error is not None,
            now=time.time(),
            config=self.config,
            limits=self.limits,
        )
        if action is Action.TEE:
            action = _cachestore.tee(flow, ex, _held(noted), self.store, record, length, self.limits)
        match action:
            case Action.ABANDON:
                # Too big (or of unknown length) to fetch whole for a range: stop reading it; the waiting range
                # requests go to the origin themselves (_follow sees NOT_SHARED).
                if flight is not None:
                    flight.set_shape(Shape.NOT_SHARED)
                flow.kill()
                return
            case Action.PASS | Action.BUFFER:
                if ex.big:
                    resp.stream = True  # pass through without holding the body
                if flight is not None:
                    flight.set_shape(Shape.BUFFERED if ex.shared else Shape.NOT_SHARED)
        _cachepartial.headers(flow, ex, noted)  # a 206 held for a fill, or copied as a piece
        if resp.stream:
            # A streamed body's headers leave now, before the response hook: say what the cache does here.
            writing = held is not None and held.writer is not None
            resp.headers["Cache-Status"] = cache.render(ex.forward_status(stored=writing))
            if writing and resp.status_code == 200:
                # Being stored whole, so its hits will answer ranges (RFC 9110 §14.3): say so already, or a
                # client such as uv fetches the object once more in ranges on its next run.
                resp.headers["Accept-Ranges"] = "bytes"

    def response(self, flow: http.HTTPFlow) -> None:
        noted = peek(flow)
        if noted is None:
            return
        if noted.resume is not None:
            _cachestore.resume_done(flow, noted.resume)  # landing follows when the background task ends
            return
        try:
            self._response(flow, noted)
            if self.store is not None:
                _cachepartial.response(flow, noted, self.store, self.config)  # pieces kept, a fill answered
        finally:
            self._land(noted)

    def _response(self, flow: http.HTTPFlow, noted: FlowNotes) -> None:
        ex = noted.cache
        if ex is None or flow.response is None or self.store is None:
            return
        if ex.state not in (State.FORWARD, State.TEE, State.BUFFER, State.PASS):
            return
        now = time.time()
        resp = to_response(flow.response)
        for key in cache.invalidated_keys(ex.request, resp):  # §4.4
            self.store.purge(key)
        held = noted.held
        body = held.body if held is not None else None
        match ex.response(resp, failed=noted.error is not None, now=now, config=self.config):
            case Action.SERVE_REFRESHED:
                _cachestore.freshen(self.store, ex, self.config)
                assert ex.after_304 is not None and ex.after_304.serve is not None and body is not None
                status = ex.revalidated_status()
                _cacheserve.serve(flow, ex, ex.after_304.serve, body, status, now, self.sidecar)
            case Action.FRESHEN_304:
                _cachestore.freshen(self.store, ex, self.config)
                close(body)
                _cachestore.after_304(flow, self.store, ex)
            case Action.SERVE_STALE:
                assert ex.stale is not None and body is not None
                # The response phase: the sidecar would need a request of its own, so a body on disk is read whole.
                meta = ex.candidates[0][1]
                _cacheserve.serve(flow, ex, meta, body, ex.stale, now, self.sidecar, stream=False)
            case _:  # STORE
                close(body)
                if ex.freshens_head(resp):
                    _cachestore.freshen_from_head(self.store, ex, resp, now, self.config)
                stored = _cachestore.store_response(flow, ex, held, self.store, resp, now, self.config)
                if not flow.response.stream:
                    flow.response.headers["Cache-Status"] = cache.render(ex.forward_status(stored=stored))
                    if stored and resp.status == 200:
                        flow.response.headers["Accept-Ranges"] = (
                            "bytes"  # as its hits will say (RFC 9110 §14.3)
                        )

    def _land(self, noted: FlowNotes) -> None:
        """The leader is done: followers serve what it stored, or go to the origin themselves."""
        held, ex = noted.held, noted.cache
        if held is None or held.flight is None or ex is None:
            return
        if held.lock_fd is not None and self.locks is not None:
            self.locks.unlock(ex.primary, held.lock_fd)
            held.lock_fd = None
        flight, held.flight = held.flight, None
        expected = flight.meta.body_length if flight.meta is not None else -1
        complete = held.writer is not None and ex.complete and held.writer.written == expected
        self.flights.land(ex.primary, flight, ex.stored, body_complete=complete)
        if self.fleet is not None:  # issue 20: the fleet's fetch lock goes once this node's upload is done
            self.fleet.landed(ex.primary)

    def error(self, flow: http.HTTPFlow) -> None:
        noted = peek(flow)
        if noted is None:
            return
        if noted.resume is not None:
            _cachestore.resume_done(flow, noted.resume)
            return
        ex, held = noted.cache, noted.held
        if ex is None:
            return
        flight = held.flight if held is not None else None
        writer = held.writer if held is not None else None
        action = ex.error(
            client_left=flow.error is not None and "client disconnected" in flow.error.msg.lower(),
            followers=flight.followers if flight is not None else 0,
            written=writer.written if writer is not None else 0,
            writing=writer is not None and writer.failure is None,
            meta=flight.meta if flight is not None else None,
        )
        if held is not None:
            close(held.body)
        if action is Action.RESUME:
            self._resume_for_followers(flow, noted)
            return  # the writer stays open for the continuation; the flight lands when it ends
        if writer is not None:
            writer.abort()  # a truncated body is never stored
        self._land(noted)

    def _resume_for_followers(self, flow: http.HTTPFlow, noted: FlowNotes) -> None:
        """The leader's client went away mid-body while followers read along: fetch the rest of the body with a
        Range request of our own (RFC 9110 §14.2, guarded by If-Range §13.1.5) into the same temp file."""
        ex, held = noted.cache, noted.held
        assert ex is not None and held is not None and held.flight is not None
        background = background_copy(flow)
        background.request.headers["Range"] = f"bytes={ex.resume_from}-"
        background.request.headers["If-Range"] = ex.if_range
        notes(background).resume = noted
        log.info(
            "%s: client left at %d bytes; fetching the rest for %d follower(s)",
            ex.request.url,
            ex.resume_from,
            held.flight.followers,
        )
        self._spawn(background, lambda: self._land(noted))


def _fleet(noted: FlowNotes) -> Fleet:
    """Where the flow stands with the shared tier (only asked when there is one)."""
    if not noted.shared_tried:
        return Fleet.TRY
    return Fleet.COPIED if noted.shared_hit else Fleet.TRIED


def _held(noted: FlowNotes) -> Held:
    """The flow's Held record, made on first use (a hit never needs one)."""
    held = noted.held
    if held is None:
        held = noted.held = Held()
    return held


addons = [Cache()]
