"""Which bytes of a stored representation a Range request gets, and how the 206 is laid out (RFC 9110 §14).

Callers go: `range_decision` (method, If-Range, Range) → match Full / Partial / Unsatisfiable →
`partial_body` for a 206 or `unsatisfiable_headers` for a 416. Nothing here touches the body: a 206 is a list
of literal bytes and slices, so a caller can stream a big file part by part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from fwdproxy.http_model import Headers

MAX_RANGES = 100
"""More range-specs than this and the Range is ignored (§14.2 lets a server ignore what looks like a DoS).
Real clients (download managers, PDF viewers) ask for a handful; Apache's default MaxRanges is 200."""

_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")  # §14.1.2 int-range; [0-9], not \d, which takes other scripts
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")  # §14.1.2 suffix-range
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=?]{1,70}")  # RFC 2046 §5.1.1 bchars, without the space


class ByteRange(NamedTuple):
    """One satisfiable range, both ends inclusive as in Content-Range; a tuple so `(start, end)` unpacks."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True, slots=True)
class Full:
    """Ignore the Range: answer 200 with the whole representation."""


@dataclass(frozen=True, slots=True)
class Partial:
    """Answer 206 with these ranges, in this order (non-empty, within the representation, never overlapping)."""

    ranges: tuple[ByteRange, ...]


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """Answer 416 with `unsatisfiable_headers(length)`: no range overlaps the representation (§15.5.17)."""


RangeDecision = Full | Partial | Unsatisfiable


def parse_range(value: str | None, length: int) -> RangeDecision:
    """What a `Range` field value asks of a representation of `length` bytes; never raises.

    Invalid syntax, a unit other than bytes, or more than MAX_RANGES specs → Full (§14.2 lets a server
    ignore a Range it does not like). Unsatisfiable specs are dropped; if none is left → Unsatisfiable.
    Overlapping or adjacent ranges are coalesced, sorted (§14.6 allows it): that caps a 206 at `length`
    bytes however the ranges were stacked, which is the "Apache killer" defence. Otherwise the client's
    order is kept, as §14.6 asks.
    """
    if value is None or length < 0:
        return Full()
    unit, eq, range_set = value.strip(" \t").partition("=")
    if not eq or unit.lower() != "bytes":  # §14.1: range units are case-insensitive
        return Full()
    specs = [s.strip(" \t") for s in range_set.split(",")]
    specs = [s for s in specs if s]  # §5.6.1: a recipient accepts empty list elements
    if not specs or len(specs) > MAX_RANGES:
        return Full()
    ranges: list[ByteRange] = []
    empty_suffix = False
    for spec in specs:
        if m := _INT_RANGE.fullmatch(spec):
            first, last = _number(m[1]), _number(m[2]) if m[2] else None
            if last is not None and last < first:
                return Full()  # §14.1.2: an invalid int-range makes the whole header invalid
            if first < length:  # §14.1.2: satisfiable iff first-pos < length; last-pos is clamped
                ranges.append(ByteRange(first, length - 1 if last is None else min(last, length - 1)))
        elif m := _SUFFIX_RANGE.fullmatch(spec):
            suffix = _number(m[1])
            if suffix > 0 and length == 0:
                empty_suffix = True  # satisfiable, yet names no byte: the whole (empty) body is the answer
            elif suffix > 0:
                ranges.append(ByteRange(max(0, length - suffix), length - 1))
        else:
            return Full()
    if not ranges:
        return Full() if empty_suffix else Unsatisfiable()
    return Partial(_coalesce(ranges))


def _number(digits: str) -> int:
    # int() refuses over 4300 digits; any position past 10**18 is past every representation anyway.
    return int(digits) if len(digits) <= 18 else 10**18


def _coalesce(ranges: list[ByteRange]) -> tuple[ByteRange, ...]:
    """The ranges as given if none overlaps or touches another, else merged and sorted."""
    ordered = sorted(ranges)
    merged: list[ByteRange] = []
    for r in ordered:
        if merged and r.start <= merged[-1].end + 1:
            merged[-1] = ByteRange(merged[-1].start, max(merged[-1].end, r.end))
        else:
            merged.append(r)
    return tuple(ranges) if len(merged) == len(ranges) else tuple(merged)


def if_range_allows(
    if_range: str | None, etag: str | None, last_modified: str | None, *, date: str | None = None
) -> bool:
    """Whether the `If-Range` condition holds, so the Range may be honoured (§13.1.5).

    An entity-tag must equal `etag` by strong comparison (§8.8.3.2): a weak tag on either side fails.
    An HTTP-date must equal `last_modified` (compared parsed, so the three §5.6.7 formats agree), and
    the date must be a strong validator (§8.8.2.2): when the stored `date` is given, Last-Modified must
    be at least one second before it; without `date` the caller vouches for it. Anything unparseable
    fails, which only costs a full 200.
    """
    if if_range is None:
        return True
    if_range = if_range.strip(" \t")
    if if_range.startswith(('"', "W/")):
        wanted, have = _strong_tag(if_range), _strong_tag(etag or "")
        return wanted is not None and wanted == have
    wanted_time, have_time = _http_date(if_range), _http_date(last_modified or "")
    if wanted_time is None or wanted_time != have_time:
        return False
    if date is None:
        return True
    date_time = _http_date(date)
    return date_time is not None and date_time - have_time >= 1


def _strong_tag(value: str) -> str | None:
    """The opaque-tag of a strong entity-tag (§8.8.3), or None for weak or malformed."""
    value = value.strip(" \t")
    ok = len(value) >= 2 and value[0] == value[-1] == '"' and '"' not in value[1:-1]
    return value if ok else None


def _http_date(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def range_decision(
    method: str,
    request_headers: Headers,
    *,
    length: int,
    etag: str | None,
    last_modified: str | None,
    date: str | None = None,
) -> RangeDecision:
    """The answer to a request for a stored representation: the three checks of §14.2 and §13.1.5 in order."""
    if method.upper() != "GET":  # §14.2: GET is the only method with defined range handling
        return Full()
    range_value = request_headers.get("Range")
    if range_value is None:
        return Full()  # §13.1.5: If-Range without Range is ignored
    if not if_range_allows(request_headers.get("If-Range"), etag, last_modified, date=date):
        return Full()  # §13.1.5: a false If-Range means "send me the whole new representation"
    return parse_range(range_value, length)


@dataclass(frozen=True, slots=True)
class PartialBody:
    """The layout of a 206: header fields to set, then a body of literal bytes and slices of the representation."""

    headers: Headers
    """Content-Range (one range) or multipart Content-Type, and Content-Length; they replace the stored
    response's fields of those names (and a stored Content-Range or Content-Length must go)."""
    parts: tuple[bytes | ByteRange, ...]
    """The body in order: literal bytes as they are, a ByteRange as that slice of the stored body."""

    @property
    def content_length(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.size for p in self.parts)


