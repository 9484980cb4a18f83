"""The shared HTTP cache: turns mitmproxy's flows into exchanges (fwdproxy/cache/exchange.py) and the actions
into flow changes; the store, flights and sidecar behind them are the core's CacheService."""

import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.addons.clientplayback import ReplayHandler

from fwdproxy import cache, unkeyed
from fwdproxy.cache import CacheConfig, CacheStatus, piecing
from fwdproxy.cache.answer import answer
from fwdproxy.cache.exchange import Exchange
from fwdproxy.cache.service import CacheService, held, whole_content
from fwdproxy.cache.states import Action, State
from fwdproxy.http_model import StoredResponse
from fwdproxy.store import BodyFile, TieredStore
from fwdproxy_addons import _flowinfo, _mitm, _respond
from fwdproxy_addons._cachehttp import content_length, make_response, to_request, to_response
from fwdproxy_addons._mitm import wideread as _wideread
from fwdproxy_addons._notes import FlowNotes, notes, peek
from fwdproxy_addons._settings import SettingsSource

_WAITING = (State.SERVED, State.FORWARD)
_CONDITIONALS = ("If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range", "Range")


class Cache:
    """A shared cache (RFC 9111): fresh hits answered here, stale entries revalidated, responses stored."""

    def __init__(self, source: SettingsSource | None = None) -> None:
        self.source = source or SettingsSource()
        self.service = CacheService(self.source.given)

    @property
    def store(self) -> TieredStore | None:
        return self.service.store

    @property
    def config(self) -> CacheConfig:
        return self.service.config

    @property
    def opened(self) -> tuple[object, ...] | None:
        return self.service.opened

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(
            loader,
            *("fwd_cache_dir", "fwd_memory_cache_size", "fwd_disk_cache_size", "fwd_max_object_size"),
            *(
                "fwd_memory_object_max",
                "fwd_stream_threshold",
                "fwd_negative_ttl",
                "fwd_serve_stale_on_error",
            ),
            *("fwd_offline", "fwd_range_fetch_whole_below", "fwd_preset", "fwd_config", "fwd_shared_cache"),
            *("fwd_shared_object_max", "fwd_shared_timeout", "fwd_shared_cache_password_file"),
            "fwd_shared_cache_ca",
        )

    def configure(self, updated: set[str]) -> None:
        try:
            self.service.configure(self.source.current(), self.source.resolved().rules, dict(os.environ))
        except (ValueError, OSError) as e:
            raise exceptions.OptionsError(f"cache: {e}") from e

    async def check_store(self) -> bool | None:
        """Check the store's database (SQLite's quick_check); None when no store is open."""
        return await self.service.check_store()

    async def running(self) -> None:
        sidecar = await self.service.start()
        _mitm.install()  # the wide reads (addons/_mitm/wideread.py), also when this addon is loaded alone
        _wideread.widen(("127.0.0.1", sidecar.port))  # our own loopback server: read it in wide gulps

    async def done(self) -> None:
        if self.service.sidecar is not None:
            _wideread.narrow(("127.0.0.1", self.service.sidecar.port))
        await self.service.close()

    # -- request side: drive the exchange ------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if flow.response is not None or self.service.store is None:
            return None
        noted = notes(flow)
        if noted.resume is not None:
            return None
        ex = self._lookup(flow, noted, collapse=True, may_check=True)
        if ex.state is State.FORWARD:
            self._pieces_forward(flow, ex)  # RFC 9111 §3.3 pieces
        if ex.state in _WAITING:
            return None  # answered, or on its way to the origin: no coroutine for the common case (a hit)
        return self._wait_for(flow, noted, ex)

    async def _wait_for(self, flow: http.HTTPFlow, noted: FlowNotes, ex: Exchange) -> None:
        """The exchange has to wait: for a stored body's checksum check, for the fleet's shared tier, or for
        another request in flight for the key (follow it, or wait and look again). Bounded: one check, one
        look in the shared tier, then at most one wait for a flight."""
        collapse = may_check = True
        while ex.state not in _WAITING:
            if ex.state is State.SHARED:
                if (token := await self.service.from_shared(ex, noted)) is not None:
                    return _repoint(flow, self.service, token)
            elif ex.state is State.CHECK:
                await self.service.wait(ex, noted)
                may_check = False
            else:  # FOLLOW: a leader here, or another process
                if (leader := await self.service.wait(ex, noted)) is not None:
                    got = await self.service.follow(ex, leader)
                    if isinstance(got, str):
                        return _repoint(flow, self.service, got)
                    if got is not None:
                        entry, now = got
                        status = ex.collapsed_status(entry.meta.status)
                        return self._serve(flow, ex, entry.meta, entry.body, status, now)
                collapse = False  # the leader's response was not for us: ask the origin ourselves
            ex = self._lookup(flow, noted, collapse=collapse, may_check=may_check)
        if ex.state is State.FORWARD:
            self._pieces_forward(flow, ex)  # RFC 9111 §3.3 pieces

    def _pieces_forward(self, flow: http.HTTPFlow, ex: Exchange) -> None:
        """A miss on its way to the origin: answered from the URL's pieces, or narrowed to the missing span."""
        if (store := self.service.store) is None:
            return
        now = time.time()
        got = piecing.before_forward(ex, store, self.service.config, now=now)
        if (made := got.made) is not None:
            flow.response = make_response(
                made.status, made.reason, made.headers, made.content, made.cache_status, now
            )
        for name, value in got.fields:
            flow.request.headers[name] = value

    def _lookup(self, flow: http.HTTPFlow, noted: FlowNotes, *, collapse: bool, may_check: bool) -> Exchange:
        """§4: a new exchange for the flow, driven as far as it goes without waiting; the state it stopped
        in says what to wait for."""
        now = time.time()
        req = to_request(flow.request, _flowinfo.note_request(flow)[0])  # the URL worked out once per flow
        ex = noted.cache = Exchange(req, now)
        bypass = None
        if req.method in ("GET", "HEAD"):
            body = unkeyed.has_body(req.headers, flow.request.raw_content)  # raw_content: None while streamed
            bypass = unkeyed.bypass(req.headers, has_body=body)
        action, entry = self.service.look(
            ex,
            noted,
            bypass=bypass,
            replay=bool(flow.is_replay),
            collapse=collapse,
            may_check=may_check,
            now=now,
        )
        if action is Action.SERVE or action is Action.SERVE_AND_REVALIDATE:
            assert entry is not None
            self._serve(flow, ex, entry.meta, entry.body, ex.status(), now)
            if action is Action.SERVE_AND_REVALIDATE and self.service.revalidation(ex.primary):
                # RFC 5861 §3: one background revalidation per key, through the whole chain like any request.
                background = _background_copy(flow)
                notes(background).background = True
                self._spawn(background, lambda: self.service.revalidated(ex.primary))
        elif action is Action.REJECT:  # §5.2.1.7 only-if-cached, or --offline
            flow.response = _respond.text(504, f"{ex.request.url} is not in the cache ({ex.reason})")
            flow.response.headers["Cache-Status"] = cache.render(ex.reject_status())
        elif action is Action.FORWARD_VALIDATING:
            if (cond := self.service.validators(ex, noted)) is not None:  # §4.3.1: ask with validators
                for name in ("If-None-Match", "If-Modified-Since"):
                    if (value := cond.get(name)) is not None and value != req.headers.get(name):
                        flow.request.headers[name] = value
        elif action is Action.FETCH_WHOLE and (lead := self.service.lead_whole(ex, noted)) is not None:
            # Fetch the whole object once, in a flow of our own leading the key's flight; this range (and every
            # one that arrives meanwhile) is answered from it (RFC 9111 §3.4).
            whole = _background_copy(flow)
            notes(whole).whole = lead
            self._spawn(whole, lambda: self.service.whole_ended(ex.primary, lead, notes(whole)))
        return ex

    def _serve(
        self,
        flow: http.HTTPFlow,
        ex: Exchange,
        meta: StoredResponse,
        body: bytes | BodyFile,
        status: CacheStatus,
        now: float,
        *,
        stream: bool = True,
    ) -> None:
        """Answer from a stored entry: in memory, or through the sidecar when the body is a file (``stream``:
        only before the flow has gone to the origin)."""
        ans = answer(ex.request, meta, body, now)
        if stream and (token := self.service.offer(ex, ans, status)) is not None:
            return _repoint(flow, self.service, token)
        stable = ans.stable and ans.parts is None
        content = whole_content(ans)  # no sidecar (tests), or too late for it: read it
        flow.response = make_response(
            ans.status, ans.reason, ans.headers, content, status, now, stable=stable
        )

    def _spawn(self, background: http.HTTPFlow, finally_: Callable[[], None]) -> None:
        """Run a flow of our own through the whole chain to the origin (mitmproxy's replay machinery)."""

        async def run() -> None:
            try:
                await ReplayHandler(background, ctx.options).replay()
            finally:
                finally_()

        self.service.keep(run())

    # -- response side: the origin's answer into the exchange ---------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        noted, resp = peek(flow), flow.response
        if noted is None or resp is None:
            return
        if noted.resume is not None:  # our continuation for a leader whose client left
            ex, mine = noted.resume.cache, noted.resume.held
            assert ex is not None and mine is not None
            resp.stream = self.service.resuming(ex, mine, to_response(resp)) or True
            return
        if noted.sidecar:
            resp.stream = True  # a big body from disk or a growing temp file: never held in memory
            return
        ex = noted.cache
        if ex is None or ex.state is not State.FORWARD or self.service.store is None:
            return
        mine, length, now = held(noted), content_length(resp), time.time()
        action, copy = self.service.head(
            ex,
            mine,
            to_response(resp),
            length=length,
            failed=noted.error is not None,
            now=now,
            response_time=resp.timestamp_start or now,
        )
        if action is Action.ABANDON:
            return flow.kill()  # our whole fetch for ranges, too big: its followers go to the origin
        if copy is not None:
            resp.stream = copy
        elif ex.big:
            resp.stream = True  # pass through without holding the body
        if piecing.heeds(ex, resp.status_code):  # a 206 held for a fill, or copied as a piece
            got = piecing.head(ex, to_response(resp), streamed=bool(resp.stream))
            if got is piecing.Head.HOLD:
                resp.stream = False
            elif isinstance(got, piecing.Capture):
                capture, inner = got, resp.stream
                noted.pieces = capture

                def copy(chunk: bytes) -> bytes:
                    capture.feed(chunk)
                    return inner(chunk) if callable(inner) else chunk  # type: ignore[return-value]

                resp.stream = copy
        if resp.stream:
            # A streamed body's headers leave now, before the response hook: say what the cache does here.
            writing = mine.writer is not None
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
            return self._resumed(flow, noted.resume)  # landing follows when the background task ends
        ex = noted.cache
        try:
            if ex is not None and ex.state in (State.FORWARD, State.TEE, State.BUFFER, State.PASS):
                self._response(flow, noted, ex)
            if ex is not None and flow.response is not None and piecing.heeds(ex, flow.response.status_code):
                self._pieces_response(flow, noted, ex, flow.response)  # pieces kept, a fill answered
        finally:
            if ex is not None and noted.held is not None:
                self.service.land(ex, noted.held)

    def _response(self, flow: http.HTTPFlow, noted: FlowNotes, ex: Exchange) -> None:
        if flow.response is None or self.service.store is None:
            return
        now, raw = time.time(), flow.response.raw_content
        resp, mine = to_response(flow.response), noted.held
        body = mine.body if mine is not None else None
        action = self.service.respond(
            ex,
            mine,
            resp,
            raw=raw,
            expected=content_length(flow.response),
            failed=noted.error is not None,
            now=now,
            response_time=flow.response.timestamp_start or now,
        )
        after = ex.after_304
        if action is Action.SERVE_REFRESHED:
            assert after is not None and after.serve is not None and body is not None
            self._serve(flow, ex, after.serve, body, ex.revalidated_status(), now)
        elif action is Action.FRESHEN_304 and after is not None and after.action is cache.After304.RETRY:
            flow.response = _respond.text(
                502, f"{ex.request.url}: the origin's 304 matches no stored response; retry"
            )
        elif action is Action.FRESHEN_304:
            flow.response.headers["Cache-Status"] = cache.render(ex.revalidated_status())
        elif action is Action.SERVE_STALE:
            assert ex.stale is not None and body is not None
            # The response phase: the sidecar would need a request of its own, so a body on disk is read whole.
            self._serve(flow, ex, ex.candidates[0][1], body, ex.stale, now, stream=False)
        elif not flow.response.stream:  # STORE
            flow.response.headers["Cache-Status"] = cache.render(ex.forward_status(stored=ex.stored))
            if ex.stored and resp.status == 200:
                flow.response.headers["Accept-Ranges"] = "bytes"  # as its hits will say (RFC 9110 §14.3)

    def _pieces_response(
        self, flow: http.HTTPFlow, noted: FlowNotes, ex: Exchange, resp: http.Response
    ) -> None:
        if (store := self.service.store) is None:
            return
        now = time.time()
        done = piecing.finish(
            ex,
            to_response(resp),
            store,
            self.service.config,
            raw=resp.raw_content,
            capture=noted.pieces,
            streamed=bool(resp.stream),
            now=now,
            response_time=resp.timestamp_start or now,
        )
        if (made := done.made) is not None:
            flow.response = make_response(
                made.status, made.reason, made.headers, made.content, made.cache_status, now
            )
        elif done.error is not None:
            flow.response = _respond.text(502, done.error)
        elif done.cache_status is not None:
            resp.headers["Cache-Status"] = cache.render(done.cache_status)

    def _resumed(self, flow: http.HTTPFlow, leader: FlowNotes) -> None:
        assert leader.cache is not None and leader.held is not None
        self.service.resumed(leader.cache, leader.held, ok=flow.error is None)

    def error(self, flow: http.HTTPFlow) -> None:
        noted = peek(flow)
        if noted is None:
            return
        if noted.resume is not None:
            return self._resumed(flow, noted.resume)
        if (ex := noted.cache) is None:
            return
        left = flow.error is not None and "client disconnected" in flow.error.msg.lower()
        if self.service.failed(ex, noted.held, client_left=left) is Action.RESUME:
            # The leader's client went away mid-body while followers read along: fetch the rest of the body
            # with a Range request of our own (RFC 9110 §14.2, guarded by If-Range §13.1.5) into the same file.
            mine = noted.held
            assert mine is not None
            background = _background_copy(flow)
            background.request.headers["Range"] = f"bytes={ex.resume_from}-"
            background.request.headers["If-Range"] = ex.if_range
            notes(background).resume = noted
            self._spawn(background, lambda: self.service.land(ex, mine))


def _repoint(flow: http.HTTPFlow, service: CacheService, token: str) -> None:
    """Send the flow to the sidecar, which streams the offered body like an origin would (mitmproxy-notes §4)."""
    assert service.sidecar is not None
    port = service.sidecar.port
    flow.request.scheme, flow.request.host, flow.request.port = "http", "127.0.0.1", port
    flow.request.path = "/" + token
    flow.server_conn = connection.Server(address=("127.0.0.1", port))
    notes(flow).sidecar = True


def _background_copy(flow: http.HTTPFlow) -> http.HTTPFlow:
    """A new flow for the same request, without the client's conditionals, made by the proxy itself."""
    background = http.HTTPFlow(
        flow.client_conn, connection.Server(address=(flow.request.host, flow.request.port))
    )
    background.request = flow.request.copy()
    for name in _CONDITIONALS:
        background.request.headers.pop(name, None)
    background.is_replay = "request"  # addons/access.py: not a client's request
    return background


addons = [Cache()]
