"""Partial entries (RFC 9111 §3.3-3.4): which 206s are kept as pieces, and what a later request gets from them.

A partial entry is the pieces of one representation, stored under ``store.partial_key(primary)`` (a key that
a lookup's listing never holds, so it is never served as a complete response). Its record is the latest
206's (status 206, its headers minus Content-Range and Content-Length) with ``pieces`` and ``full_length``;
its body is the pieces' bytes concatenated. A request that finds no complete entry asks ``plan``:

    SERVE    a GET whose Range lies inside the pieces, the entry fresh: a 206 from them (``answer``)
    FILL     a whole GET, or a single range that overlaps the pieces without lying inside them: ask the
             origin for the span from the first to the last byte missing (Range + If-Range), ``merge``
             its 206 and answer the whole 200 (``fill_headers``) or the range (``answer``)
    CAPTURE  any other GET with a Range: forward it as it is and keep a fitting 206 (``piece_of``)
    NONE     nothing to do with pieces

Pieces are combined only under one strong validator (§3.4); a 206 with another validator or another length
starts the entry over. Once they cover the whole representation it becomes a complete entry (``complete``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace

from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.directives import parse_http_date
from fwdproxy.cache.freshness import current_age, record_lifetime
from fwdproxy.cache.headers import age_value, storable_headers, without_our_status
from fwdproxy.cache.policy import LookupDecision, Verdict, lookup
from fwdproxy.cache.storability import is_storable
from fwdproxy.http_model import Headers, Request, Response, StoredResponse
from fwdproxy.ranges import ByteRange, Partial, parse_range, partial_body

PIECES_MAX = 128 * 1024**2
"""Representations longer than this are never kept in pieces: merging holds an entry's pieces in memory."""

CONDITIONALS = ("if-none-match", "if-modified-since", "if-match", "if-unmodified-since")
"""A request with one of these is left to the origin (and to complete entries): pieces answer plain ranges."""

_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})")  # RFC 9110 §14.4, digits only

Pieces = tuple[tuple[int, int], ...]


class Plan(enum.Enum):
    """What a request that found no complete entry does with the URL's pieces (see the module doc)."""

    SERVE = "serve"
    FILL = "fill"
    CAPTURE = "capture"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Decision:
    """``plan``'s answer and what its plan needs."""

    plan: Plan
    lookup: LookupDecision | None = None
    """SERVE: the freshness decision about the partial entry (its Cache-Status is a hit)."""
    ranges: Partial | None = None
    """SERVE: the ranges to answer."""
    span: ByteRange | None = None
    """FILL: the bytes to ask the origin for."""
    want: Partial | None = None
    """FILL: the range the client asked (answered with a 206 once merged); None: the whole response."""
    if_range: str = ""
    """FILL: the strong validator the origin's 206 must have (sent as If-Range, RFC 9110 §13.1.5)."""
    had: bool = False
    """The URL has pieces stored (a forward says ``fwd=partial``)."""


def strong_validator(headers: Headers) -> str | None:
    """The validator pieces may be combined under (§3.4): a strong ETag, else a Last-Modified at least one
    second before Date (RFC 9110 §8.8.2.2); None when there is none."""
    etag = (headers.get("etag") or "").strip(" \t")
    if etag:
        ok = len(etag) >= 2 and etag[0] == etag[-1] == '"' and '"' not in etag[1:-1]
        return etag if ok else None  # a weak or malformed tag never combines, whatever else is said
    modified = headers.get("last-modified")
    lm = parse_http_date(modified) if modified else None
    date_value = headers.get("date")
    date = parse_http_date(date_value) if date_value else None
    if modified is None or lm is None or date is None or date - lm < 1:
        return None
    return modified.strip(" \t")


def content_range(value: str | None) -> tuple[ByteRange, int] | None:
    """A 206's single ``Content-Range: bytes first-last/complete`` (RFC 9110 §14.4), or None when it is
    anything else (unsatisfied-range, an unknown length ``*``, a range past the length)."""
    m = _CONTENT_RANGE.fullmatch((value or "").strip(" \t"))
    if m is None:
        return None
    first, last, total = int(m[1]), int(m[2]), int(m[3])
    if first > last or last >= total:
        return None
    return ByteRange(first, last), total


