"""The shared HTTP cache: adapts mitmproxy's hooks to the RFC 9111 policy in fwdproxy.cache and the store."""

# No `from __future__ import annotations` here: mitmdump -s executes this file outside sys.modules, where a
# dataclass with string annotations cannot be built.
import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.addons.clientplayback import ReplayHandler

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons import _respond
from addons._cachehttp import answer, close, content_length, to_request, to_response
from fwdproxy import cache, store
from fwdproxy.cache import After304, CacheConfig, CacheStatus, Fwd, LookupDecision, Verdict
from fwdproxy.config import read_toml
from fwdproxy.http_model import Request, Response, StoredResponse
from fwdproxy.units import parse_duration, parse_size

log = logging.getLogger("fwdproxy.cache")

STATE = "fwd_cache"
"""flow.metadata key of the per-flow CacheFlow record."""
BACKGROUND = "fwd_background"
"""flow.metadata key marking our own background revalidations (RFC 5861 §3)."""


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

    async def done(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.store is not None:
            self.store.close()

    # -- request side ---------------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or self.store is None:
            return
        now = time.time()
        req = to_request(flow.request)
        if req.method not in ("GET", "HEAD"):
            flow.metadata[STATE] = CacheFlow(
                req, LookupDecision(Verdict.FORWARD, fwd=Fwd.METHOD), request_time=now
            )
            if self.config.offline:
                self._gateway_timeout(flow, flow.metadata[STATE], "offline")
            return
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
        match decision.verdict:
            case Verdict.SERVE:
                entry = self.store.get(selected) if selected else None
                if entry is not None:
                    self._serve(flow, state, entry.meta, entry.body, decision.cache_status(), now)
                    return
                state.decision = LookupDecision(Verdict.FORWARD, fwd=Fwd.MISS, detail="entry-vanished")
            case Verdict.STALE_WHILE_REVALIDATE:
                entry = self.store.get(selected) if selected else None
                if entry is not None:
                    self._serve(flow, state, entry.meta, entry.body, decision.cache_status(), now)
                    self._revalidate_later(flow, primary)
                    return
            case Verdict.GATEWAY_TIMEOUT:
                self._gateway_timeout(flow, state, decision.detail or "only-if-cached")
            case Verdict.REVALIDATE:
                self._add_validators(flow, state, listing, selected)
            case Verdict.FORWARD:
                if self.fetch_whole_below and req.method == "GET" and "Range" in flow.request.headers:
                    # Squid's range_offset_limit: fetch the whole object so it is stored, then answer the range
                    # from it (response hook); a server may always ignore Range (RFC 9110 §14.2).
                    state.whole_for_range = True
                    flow.request.headers.pop("Range")
                    flow.request.headers.pop("If-Range", None)

    def _serve(
        self,
        flow: http.HTTPFlow,
        state: CacheFlow,
        meta: StoredResponse,
        body: bytes | store.BodyFile,
        status: CacheStatus,
        now: float,
    ) -> None:
        flow.response = answer(state.request, meta, body, status, now)
        state.served = True

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
        background.metadata[BACKGROUND] = True
        background.is_replay = "request"

        async def run() -> None:
            try:
                await ReplayHandler(background, ctx.options).replay()
            finally:
                self.revalidating.discard(primary)

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- response side --------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state: CacheFlow | None = flow.metadata.get(STATE)
        if state is None or state.served or flow.response is None or self.store is None:
            return
        resp = flow.response
        length = content_length(resp)
        big = length is None or length > self.stream_threshold
        if resp.status_code == 304 or state.request.method != "GET" or self._stale_on_error(flow, state):
            if big and resp.status_code != 304:
                resp.stream = True
            return
        decision = cache.is_storable(state.request, to_response(resp), complete=True, config=self.config)
        if not decision or (length is not None and length > self.max_object):
            if big:
                resp.stream = True  # pass through without holding the body
            return
        state.key = store.variant_key(
            state.primary, cache.secondary_key(to_response(resp).headers, state.request.headers)
        )
        if big:
            writer = self.store.writer(state.key, max_length=self.max_object)
            state.writer = writer

            def tee(chunk: bytes) -> bytes:
                if chunk:
                    writer.write(chunk)
                else:
                    state.complete = True  # mitmproxy-notes §3: the end of the body is signalled by b""
                return chunk

            resp.stream = tee

    def response(self, flow: http.HTTPFlow) -> None:
        state: CacheFlow | None = flow.metadata.get(STATE)
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
        decision = state.decision
        status = CacheStatus(
            fwd=decision.fwd or Fwd.MISS,
            fwd_status=resp.status,
            stored=stored,
            ttl=decision.ttl if decision.stored is not None and not stored else None,
            detail=decision.detail,
        )
        flow.response.headers["Cache-Status"] = cache.render(status)

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
        response_time = flow.response.timestamp_start or now
        meta = StoredResponse(
            url=state.request.url,
            status=resp.status,
            reason=resp.reason,
            headers=cache.storable_headers(resp.headers, response_time=response_time),
            request_time=state.request_time,
            response_time=response_time,
            body_length=length,
            vary_request=cache.vary_request_headers(resp.headers, state.request.headers),
            rule=decision.rule.name if decision.rule else "",
        )
        if state.writer is not None:
            outcome = state.writer.commit(meta)
        else:
            assert raw is not None
            outcome = self.store.put(state.key, meta, raw)
        if outcome is not store.Outcome.STORED:
            log.info("not stored %s: %s", state.request.url, outcome)
        return outcome is store.Outcome.STORED

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
                    self.store.update(key, updated)
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
        state: CacheFlow | None = flow.metadata.get(STATE)
        if state is None:
            return
        if state.writer is not None:
            state.writer.abort()  # a truncated body is never stored
        close(state.body)


addons = [Cache()]
