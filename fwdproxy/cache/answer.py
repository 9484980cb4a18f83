"""The response a stored entry gives one request: 304, 206/416, HEAD, or all of it (RFC 9111 §4.3.2, RFC 9110 §14).

Pure and flow-free, so every path that answers from the store sends the same thing: the cache addon
(through fwdproxy/cache/service.py) and ``exchange.hit`` for a layer below mitmproxy's HTTP layer. Whether the entry
may answer at all is the exchange's decision (fwdproxy/cache/exchange.py, policy.lookup).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from fwdproxy import ranges
from fwdproxy.cache.headers import full_headers, served_headers
from fwdproxy.cache.validation import client_conditional_matches, not_modified_response
from fwdproxy.http_model import Headers, Request, StoredResponse
from fwdproxy.store.record import BodyFile


def close(body: bytes | BodyFile | None) -> None:
    """Release a stored body that will not be sent."""
    if isinstance(body, BodyFile):
        body.close()


@dataclass(frozen=True, slots=True)
class Answer:
    """A response to send from a stored entry: in memory (``content``) or streamed from ``file`` (``parts``)."""

    status: int
    reason: str
    headers: Headers
    """Complete, with Content-Length."""
    content: bytes = b""
    file: BodyFile | None = None
    """A big stored body still on disk: send ``parts`` of it through the sidecar."""
    parts: tuple[ranges.ByteRange | bytes, ...] | None = None
    """Parts of ``file`` (None: all of it)."""
    stable: bool = False
    """``headers`` is an object later hits of the same entry share (within a second of Age): encode it once."""


def answer(request: Request, meta: StoredResponse, body: bytes | BodyFile, now: float) -> Answer:
    """The response to a request from a stored entry: 304 for a matching conditional (RFC 9111 §4.3.2),
    206/416 for a range (RFC 9110 §14), the headers alone for HEAD, else the whole stored response.
    A body on disk is not read here: the Answer says which parts of the file to send."""
    if client_conditional_matches(request, meta):
        close(body)
        return Answer(304, "Not Modified", not_modified_response(meta, now=now).headers)
    if request.method == "HEAD":
        close(body)
        return Answer(meta.status, meta.reason, full_headers(meta, now=now), stable=True)
    length = meta.body_length
    decision: ranges.RangeDecision = ranges.Full()
    if meta.status == 200 and "range" in request.headers:  # no Range: the whole response (RFC 9110 §14.2)
        decision = ranges.range_decision(
            request.method,
            request.headers,
            length=length,
            etag=meta.headers.get("etag"),
            last_modified=meta.headers.get("last-modified"),
            date=meta.headers.get("date"),
        )
    match decision:
        case ranges.Partial():
            headers = served_headers(meta, now=now)
            layout = ranges.partial_body(
                decision, length, meta.headers.get("content-type"), secrets.token_hex(16)
            )
            fields = headers.without("content-length", "content-range", *(k for k, _ in layout.headers))
            out = Headers(fields.fields + layout.headers.fields)
            if isinstance(body, bytes):
                return Answer(206, "Partial Content", out, ranges.assemble(layout, body))
            return Answer(206, "Partial Content", out, file=body, parts=layout.parts)
        case ranges.Unsatisfiable():
            close(body)
            fields = served_headers(meta, now=now).without("content-length", "content-range")
            return Answer(
                416,
                "Range Not Satisfiable",
                Headers(fields.fields + ranges.unsatisfiable_headers(length).fields),
            )
        case ranges.Full():
            out = full_headers(meta, now=now)
            if isinstance(body, bytes):
                return Answer(meta.status, meta.reason, out, body, stable=True)
            return Answer(meta.status, meta.reason, out, file=body, stable=True)


def range_of(request: Request, meta: StoredResponse) -> ranges.RangeDecision:
    """What a request's Range (and If-Range) asks of a stored (or being stored) body (RFC 9110 §14.2)."""
    if meta.status != 200 or meta.body_length < 0 or "range" not in request.headers:
        return ranges.Full()
    headers = meta.headers
    return ranges.range_decision(
        request.method,
        request.headers,
        length=meta.body_length,
        etag=headers.get("etag"),
        last_modified=headers.get("last-modified"),
        date=headers.get("date"),
    )