def piece_of(request: Request, resp: Response) -> tuple[ByteRange, int] | None:
    """The piece a 206 holds when it may be kept (§3.3): a single part that is exactly the one range the
    request asked (worked out against the length it announces), with Content-Length agreeing, no Vary, a
    strong validator, and a length within PIECES_MAX. None: never stored. The body's length is the
    caller's to check against the piece's size."""
    if resp.status != 206 or request.method != "GET":
        return None
    headers = resp.headers
    if len(headers.get_all("content-range")) != 1 or "vary" in headers:
        return None
    if (headers.get("content-type") or "").lower().startswith("multipart/"):
        return None  # multipart/byteranges: not stored (§3.3 leaves it to the cache)
    found = content_range(headers.get("content-range"))
    if found is None:
        return None
    piece, total = found
    asked = parse_range(request.headers.get("range"), total)
    if not isinstance(asked, Partial) or asked.ranges != (piece,):
        return None  # not what was asked: the origin misread the Range, or the length changed
    length = headers.get("content-length")
    if length is not None and length.strip() != str(piece.size):
        return None
    if total > PIECES_MAX or strong_validator(headers) is None:
        return None
    return piece, total


def may_keep(request: Request, resp: Response, config: CacheConfig) -> bool:
    """§3.4: whether the whole response these pieces belong to could be stored, judged by the 206's headers."""
    whole = Request("GET", request.url, request.headers.without("range", "if-range"))
    return bool(is_storable(whole, Response(200, resp.headers, "OK"), complete=True, config=config))


def plan(request: Request, stored: StoredResponse | None, *, now: float, config: CacheConfig) -> Decision:
    """What a GET that found no complete entry does with the URL's partial entry ``stored`` (maybe None)."""
    headers = request.headers
    if request.method != "GET" or any(name in headers for name in CONDITIONALS):
        return Decision(Plan.NONE)
    if "range" not in headers:
        if stored is None or "if-range" in headers:
            return Decision(Plan.NONE, had=stored is not None)
        span = missing_span(stored.pieces, stored.full_length)
        validator = strong_validator(stored.headers)
        if span is None or validator is None:
            return Decision(Plan.NONE, had=True)
        return Decision(Plan.FILL, span=span, if_range=validator, had=True)
    if stored is None:
        return Decision(Plan.CAPTURE)
    asked = parse_range(headers.get("range"), stored.full_length)
    validator = strong_validator(stored.headers)
    if_range = headers.get("if-range")
    if not isinstance(asked, Partial) or validator is None:
        return Decision(Plan.CAPTURE, had=True)
    if if_range is not None and if_range.strip(" \t") != validator:  # §13.1.5: strong comparison
        return Decision(Plan.CAPTURE, had=True)  # the origin answers a changed object whole
    if all(covers(stored.pieces, r) for r in asked.ranges):
        plain = Request("GET", request.url, headers.without("range", "if-range"))
        decision = lookup(plain, [stored], now=now, config=config)
        if decision.verdict is Verdict.SERVE:
            return Decision(Plan.SERVE, lookup=decision, ranges=asked, had=True)
        return Decision(Plan.CAPTURE, had=True)  # stale (or refused): the whole range goes forward
    if len(asked.ranges) == 1 and overlaps(stored.pieces, asked.ranges[0]):
        span = missing_span(stored.pieces, stored.full_length, within=asked.ranges[0])
        assert span is not None  # not inside, so something is missing
        return Decision(Plan.FILL, span=span, if_range=validator, want=asked, had=True)
    return Decision(Plan.CAPTURE, had=True)


def covers(pieces: Pieces, r: ByteRange) -> bool:
    """Whether one stored piece holds all of ``r`` (pieces never touch, so one must)."""
    return any(start <= r.start and r.end <= end for start, end in pieces)


def overlaps(pieces: Pieces, r: ByteRange) -> bool:
    """Whether a stored piece holds some byte of ``r``."""
    return any(start <= r.end and r.start <= end for start, end in pieces)


def missing_span(pieces: Pieces, total: int, *, within: ByteRange | None = None) -> ByteRange | None:
    """From the first byte the pieces lack to the last, of the whole representation or ``within`` a range
    of it (one Range for every gap); None when they have all."""
    low, high = (0, total - 1) if within is None else within
    gaps: list[tuple[int, int]] = []
    at = low
    for start, end in pieces:
        if start > at and at <= high:
            gaps.append((at, min(start - 1, high)))
        at = max(at, end + 1)
    if at <= high:
        gaps.append((at, high))
    return ByteRange(gaps[0][0], gaps[-1][1]) if gaps else None


def is_complete(pieces: Pieces, total: int) -> bool:
    return pieces == ((0, total - 1),) if total > 0 else False


