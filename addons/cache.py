"""The shared HTTP cache: adapts mitmproxy's hooks to the RFC 9111 policy in fwdproxy.cache and the store."""

# No `from __future__ import annotations` here: mitmdump -s executes this file outside sys.modules, where a
# dataclass with string annotations cannot be built.
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from mitmproxy import ctx, exceptions, http

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons import _respond
from fwdproxy import cache, store
from fwdproxy.cache import After304, CacheConfig, CacheStatus, Fwd, LookupDecision, Verdict
from fwdproxy.config import read_toml
from fwdproxy.http_model import Headers, Request, Response, StoredResponse
from fwdproxy.units import parse_duration, parse_size

log = logging.getLogger("fwdproxy.cache")

STATE = "fwd_cache"
"""flow.metadata key of the per-flow CacheFlow record."""


@dataclass(slots=True)
class CacheFlow:
    """What the request hook learnt about one flow, for the response hooks."""

    request: Request
    """The request as the cache saw it (before validators were added)."""
    decision: LookupDecision
    primary: str = ""
    candidates: list[tuple[str, StoredResponse]] = field(default_factory=list)
    """Stored responses our validators were taken from, the selected one first (§4.3.1)."""
    body: bytes | store.BodyFile | None = None
    """The selected stored body, held while revalidating so a 304 can be answered from it."""
    request_time: float = 0.0
    served: bool = False
    """Answered by the cache: the response hooks leave the flow alone."""
    writer: store.TieredWriter | None = None
    key: str = ""
    complete: bool = False
    status: CacheStatus | None = None


def to_request(req: http.Request) -> Request:
    return Request(req.method.upper(), req.url, Headers(tuple(req.headers.items(multi=True))))


def to_response(resp: http.Response) -> Response:
    return Response(resp.status_code, Headers(tuple(resp.headers.items(multi=True))), resp.reason)


def read_body(body: bytes | store.BodyFile) -> bytes:
    if isinstance(body, bytes):
        return body
    with body:
        return body.file.read()


