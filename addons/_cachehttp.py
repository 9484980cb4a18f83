"""Conversions between mitmproxy flows and our records, and responses built from stored entries (not an addon)."""

import secrets
import time

from mitmproxy import http

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from fwdproxy import cache, ranges, store
from fwdproxy.cache import CacheStatus
from fwdproxy.http_model import Headers, Request, Response, StoredResponse


def to_request(req: http.Request) -> Request:
    return Request(req.method.upper(), req.url, Headers(tuple(req.headers.items(multi=True))))


def to_response(resp: http.Response) -> Response:
    return Response(resp.status_code, Headers(tuple(resp.headers.items(multi=True))), resp.reason)


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
) -> http.Response:
    """A response from stored parts, built without re-encoding the body (mitmproxy-notes §1)."""
    fields = [(k.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for k, v in headers]
    fields.append((b"Cache-Status", cache.render(cache_status).encode()))
    now = time.time() if now is None else now
    return http.Response(b"HTTP/1.1", status, reason.encode(), http.Headers(fields), body, None, now, now)


def answer(
    request: Request,
    meta: StoredResponse,
    body: bytes | store.BodyFile,
    status: CacheStatus,
    now: float,
) -> http.Response:
    """The response to a request from a stored entry: 304 for a matching conditional (RFC 9111 §4.3.2),
    206/416 for a range (RFC 9110 §14), the headers alone for HEAD, else the whole stored response."""
    if cache.client_conditional_matches(request, meta):
        close(body)
        nm = cache.not_modified_response(meta, now=now)
        return make_response(304, "Not Modified", nm.headers, b"", status, now)
    headers = cache.served_headers(meta, now=now)
    length = meta.body_length
    decision: ranges.RangeDecision = ranges.Full()
    if meta.status == 200:
        decision = ranges.range_decision(
            request.method,
            request.headers,
            length=length,
            etag=meta.headers.get("etag"),
            last_modified=meta.headers.get("last-modified"),
            date=meta.headers.get("date"),
        )
    if request.method == "HEAD":
        close(body)
        return make_response(
            meta.status, meta.reason, headers.with_("Content-Length", str(length)), b"", status, now
        )
    match decision:
        case ranges.Partial():
            layout = ranges.partial_body(
                decision, length, meta.headers.get("content-type"), secrets.token_hex(16)
            )
            content = ranges.assemble(layout, read_body(body))
            fields = headers.without("content-length", "content-range", *(k for k, _ in layout.headers))
            return make_response(
                206, "Partial Content", Headers(fields.fields + layout.headers.fields), content, status, now
            )
        case ranges.Unsatisfiable():
            close(body)
            fields = headers.without("content-length", "content-range")
            extra = ranges.unsatisfiable_headers(length)
            return make_response(
                416, "Range Not Satisfiable", Headers(fields.fields + extra.fields), b"", status, now
            )
        case ranges.Full():
            content = read_body(body)
            return make_response(
                meta.status,
                meta.reason,
                headers.with_("Content-Length", str(len(content))),
                content,
                status,
                now,
            )
