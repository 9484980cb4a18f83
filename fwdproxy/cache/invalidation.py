"""Which stored responses an unsafe request invalidates (RFC 9111 §4.4)."""

from __future__ import annotations

from urllib.parse import urljoin

from fwdproxy.cache.key import origin_of, primary_key
from fwdproxy.http_model import Request, Response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""RFC 9110 §9.2.1."""


def invalidated_keys(request: Request, response: Response) -> list[str]:
    """§4.4: primary keys to drop after a non-error response to an unsafe method.

    The target URI always; Location and Content-Location only when same-origin (a cross-origin value
    could be used to evict someone else's entries).
    """
    if request.method.upper() in SAFE_METHODS or not 200 <= response.status < 400:
        return []
    keys = [primary_key("GET", request.url)]
    origin = origin_of(request.url)
    for name in ("location", "content-location"):
        value = response.headers.get_all(name)
        if len(value) != 1 or not value[0].strip():
            continue
        try:
            target = urljoin(request.url, value[0].strip())
        except ValueError:
            continue
        if origin_of(target) == origin and (key := primary_key("GET", target)) not in keys:
            keys.append(key)
    return keys