def content_range(r: ByteRange, length: int) -> str:
    """The Content-Range value of one range (§14.4), e.g. ``bytes 100-199/1000``."""
    return f"bytes {r.start}-{r.end}/{length}"


def unsatisfiable_headers(length: int) -> Headers:
    """The fields of a 416 (§15.5.17): which length the ranges missed, and an empty body."""
    return Headers.of([("Content-Range", f"bytes */{length}"), ("Content-Length", "0")])


def partial_body(partial: Partial, length: int, content_type: str | None, boundary: str) -> PartialBody:
    """The 206 for `partial`: a single part, or multipart/byteranges for several (§14.6).

    `content_type` is the representation's own (None if it had none); `boundary` should be random per
    response (e.g. ``secrets.token_hex(16)``), since a body that contains it would break the framing.

    Raises:
        ValueError: a boundary that RFC 2046 does not allow.
    """
    if len(partial.ranges) == 1:
        (r,) = partial.ranges
        fields = [("Content-Range", content_range(r, length)), ("Content-Length", str(r.size))]
        return PartialBody(Headers.of(fields), (r,))
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError(
            f"{boundary!r} is not a multipart boundary; use 1-70 letters or digits, e.g. a token_hex"
        )
    parts: list[bytes | ByteRange] = []
    for i, r in enumerate(partial.ranges):
        head = "" if i == 0 else "\r\n"  # the CRLF before each later delimiter belongs to the delimiter
        head += f"--{boundary}\r\n"
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Content-Range: {content_range(r, length)}\r\n\r\n"
        parts += [head.encode("utf-8", "surrogateescape"), r]
    parts.append(f"\r\n--{boundary}--\r\n".encode("utf-8", "surrogateescape"))
    layout = PartialBody(Headers(), tuple(parts))
    fields = [
        ("Content-Type", f"multipart/byteranges; boundary={boundary}"),
        ("Content-Length", str(layout.content_length)),
    ]
    return PartialBody(Headers.of(fields), layout.parts)


def assemble(body: PartialBody, representation: bytes) -> bytes:
    """The 206 body built in memory, for small representations (and tests)."""
    return b"".join(p if isinstance(p, bytes) else representation[p.start : p.end + 1] for p in body.parts)
