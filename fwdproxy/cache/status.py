"""RFC 9211 Cache-Status: what the cache did with one request, as one list member."""

from __future__ import annotations

import enum
import functools
import math
import re
from dataclasses import dataclass

CACHE_NAME = "fwdproxy"


class Fwd(enum.StrEnum):
    """RFC 9211 §2.2 fwd: why the request went to the next hop."""

    BYPASS = "bypass"
    """Configured not to use the cache for this request."""
    METHOD = "method"
    """The method cannot be answered from a cache."""
    URI_MISS = "uri-miss"
    """Nothing stored for the URL."""
    VARY_MISS = "vary-miss"
    """Something stored for the URL, but no variant matches the request's selecting headers."""
    MISS = "miss"
    """Not answered from the cache, for no more specific reason."""
    REQUEST = "request"
    """The request's own directives (no-cache, max-age, min-fresh, no-store) made the cache go forward."""
    STALE = "stale"
    """A stored response was found but was stale (or must be revalidated)."""
    PARTIAL = "partial"
    """Only part of the response is stored."""


@dataclass(frozen=True, slots=True)
class CacheStatus:
    """The parameters of one Cache-Status member (RFC 9211 §2); unset ones are left out."""

    hit: bool = False
    """§2.1: answered from the cache without going forward."""
    fwd: Fwd | None = None
    """§2.2: why the request was forwarded."""
    fwd_status: int | None = None
    """§2.3: status of the response from the next hop (e.g. 304 after revalidation)."""
    ttl: float | None = None
    """§2.4: remaining freshness, seconds (negative when stale); rendered rounded down."""
    stored: bool = False
    """§2.5: the response was stored."""
    collapsed: bool = False
    """§2.6: the request was collapsed into another one in flight."""
    key: str = ""
    """§2.7: the cache key, when worth showing."""
    detail: str = ""
    """§2.8: implementation detail, e.g. "rule-immutable" or "stale-if-error"."""


def render(status: CacheStatus, cache_name: str = CACHE_NAME) -> str:
    """The member, e.g. ``fwdproxy; hit; ttl=297`` or ``fwdproxy; fwd=uri-miss; stored``."""
    params: list[str] = []
    if status.hit:
        params.append("hit")
    if status.fwd is not None:
        params.append(f"fwd={status.fwd.value}")
    if status.fwd_status is not None:
        params.append(f"fwd-status={int(status.fwd_status)}")
    if status.stored:
        params.append("stored")
    if status.collapsed:
        params.append("collapsed")
    if status.ttl is not None and math.isfinite(status.ttl):
        params.append(f"ttl={_sf_integer(status.ttl)}")
    if status.key:
        params.append(f"key={sf_string(status.key)}")
    if status.detail:
        params.append(f"detail={sf_item(status.detail)}")
    return "; ".join([sf_item(cache_name), *params])


def render_bytes(status: CacheStatus) -> bytes:
    """``render(status)`` as the bytes of a field value, remembered: members that render alike (the hits of
    one entry within a second of ttl) cost one dict lookup."""
    ttl = status.ttl
    if ttl is not None and math.isfinite(ttl):
        ttl = _sf_integer(ttl)  # what render shows, so that equal renderings share one key
    return _rendered(
        status.hit,
        status.fwd,
        status.fwd_status,
        ttl,
        status.stored,
        status.collapsed,
        status.key,
        status.detail,
    )


@functools.lru_cache(maxsize=1024)
def _rendered(
    hit: bool,
    fwd: Fwd | None,
    fwd_status: int | None,
    ttl: float | None,
    stored: bool,
    collapsed: bool,
    key: str,
    detail: str,
) -> bytes:
    return render(CacheStatus(hit, fwd, fwd_status, ttl, stored, collapsed, key, detail)).encode()


def _sf_integer(value: float) -> int:
    # RFC 8941 §3.3.1: at most 15 digits.
    return max(-999_999_999_999_999, min(999_999_999_999_999, math.floor(value)))


_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")


def sf_item(value: str) -> str:
    """RFC 8941 §3.3.4 token when the text is one, else §3.3.3 string."""
    return value if _SF_TOKEN.fullmatch(value) else sf_string(value)


def sf_string(value: str) -> str:
    """RFC 8941 §3.3.3 string: printable ASCII, with \\ and " escaped; anything else becomes "?"."""
    chars = []
    for c in value:
        if c in '\\"':
            chars.append("\\" + c)
        elif " " <= c <= "~":
            chars.append(c)
        else:
            chars.append("?")
    return '"' + "".join(chars) + '"'