def merge(
    stored: StoredResponse | None, body: bytes, new: StoredResponse, piece: ByteRange, data: bytes
) -> tuple[Pieces, bytes]:
    """The pieces and body once ``data`` (the bytes of ``piece``, from the 206 recorded as ``new``) is added:
    combined with the stored ones under the same strong validator and length (§3.4), else alone."""
    if (
        stored is None
        or stored.full_length != new.full_length
        or strong_validator(stored.headers) != strong_validator(new.headers)
        or strong_validator(new.headers) is None
    ):
        return ((piece.start, piece.end),), data
    segments: list[tuple[int, bytes]] = [(piece.start, data)]
    offset = 0
    for start, end in stored.pieces:
        chunk = body[offset : offset + end - start + 1]
        offset += end - start + 1
        # Keep what the new piece does not cover: the new bytes win where both have them.
        if start < piece.start:
            segments.append((start, chunk[: min(end, piece.start - 1) - start + 1]))
        if end > piece.end:
            keep_from = max(start, piece.end + 1)
            segments.append((keep_from, chunk[keep_from - start :]))
    segments.sort(key=lambda s: s[0])
    pieces: list[tuple[int, int]] = []
    parts: list[bytes] = []
    for start, chunk in segments:
        end = start + len(chunk) - 1
        if pieces and pieces[-1][1] + 1 == start:
            pieces[-1] = (pieces[-1][0], end)
        else:
            pieces.append((start, end))
        parts.append(chunk)
    return tuple(pieces), b"".join(parts)


def extract(pieces: Pieces, body: bytes, r: ByteRange) -> bytes:
    """The bytes of ``r`` from the pieces' body (``covers(pieces, r)`` must hold)."""
    offset = 0
    for start, end in pieces:
        if start <= r.start and r.end <= end:
            at = offset + r.start - start
            return body[at : at + r.size]
        offset += end - start + 1
    raise ValueError(f"{r} is not inside the stored pieces {pieces}")


def record(
    request: Request,
    resp: Response,
    total: int,
    *,
    request_time: float,
    response_time: float,
    config: CacheConfig,
) -> StoredResponse:
    """The record of a partial entry for this 206 (its pieces are set by the caller after ``merge``)."""
    headers = storable_headers(without_our_status(resp.headers), response_time=response_time)
    meta = StoredResponse(
        url=request.url,
        status=206,
        reason=resp.reason or "Partial Content",
        headers=headers.without("content-range", "content-length"),
        request_time=request_time,
        response_time=response_time,
        body_length=0,
        full_length=total,
    )
    return record_lifetime(meta, config)


def complete(meta: StoredResponse, config: CacheConfig) -> StoredResponse:
    """The complete 200 entry the pieces make once they cover the whole representation (§3.4)."""
    decision = is_storable(
        Request("GET", meta.url), Response(200, meta.headers, "OK"), complete=True, config=config
    )
    whole = replace(
        meta,
        status=200,
        reason="OK",
        headers=meta.headers.with_("Content-Length", str(meta.full_length)),
        body_length=meta.full_length,
        pieces=(),
        full_length=-1,
        rule=decision.rule.name if decision.rule else "",
    )
    return record_lifetime(whole, config)


def answer(
    meta: StoredResponse, body: bytes, ranges: Partial, *, now: float, boundary: str
) -> tuple[Headers, bytes]:
    """SERVE: the header fields and body of the 206 for ``ranges`` from a partial entry (RFC 9110 §14)."""
    layout = partial_body(ranges, meta.full_length, meta.headers.get("content-type"), boundary)
    kept = meta.headers.without(
        "content-length", "content-range", "age", "accept-ranges", *(k for k, _ in layout.headers)
    )
    headers = Headers(
        (
            *kept.fields,
            ("Age", age_value(current_age(meta, now))),
            ("Accept-Ranges", "bytes"),
            *layout.headers.fields,
        )
    )
    content = b"".join(p if isinstance(p, bytes) else extract(meta.pieces, body, p) for p in layout.parts)
    return headers, content


def fill_headers(meta: StoredResponse, *, now: float) -> Headers:
    """FILL: the header fields of the whole 200 assembled from the completed pieces (``complete``'s record)."""
    kept = meta.headers.without("content-length", "content-range", "age", "accept-ranges")
    return Headers(
        (
            *kept.fields,
            ("Age", age_value(current_age(meta, now))),
            ("Accept-Ranges", "bytes"),
            ("Content-Length", str(meta.body_length)),
        )
    )
