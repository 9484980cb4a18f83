"""Responses the proxy makes itself (not an addon): short plain-text bodies, built without re-encoding."""

from __future__ import annotations

import time

from mitmproxy import http

from fwdproxy import __version__

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    416: "Range Not Satisfiable",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
    508: "Loop Detected",
}


def text(status: int, message: str, headers: dict[str, str] | None = None) -> http.Response:
    """A response with a one-line ``text/plain`` body; it names fwdproxy so users know who answered."""
    body = f"fwdproxy: {message}\n".encode()
    fields = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
        (b"Cache-Control", b"no-store"),
    ]
    fields += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    now = time.time()
    resp = http.Response(
        b"HTTP/1.1",
        status,
        REASONS.get(status, "").encode(),
        http.Headers(fields),
        body,
        None,
        now,
        now,
    )
    return resp


SERVER = f"fwdproxy/{__version__}"
