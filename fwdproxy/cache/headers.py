"""Which response header fields are stored (§3.1) and what a response served from the cache carries (§5.1)."""

from __future__ import annotations

import math

from fwdproxy.cache.directives import DELTA_SECONDS_MAX, format_http_date, parse_list
from fwdproxy.cache.facts import facts
from fwdproxy.cache.freshness import current_age
from fwdproxy.cache.status import CACHE_NAME
from fwdproxy.http_model import Headers, StoredResponse

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-authentication-info",
    }
)
"""§3.1 and RFC 9110 §7.6.1: connection-specific fields, never stored nor served from the cache."""


def storable_headers(headers: Headers, *, response_time: float | None = None) -> Headers:
    """§3.1: the fields to store: minus hop-by-hop ones and those the Connection field names.

    With ``response_time``, a missing Date is added (RFC 9110 §6.6.1: a cache with a clock MUST).
    """
    named = {n.lower() for line in headers.get_all("connection") for n in parse_list(line)}
    drop = HOP_BY_HOP | named
    kept = Headers(tuple((k, v) for k, v in headers if k.lower() not in drop))
    if response_time is not None and "date" not in kept:
        kept = kept.with_("Date", format_http_date(response_time))
    return kept


def age_value(age: float) -> str:
    """§5.1: Age as delta-seconds, rounded down and saturated."""
    if not math.isfinite(age) or age >= DELTA_SECONDS_MAX:
        return str(DELTA_SECONDS_MAX)
    return str(max(0, math.floor(age)))


def answers_ranges(stored: StoredResponse) -> bool:
    """Whether the cache answers Range requests from this stored response itself (RFC 9110 §14.2): a
    complete 200 body (only complete bodies are stored). Other statuses are served whole."""
    return stored.status == 200


def served_headers(stored: StoredResponse, *, now: float) -> Headers:
    """§5.1: the stored fields with Age set to the current age; Date and everything else untouched, except
    ``Accept-Ranges: bytes`` when the cache answers ranges for it (RFC 9110 §14.3), whatever the origin said:
    clients such as uv only ask ranges of a server that advertises them.

    The same object for every call within one second of Age (a hot entry's hits share it)."""
    return _served(stored, age_value(current_age(stored, now)))


def full_headers(stored: StoredResponse, *, now: float) -> Headers:
    """served_headers with Content-Length set to the stored body's length: a whole stored response.

    The same object for every call within one second of Age, like served_headers."""
    return _full(stored, age_value(current_age(stored, now)))


def _served(stored: StoredResponse, age: str) -> Headers:
    """The headers at this Age value, kept with the record for the latest one (hits share the object)."""
    known = facts(stored)
    latest = known.served
    if latest is not None and latest[0] == age:
        return latest[1]
    headers = stored.headers.with_("Age", age)
    headers = headers.with_("Accept-Ranges", "bytes") if answers_ranges(stored) else headers
    known.served = (age, headers)
    return headers


def _full(stored: StoredResponse, age: str) -> Headers:
    known = facts(stored)
    latest = known.full
    if latest is not None and latest[0] == age:
        return latest[1]
    headers = _served(stored, age).with_("Content-Length", str(stored.body_length))
    known.full = (age, headers)
    return headers


def without_our_status(headers: Headers) -> Headers:
    """The fields minus our own Cache-Status member (set on streamed responses before they are stored);
    members of caches in front of the origin are kept (RFC 9211 §2: each cache adds its own)."""
    lines = headers.get_all("cache-status")
    if not any(CACHE_NAME in line for line in lines):
        return headers
    kept = [m.strip() for line in lines for m in line.split(",") if not m.strip().startswith(CACHE_NAME)]
    out = headers.without("cache-status")
    return out.with_("Cache-Status", ", ".join(kept)) if kept else out
