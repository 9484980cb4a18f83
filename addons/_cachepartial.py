"""Partial entries in the cache addon (RFC 9111 §3.3-3.4): ranges answered from stored pieces, a whole GET that
fetches only the missing span, and origin 206s kept as pieces. fwdproxy/cache/partial.py decides; these do
(not an addon)."""

import logging
import secrets
import time
from dataclasses import dataclass, field, replace

from mitmproxy import http

from fwdproxy import cache
from fwdproxy import store as storage
from fwdproxy.cache import CacheConfig, CacheStatus, Fwd, partial
from fwdproxy.cache.exchange import Exchange
from fwdproxy.cache.states import Action, Role
from fwdproxy.http_model import Request, StoredResponse
from fwdproxy.ranges import Partial
from fwdproxy.store.pieces import whole_body
from fwdproxy_addons import _respond
from fwdproxy_addons._cachehttp import make_response, to_response
from fwdproxy_addons._notes import FlowNotes

log = logging.getLogger("fwdproxy.cache")


@dataclass(slots=True)
class Capture:
    """An origin 206 streaming through while its bytes are kept for the partial entry."""

    size: int
    """The bytes its Content-Range announced; more than that and nothing is kept."""
    data: bytearray = field(default_factory=bytearray)
    spoilt: bool = False


def before_forward(
    flow: http.HTTPFlow, ex: Exchange, store: storage.TieredStore, config: CacheConfig
) -> None:
    """A GET miss about to go to the origin: answer it from the URL's pieces, narrow a whole GET to the
    missing span, or let it go as it is (its 206 may become a piece)."""
    if not ex.wants_pieces():
        return
    now = time.time()
    key = storage.partial_key(ex.primary)
    entry = store.get(key)
    meta = entry.meta if entry is not None and entry.meta.pieces else None
    found = partial.plan(ex.request, meta, now=now, config=config)
    body = None
    if entry is not None:
        if found.plan is partial.Plan.SERVE:
            body = whole_body(entry)  # closes a body file
            if body is None:  # damaged or gone: the pieces are dropped and the range goes forward
                store.delete(key)
                found = partial.Decision(partial.Plan.CAPTURE)
        elif isinstance(entry.body, storage.BodyFile):
            entry.body.close()  # read again when the origin's bytes arrive
    match ex.pieces(found):
        case Action.SERVE_PIECES:
            assert meta is not None and body is not None and found.ranges is not None
            headers, content = partial.answer(
                meta, body, found.ranges, now=now, boundary=secrets.token_hex(16)
            )
            flow.response = make_response(206, "Partial Content", headers, content, ex.status(), now)
        case Action.FILL:
            assert found.span is not None
            flow.request.headers["Range"] = f"bytes={found.span.start}-{found.span.end}"
            flow.request.headers["If-Range"] = found.if_range  # §13.1.5: a changed object comes whole (200)
        case _:
            pass


def headers(flow: http.HTTPFlow, ex: Exchange, noted: FlowNotes) -> None:
    """The origin's head: a FILL's 206 is held whole (the client gets the assembled 200, never this 206);
    a fitting 206 to a client's range is copied as it streams."""
    found, resp = ex.partial, flow.response
    if found is None or resp is None or resp.status_code != 206:
        return
    if found.plan is partial.Plan.FILL:
        resp.stream = False
        return
    if found.plan is not partial.Plan.CAPTURE or not resp.stream:
        return  # held whole anyway: the response hook reads it
    got = partial.piece_of(ex.request, to_response(resp))
    if got is None:
        return
    capture = noted.pieces = Capture(got[0].size)
    inner = resp.stream

    def copy(chunk: bytes) -> bytes:
        if not capture.spoilt:
            capture.data += chunk
            if len(capture.data) > capture.size:
                capture.spoilt, capture.data = True, bytearray()
        return inner(chunk) if callable(inner) else chunk  # type: ignore[return-value]

    resp.stream = copy


