"""Partial entries at work (RFC 9111 §3.3-3.4): a range answered from stored pieces, a whole GET narrowed to
the missing span, origin 206s kept as pieces, and a fill answered from the completed entry.

partial.py decides from records; this module does it against the store, for the cache addon, which only
reads the flow into these inputs and applies what comes back (a response to make, request fields to set, a
Capture to feed as the body streams). No mitmproxy here.
"""

from __future__ import annotations

import enum
import logging
import secrets
from dataclasses import dataclass, field, replace

from fwdproxy import store as storage
from fwdproxy.cache import partial
from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.exchange import Exchange
from fwdproxy.cache.states import Action, Role
from fwdproxy.cache.status import CacheStatus, Fwd
from fwdproxy.http_model import Headers, Request, Response, StoredResponse
from fwdproxy.ranges import Partial
from fwdproxy.store.pieces import whole_body

log = logging.getLogger("fwdproxy.cache")


@dataclass(slots=True)
class Capture:
    """The bytes of an origin 206 streaming through, kept for the partial entry (fed chunk by chunk)."""

    size: int
    """The bytes its Content-Range announced; more than that and nothing is kept."""
    data: bytearray = field(default_factory=bytearray)
    spoilt: bool = False

    def feed(self, chunk: bytes) -> None:
        if self.spoilt:
            return
        self.data += chunk
        if len(self.data) > self.size:
            self.spoilt, self.data = True, bytearray()

    def body(self) -> bytes | None:
        """What came, or None when it ran over its announced size."""
        return None if self.spoilt else bytes(self.data)


@dataclass(frozen=True, slots=True)
class Made:
    """A response the cache makes in place of the origin's (its Cache-Status is ``cache_status``)."""

    status: int
    reason: str
    headers: Headers
    content: bytes
    cache_status: CacheStatus


@dataclass(frozen=True, slots=True)
class Forward:
    """What ``before_forward`` gives the flow: a response made from pieces, or request fields to set."""

    made: Made | None = None
    fields: tuple[tuple[str, str], ...] = ()


class Head(enum.Enum):
    AS_IS = "as-is"
    HOLD = "hold"
    """Hold the body whole (a fill's 206: its client gets the assembled response, never this 206)."""


@dataclass(frozen=True, slots=True)
class Finished:
    """What ``finish`` gives the flow: a response made in place of the origin's, a 502 with this text, or
    the Cache-Status to set on the origin's response."""

    made: Made | None = None
    error: str | None = None
    cache_status: CacheStatus | None = None


@dataclass(frozen=True, slots=True)
class Merged:
    """The pieces once a 206 was merged in."""

    meta: StoredResponse
    """The partial record, with its pieces (all of the representation when ``whole`` is set)."""
    body: bytes
    whole: StoredResponse | None
    """The complete entry the pieces became (stored under the primary key's variant), or None."""


def heeds(ex: Exchange, status: int) -> bool:
    """Whether ``head`` or ``finish`` may have anything to do with the origin's response of this status (the
    addon reads the flow's head for them only then)."""
    if ex.role is Role.WHOLE:
        return ex.stored and status == 200
    plan = ex.partial.plan if ex.partial is not None else None
    return plan in (partial.Plan.CAPTURE, partial.Plan.FILL) and status in (200, 206, 416)


def before_forward(ex: Exchange, store: storage.TieredStore, config: CacheConfig, *, now: float) -> Forward:
    """A GET miss about to go to the origin: answer it from the URL's pieces, narrow a whole GET to the
    missing span, or let it go as it is (its 206 may become a piece)."""
    if not ex.wants_pieces():
        return Forward()
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
            fields, content = partial.answer(
                meta, body, found.ranges, now=now, boundary=secrets.token_hex(16)
            )
            return Forward(made=Made(206, "Partial Content", fields, content, ex.status()))
        case Action.FILL:
            assert found.span is not None
            span = f"bytes={found.span.start}-{found.span.end}"
            return Forward(fields=(("Range", span), ("If-Range", found.if_range)))  # §13.1.5: changed, whole
        case _:
            return Forward()