def make_response(
    status: int, reason: str, headers: Headers, body: bytes, cache_status: CacheStatus, now: float
) -> http.Response:
    """A response from stored parts, built without re-encoding the body (mitmproxy-notes §1)."""
    fields = [(k.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for k, v in headers]
    fields.append((b"Cache-Status", cache.render(cache_status).encode()))
    return http.Response(b"HTTP/1.1", status, reason.encode(), http.Headers(fields), body, None, now, now)


class Cache:
    """A shared cache (RFC 9111): fresh hits answered here, stale entries revalidated, responses stored."""

    def __init__(self) -> None:
        self.store: store.TieredStore | None = None
        self.config = CacheConfig()
        self.max_object = 1024**3
        self.stream_threshold = 1024**2

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
        loader.add_option("fwd_preset", Sequence[str], [], "Bundles of cache rules, e.g. ci.")
        loader.add_option("fwd_config", str, "", "fwdproxy TOML file whose [[cache.rule]] tables apply.")

    def configure(self, updated: set[str]) -> None:
        sizes = {"fwd_cache_dir", "fwd_memory_cache_size", "fwd_disk_cache_size", "fwd_memory_object_max"}
        try:
            if updated & {"fwd_negative_ttl", "fwd_preset", "fwd_config"}:
                self.config = CacheConfig(
                    negative_ttl=parse_duration(ctx.options.fwd_negative_ttl), rules=self._rules()
                )
            self.max_object = parse_size(ctx.options.fwd_max_object_size)
            self.stream_threshold = parse_size(ctx.options.fwd_stream_threshold)
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

    def done(self) -> None:
        if self.store is not None:
            self.store.close()

    # -- request side ---------------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or self.store is None:
            return
        now = time.time()
        req = to_request(flow.request)
        if req.method not in ("GET", "HEAD"):
            decision = LookupDecision(Verdict.FORWARD, fwd=Fwd.METHOD)
            flow.metadata[STATE] = CacheFlow(req, decision, request_time=now)
            return
        primary = cache.primary_key(req.method, req.url)
        listing = self.store.variants(primary)
        decision = cache.lookup(req, [meta for _, meta in listing], now=now, config=self.config)
        state = CacheFlow(req, decision, primary, request_time=now)
        flow.metadata[STATE] = state
        selected = self._key_of(listing, decision.stored)
        match decision.verdict:
            case Verdict.SERVE:
                entry = self.store.get(selected) if selected else None
                if entry is not None:
                    self._answer(flow, state, entry.meta, entry.body, decision.cache_status(), now)
                    return
                state.decision = LookupDecision(Verdict.FORWARD, fwd=Fwd.MISS, detail="entry-vanished")
            case Verdict.GATEWAY_TIMEOUT:
                status = decision.cache_status()
                flow.response = _respond.text(
                    504, f"not in cache and {decision.detail or 'offline'}: {req.url}"
                )
                flow.response.headers["Cache-Status"] = cache.render(status)
                state.served = True
            case Verdict.REVALIDATE | Verdict.STALE_WHILE_REVALIDATE:
                self._add_validators(flow, state, listing, selected)
            case Verdict.FORWARD:
                pass

    def _key_of(self, listing: list[tuple[str, StoredResponse]], meta: StoredResponse | None) -> str:
        return next((k for k, m in listing if m is meta), "")

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
        cond = cache.conditional_request_headers(state.request, [m for _, m in state.candidates])
        for name in ("If-None-Match", "If-Modified-Since"):
            value = cond.get(name)
            if value is not None and value != state.request.headers.get(name):
                flow.request.headers[name] = value

    def _answer(
        self,
        flow: http.HTTPFlow,
        state: CacheFlow,
        meta: StoredResponse,
        body: bytes | store.BodyFile,
        status: CacheStatus,
        now: float,
    ) -> None:
        """Answer from a stored response: 304 when the client's own conditional holds (§4.3.2)."""
        if cache.client_conditional_matches(state.request, meta):
            nm = cache.not_modified_response(meta, now=now)
            if isinstance(body, store.BodyFile):
                body.close()
            flow.response = make_response(304, "Not Modified", nm.headers, b"", status, now)
        else:
            headers = cache.served_headers(meta, now=now).with_("Content-Length", str(meta.body_length))
            if state.request.method == "HEAD":
                if isinstance(body, store.BodyFile):
                    body.close()
                content = b""
            else:
                content = read_body(body)
            flow.response = make_response(meta.status, meta.reason, headers, content, status, now)
        state.served = True

    # -- response side --------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state: CacheFlow | None = flow.metadata.get(STATE)
        if state is None or state.served or flow.response is None or self.store is None:
            return
        resp = flow.response
        length = _content_length(resp)
        big = length is None or length > self.stream_threshold
        if resp.status_code == 304 or state.request.method != "GET":
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
        status = state.decision.cache_status(fwd_status=resp.status)
        if resp.status == 304 and state.candidates:
            self._on_304(flow, state, resp, now)
            return
        if state.body is not None and isinstance(state.body, store.BodyFile):
            state.body.close()
        if state.request.method == "HEAD" and resp.status == 200:
            self._freshen_from_head(state, resp, now)
        stored = self._store(flow, state, resp, now)
        flow.response.headers["Cache-Status"] = cache.render(
            CacheStatus(
                fwd=status.fwd, fwd_status=resp.status, stored=stored, ttl=status.ttl, detail=status.detail
            )
        )

    def _store(self, flow: http.HTTPFlow, state: CacheFlow, resp: Response, now: float) -> bool:
        assert self.store is not None and flow.response is not None
        if not state.key:
            return False
        streamed = state.writer is not None
        raw = flow.response.raw_content
        expected = _content_length(flow.response)
        if streamed:
            assert state.writer is not None
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
        keys = {id(m): k for k, m in state.candidates}
        outcome = cache.on_not_modified(
            state.request,
            resp,
            [m for _, m in state.candidates],
            request_time=state.request_time,
            response_time=now,
        )
        for meta in outcome.updated:
            original = next(m for _, m in state.candidates if m.url == meta.url and _same(m, meta, state))
            self.store.update(keys[id(original)], meta)
        status = CacheStatus(
            fwd=state.decision.fwd or Fwd.STALE, fwd_status=304, detail=state.decision.detail
        )
        match outcome.action:
            case After304.SERVE_STORED | After304.SEND_304:
                assert outcome.serve is not None and state.body is not None
                self._answer(flow, state, outcome.serve, state.body, status, now)
            case After304.PASS_THROUGH:
                flow.response.headers["Cache-Status"] = cache.render(status)  # type: ignore[union-attr]
            case After304.RETRY:
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
        if isinstance(state.body, store.BodyFile):
            state.body.close()


def _same(stored: StoredResponse, updated: StoredResponse, state: CacheFlow) -> bool:
    """Whether ``updated`` was freshened from ``stored`` (same variant: same selecting headers)."""
    return stored.vary_request == updated.vary_request and stored.body_length == updated.body_length


def _content_length(resp: http.Response) -> int | None:
    value = resp.headers.get("content-length")
    if value is None or "chunked" in resp.headers.get("transfer-encoding", "").lower():
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 0 else None


addons = [Cache()]
