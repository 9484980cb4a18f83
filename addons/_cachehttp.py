"""Conversions between mitmproxy flows and our records, and responses built from stored entries (not an addon)."""

import time

from mitmproxy import http

from fwdproxy import cache
from fwdproxy.cache import CacheStatus
from fwdproxy.http_model import Headers, Request, Response


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
    fields = list(headers.latin1() if stable else _encode(headers))
    fields.append((b"Cache-Status", cache.render_bytes(cache_status)))
    now = time.time() if now is None else now
    return http.Response(b"HTTP/1.1", status, reason.encode(), http.Headers(fields), body, None, now, now)


def _encode(headers: Headers) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for k, v in headers)
