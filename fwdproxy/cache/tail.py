"""What a follower reading its leader's growing body is sent: whether it may, and the response head."""

from __future__ import annotations

import secrets

from fwdproxy import ranges
from fwdproxy.cache.answer import range_of
from fwdproxy.cache.headers import served_headers
from fwdproxy.cache.key import vary_matches
from fwdproxy.cache.validation import client_conditional_matches
from fwdproxy.http_model import Headers, Request
from fwdproxy.inflight import Flight
from fwdproxy.sidecar import response_head


def can_tail(request: Request, flight: Flight) -> bool:
    """Whether a follower can read the leader's growing body as it is: same variant, and the whole body or
    ranges of it (a 416, or a client validator that matches, waits for the stored entry)."""
    meta = flight.meta
    return (
        meta is not None
        and vary_matches(meta, request)
        and not isinstance(range_of(request, meta), ranges.Unsatisfiable)
        and not client_conditional_matches(request, meta)
    )


def tail_head(
    request: Request, flight: Flight, cache_status: str, *, now: float
) -> tuple[bytes, tuple[bytes | ranges.ByteRange, ...] | None]:
    """The response head for a follower of a STREAMING leader, and the parts of a 206 (None: the whole
    body): a range of the body on its way is a 206 whose parts wait for their bytes (uv's parallel ranges
    behind one whole fetch, --range-fetch-whole-below)."""
    meta = flight.meta
    assert meta is not None
    headers = served_headers(meta, now=now)
    code, reason, parts = meta.status, meta.reason, None
    if isinstance(wanted := range_of(request, meta), ranges.Partial):
        layout = ranges.partial_body(
            wanted, meta.body_length, meta.headers.get("content-type"), secrets.token_hex(16)
        )
        kept = headers.without("content-length", "content-range", *(k for k, _ in layout.headers))
        headers, parts = Headers(kept.fields + layout.headers.fields), layout.parts
        code, reason = 206, "Partial Content"
    else:
        headers = headers.with_("Content-Length", str(meta.body_length))
    return response_head(code, reason, [*headers, ("Cache-Status", cache_status)]), parts
