"""Request inputs that change what an origin answers without being part of the cache key (issue 16).

A shared cache keys a response by method and URL (RFC 9111 §4.1), plus the fields its Vary names. Origin
frameworks also obey request fields the key knows nothing of: one client's rewritten URL or method would be
stored under the plain URL and served to everyone (web cache poisoning through unkeyed inputs). The same
holds for a GET or HEAD carrying a body, which RFC 9110 §9.3.1 gives no meaning yet some origins read.
"""

from __future__ import annotations

import enum

from fwdproxy.http_model import Headers

REWRITE_HEADERS: tuple[str, ...] = (
    # The target path, as IIS/ASP.NET (X-Original-URL, X-Rewrite-URL), Symfony and Zend honour it.
    *"X-Original-URL X-Original-URI X-Rewrite-URL X-Override-URL X-Proxy-URL X-HTTP-DestinationURL".split(),
    # The method, as Rails, Express (method-override), Symfony and Google's APIs honour it.
    *"X-HTTP-Method-Override X-HTTP-Method X-Method-Override X-Original-Method".split(),
)
"""Fields that rewrite the request's target or method; the standard anonymize level removes them."""

UNKEYED_HEADERS: tuple[str, ...] = (
    *REWRITE_HEADERS,
    # The host, scheme or port an origin puts into absolute links and redirects it then lets us cache.
    *"X-Forwarded-Host X-Forwarded-Server X-Forwarded-Scheme X-Forwarded-Proto X-Forwarded-Port".split(),
    *"X-Forwarded-Prefix X-Forwarded-SSL Front-End-Https X-Host X-Original-Host".split(),
)
"""Fields whose presence makes a request bypass the cache (when a level that keeps them lets them through)."""

_UNKEYED = frozenset(n.lower() for n in UNKEYED_HEADERS)


class Bypass(enum.StrEnum):
    """Why a GET or HEAD is forwarded without the cache (the Cache-Status detail with fwd=bypass)."""

    REQUEST_BODY = "request-body"
    """RFC 9110 §9.3.1: a GET body has no defined meaning, so the URL does not say what is answered."""
    REWRITE_HEADER = "rewrite-header"
    """A field of UNKEYED_HEADERS (or Forwarded with host= or proto=) may change the answer."""


def bypass(headers: Headers, *, has_body: bool) -> Bypass | None:
    """Why this GET/HEAD must neither be answered from the cache nor have its response stored, or None."""
    if has_body:
        return Bypass.REQUEST_BODY
    for name, value in headers.fields:
        lname = name.lower()
        if lname in _UNKEYED:
            return Bypass.REWRITE_HEADER
        # RFC 7239 §5.3-5.4: Forwarded's host and proto parameters are X-Forwarded-Host/-Proto standardised.
        if lname == "forwarded" and ("host=" in value.lower() or "proto=" in value.lower()):
            return Bypass.REWRITE_HEADER
    return None


def has_body(headers: Headers, received: bytes | None) -> bool:
    """Whether a request carries a body: bytes received, a Transfer-Encoding, or a Content-Length above 0
    (RFC 9112 §6.1-6.2); ``received`` is None when the body was not read (streamed)."""
    if received:
        return True
    if "transfer-encoding" in headers:
        return True
    length = (headers.get("content-length") or "").strip()
    return length not in ("", "0") and not set(length) <= {"0", ",", " "}