def response(flow: http.HTTPFlow, noted: FlowNotes, store: storage.TieredStore, config: CacheConfig) -> None:
    """The origin's whole response: keep a fitting 206 as a piece, and answer a FILL from the completed entry."""
    ex, resp = noted.cache, flow.response
    found = ex.partial if ex is not None else None
    if (
        ex is not None
        and ex.role is Role.WHOLE
        and ex.stored
        and resp is not None
        and resp.status_code == 200
    ):
        # Our whole fetch for ranges stored the object: its pieces are not needed any more.
        store.delete(storage.partial_key(ex.primary))
        return
    if (
        ex is None
        or found is None
        or resp is None
        or found.plan not in (partial.Plan.CAPTURE, partial.Plan.FILL)
    ):
        return
    key = storage.partial_key(ex.primary)
    if resp.status_code == 200:
        store.delete(key)  # a whole response: the pieces are of an older representation, or not needed
        return
    if found.plan is partial.Plan.CAPTURE:
        if resp.status_code == 206:
            _keep(flow, ex, noted, store, config, ex.request)
            if ex.stored and not resp.stream:  # a held body: its head has not left yet (RFC 9211 stored)
                resp.headers["Cache-Status"] = cache.render(ex.forward_status(stored=True))
        return
    # FILL: the client never gets our 206 as it came: it asked the whole response, or a wider range.
    assert found.span is not None
    if resp.status_code == 206:
        asked = Request(
            "GET",
            ex.request.url,
            ex.request.headers.with_("Range", f"bytes={found.span.start}-{found.span.end}"),
        )
        want = found.want
        merged = _keep(flow, ex, noted, store, config, asked, if_range=found.if_range)
        if not _answers(merged, want):
            merged = _completed_meanwhile(store, ex, found.if_range)
        if merged is not None and _answers(merged, want):
            now = time.time()
            status = CacheStatus(fwd=Fwd.PARTIAL, fwd_status=206, stored=ex.stored)
            if want is None:
                assert merged.whole is not None
                fields = partial.fill_headers(merged.whole, now=now)
                flow.response = make_response(200, "OK", fields, merged.body, status, now)
            else:
                fields, content = partial.answer(
                    merged.meta, merged.body, want, now=now, boundary=secrets.token_hex(16)
                )
                flow.response = make_response(206, "Partial Content", fields, content, status, now)
            return
        why = "the origin's answer to the range for the rest did not fit the stored pieces"
    elif resp.status_code == 416:
        why = "the origin's object no longer matches the stored pieces"
    else:
        return  # the origin's error, as it came
    store.delete(key)
    log.info("%s: %s; pieces dropped", ex.request.url, why)
    flow.response = _respond.text(502, f"{ex.request.url}: {why}; retry")


@dataclass(frozen=True, slots=True)
class Merged:
    """The pieces once a 206 was merged in."""

    meta: StoredResponse
    """The partial record, with its pieces (all of the representation when ``whole`` is set)."""
    body: bytes
    whole: StoredResponse | None
    """The complete entry the pieces became (stored under the primary key's variant), or None."""


def _keep(
    flow: http.HTTPFlow,
    ex: Exchange,
    noted: FlowNotes,
    store: storage.TieredStore,
    config: CacheConfig,
    asked: Request,
    *,
    if_range: str = "",
) -> Merged | None:
    """Merge the 206 into the partial entry when it may be kept (§3.3-3.4): stored as pieces, or as a
    complete entry once they make the whole response; None when it is not kept. A FILL's 206 (``if_range``
    given) that may not be stored (the request's no-store or credentials, the response's no-store) is still
    merged in memory, to answer its client, and nothing is stored."""
    resp = flow.response
    assert resp is not None
    record = to_response(resp)
    got = partial.piece_of(asked, record)
    keep = partial.may_keep(asked, record, config)
    if got is None or not (keep or if_range):
        return None
    if if_range and partial.strong_validator(record.headers) != if_range:
        return None  # the origin ignored our If-Range and sent a piece of another representation
    capture = noted.pieces
    data = (
        (None if capture.spoilt else bytes(capture.data))
        if isinstance(capture, Capture)
        else resp.raw_content
    )
    piece, total = got
    if data is None or len(data) != piece.size:
        return None  # cut short, or longer than it said: never stored
    now = time.time()
    new = partial.record(
        asked,
        record,
        total,
        request_time=ex.request_time,
        response_time=resp.timestamp_start or now,
        config=config,
    )
    key = storage.partial_key(ex.primary)
    entry = store.get(key)
    old_body = whole_body(entry) if entry is not None else None
    old = entry.meta if entry is not None and old_body is not None and entry.meta.pieces else None
    pieces, body = partial.merge(old, old_body or b"", new, piece, data)
    meta = replace(new, pieces=pieces, body_length=len(body))
    if not keep:
        return Merged(
            meta, body, partial.complete(meta, config) if partial.is_complete(pieces, total) else None
        )
    if not partial.is_complete(pieces, total):
        ex.stored = store.put(key, meta, body) is storage.Outcome.STORED
        return Merged(meta, body, None)
    whole = partial.complete(meta, config)
    ex.stored = store.put(storage.variant_key(ex.primary, ""), whole, body) is storage.Outcome.STORED
    store.delete(key)
    return Merged(meta, body, whole)


def _answers(merged: Merged | None, want: Partial | None) -> bool:
    """Whether the merged pieces answer a FILL: all of it (``want`` None), or the client's ranges."""
    if merged is None:
        return False
    if want is None:
        return merged.whole is not None
    return all(partial.covers(merged.meta.pieces, r) for r in want.ranges)


def _completed_meanwhile(store: storage.TieredStore, ex: Exchange, validator: str) -> Merged | None:
    """The complete entry other pieces made while this fill was on its way (the partial entry is gone then),
    when it is of the same representation: the fill's client is answered from it."""
    entry = store.get(storage.variant_key(ex.primary, ""))
    if entry is None:
        return None
    body = whole_body(entry)
    meta = entry.meta
    if body is None or meta.status != 200 or partial.strong_validator(meta.headers) != validator:
        return None
    as_pieces = replace(meta, pieces=((0, meta.body_length - 1),), full_length=meta.body_length)
    return Merged(as_pieces, body, meta)
