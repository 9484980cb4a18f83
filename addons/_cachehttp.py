"""Conversions between mitmproxy flows and our records, and responses built from stored entries (not an addon)."""

import secrets
import time
from dataclasses import dataclass

from mitmproxy import http

from fwdproxy import cache, ranges, store
from fwdproxy.cache import CacheStatus
from fwdproxy.cache.memo import PerObject
from fwdproxy.http_model import Headers, Request, Response, StoredResponse


def to_request(req: http.Request, url: str | None = None) -> Request:
    """Our record of a request; ``url`` when the caller already has ``req.url`` (mitmproxy builds it per call)."""
    return Request(req.method.upper(), url or req.url, _headers(req.headers))


def to_response(resp: http.Response) -> Response:
    return Response(resp.status_code, _headers(resp.headers), resp.reason)


def _headers(headers: http.Headers) -> Headers:
    """The fields decoded as mitmproxy's ``items(multi=True)`` does (UTF-8, surrogateescape), in one pass."""
    return Headers(
        tuple(
            [
                (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                for k, v in headers.fields
            ]
        )
    )


def content_length(resp: http.Response) -> int | None:
    """The declared body length, or None when chunked, absent or invalid."""
    value = resp.headers.get("content-length")
    if value is None or "chunked" in resp.headers.get("transfer-encoding", "").lower():
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 0 else None


def read_body(body: bytes | store.BodyFile) -> bytes:
    """The whole stored body (files are read once, then closed)."""
    if isinstance(body, bytes):
        return body
    with body:
        return body.file.read()


def close(body: bytes | store.BodyFile | None) -> None:
    if isinstance(body, store.BodyFile):
        body.close()


def make_response(
    status: int,
    reason: str,
    headers: Headers,
    body: bytes,
    cache_status: CacheStatus,
    now: float | None = None,
    *,
    stable: bool = False,
) -> http.Response:
    """A response from stored parts, built without re-encoding the body (mitmproxy-notes §1).

    ``stable`` headers (see Answer) are encoded once and the encoding reused."""
    fields = list(_encoded(headers) if stable else _encode(headers))
    fields.append((b"Cache-Status", cache.render_bytes(cache_status)))
    now = time.time() if now is None else now
    return http.Response(b"HTTP/1.1", status, reason.encode(), http.Headers(fields), body, None, now, now)


def _encode(headers: Headers) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for k, v in headers)


_encoded = PerObject(_encode)


@dataclass(frozen=True, slots=True)
class Answer:
    """A response to send from a stored entry: in memory (``content``) or streamed from ``file`` (``parts``)."""

    status: int
    reason: str
    headers: Headers
    """Complete, with Content-Length."""
    content: bytes = b""
    file: store.BodyFile | None = None
    """A big stored body still on disk: send ``parts`` of it through the sidecar."""
    parts: tuple[ranges.ByteRange | bytes, ...] | None = None
    """Parts of ``file`` (None: all of it)."""
    stable: bool = False
    """``headers`` is an object later hits of the same entry share (within a second of Age): encode it once."""


def answer(request: Request, meta: StoredResponse, body: bytes | store.BodyFile, now: float) -> Answer:
    """The response to a request from a stored entry: 304 for a matching conditional (RFC 9111 §4.3.2),
    206/416 for a range (RFC 9110 §14), the headers alone for HEAD, else the whole stored response.
    A body on disk is not read here: the Answer says which parts of the file to send."""
    if cache.client_conditional_matches(request, meta):
        close(body)
        return Answer(304, "Not Modified", cache.not_modified_response(meta, now=now).headers)
    if request.method == "HEAD":
        close(body)
        return Answer(meta.status, meta.reason, cache.full_headers(meta, now=now), stable=True)
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
            headers = cache.served_headers(meta, now=now)
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
            fields = cache.served_headers(meta, now=now).without("content-length", "content-range")
            return Answer(
                416,
                "Range Not Satisfiable",
                Headers(fields.fields + ranges.unsatisfiable_headers(length).fields),
            )
        case ranges.Full():
            out = cache.full_headers(meta, now=now)
            if isinstance(body, bytes):
                return Answer(meta.status, meta.reason, out, body, stable=True)
            return Answer(meta.status, meta.reason, out, file=body, stable=True)