def head(ex: Exchange, resp: Response, *, streamed: bool) -> Head | Capture:
    """The origin's head: a FILL's 206 is held whole; a fitting 206 to a client's range streaming through is
    copied into a Capture as it goes (a held body is read by ``finish``)."""
    found = ex.partial
    if found is None or resp.status != 206:
        return Head.AS_IS
    if found.plan is partial.Plan.FILL:
        return Head.HOLD
    if found.plan is not partial.Plan.CAPTURE or not streamed:
        return Head.AS_IS
    got = partial.piece_of(ex.request, resp)
    return Head.AS_IS if got is None else Capture(got[0].size)


def finish(
    ex: Exchange,
    resp: Response,
    store: storage.TieredStore,
    config: CacheConfig,
    *,
    raw: bytes | None,
    capture: Capture | None,
    streamed: bool,
    now: float,
    response_time: float,
) -> Finished:
    """The origin's whole response (``raw`` when held, else what ``capture`` copied): keep a fitting 206 as a
    piece, and answer a FILL from the completed entry."""
    found = ex.partial
    if ex.role is Role.WHOLE and ex.stored and resp.status == 200:
        # Our whole fetch for ranges stored the object: its pieces are not needed any more.
        store.delete(storage.partial_key(ex.primary))
        return Finished()
    if found is None or found.plan not in (partial.Plan.CAPTURE, partial.Plan.FILL):
        return Finished()
    key = storage.partial_key(ex.primary)
    if resp.status == 200:
        store.delete(key)  # a whole response: the pieces are of an older representation, or not needed
        return Finished()
    data = capture.body() if capture is not None else raw
    if found.plan is partial.Plan.CAPTURE:
        if resp.status == 206:
            _keep(ex, resp, data, store, config, ex.request, response_time=response_time)
            if ex.stored and not streamed:  # a held body: its head has not left yet (RFC 9211 stored)
                return Finished(cache_status=ex.forward_status(stored=True))
        return Finished()
    # FILL: the client never gets our 206 as it came: it asked the whole response, or a wider range.
    assert found.span is not None
    if resp.status == 206:
        span = f"bytes={found.span.start}-{found.span.end}"
        asked = Request("GET", ex.request.url, ex.request.headers.with_("Range", span))
        want, validator = found.want, found.if_range
        merged = _keep(ex, resp, data, store, config, asked, response_time=response_time, if_range=validator)
        if not _answers(merged, want):
            merged = _completed_meanwhile(store, ex, validator)
        if merged is not None and _answers(merged, want):
            return Finished(made=_fill_answer(merged, want, ex.stored, now))
        why = "the origin's answer to the range for the rest did not fit the stored pieces"
    elif resp.status == 416:
        why = "the origin's object no longer matches the stored pieces"
    else:
        return Finished()  # the origin's error, as it came
    store.delete(key)
    log.info("%s: %s; pieces dropped", ex.request.url, why)
    return Finished(error=f"{ex.request.url}: {why}; retry")


def _fill_answer(merged: Merged, want: Partial | None, stored: bool, now: float) -> Made:
    status = CacheStatus(fwd=Fwd.PARTIAL, fwd_status=206, stored=stored)
    if want is None:
        assert merged.whole is not None
        return Made(200, "OK", partial.fill_headers(merged.whole, now=now), merged.body, status)
    fields, content = partial.answer(merged.meta, merged.body, want, now=now, boundary=secrets.token_hex(16))
    return Made(206, "Partial Content", fields, content, status)


def _keep(
    ex: Exchange,
    resp: Response,
    data: bytes | None,
    store: storage.TieredStore,
    config: CacheConfig,
    asked: Request,
    *,
    response_time: float,
    if_range: str = "",
) -> Merged | None:
    """Merge the 206 (its body ``data``) into the partial entry when it may be kept (§3.3-3.4): stored as
    pieces, or as a complete entry once they make the whole response; None when it is not kept. A FILL's 206
    (``if_range`` given) that may not be stored (the request's no-store or credentials, the response's
    no-store) is still merged in memory, to answer its client, and nothing is stored."""
    got = partial.piece_of(asked, resp)
    keep = partial.may_keep(asked, resp, config)
    if got is None or not (keep or if_range):
        return None
    if if_range and partial.strong_validator(resp.headers) != if_range:
        return None  # the origin ignored our If-Range and sent a piece of another representation
    piece, total = got
    if data is None or len(data) != piece.size:
        return None  # cut short, or longer than it said: never stored
    new = partial.record(
        asked, resp, total, request_time=ex.request_time, response_time=response_time, config=config
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
