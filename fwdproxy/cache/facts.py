"""What a stored response's headers say for the policy, worked out once per record and carried by it.

A StoredResponse is immutable, so its parsed Cache-Control, Vary names, recency, corrected initial age and
the directives that forbid serving it stale never change; its freshness lifetime changes only with the
config, and its served headers only with the Age. They are computed the first time the record is asked
(``facts(stored)``) and kept in the record's ``facts`` slot: a record decoded again (another process wrote
it, or it was freshened) is a new object and gets its own. Nothing is remembered by object identity.
"""

from __future__ import annotations

from dataclasses import dataclass

from fwdproxy.cache.directives import CacheControl, header_date, parse_age, parse_cache_control, parse_vary
from fwdproxy.http_model import Headers, StoredResponse

_FORBIDDING = ("must-revalidate", "proxy-revalidate", "s-maxage")


@dataclass(slots=True)
class Facts:
    """The policy facts of one stored response."""

    cache_control: CacheControl
    """§5.2: its Cache-Control directives."""
    vary: tuple[str, ...]
    """§4.1: the request fields its Vary names (lower case; "*" when it varies on everything)."""
    initial_age: float
    """§4.2.3: the corrected initial age (Age, Date, request and response times)."""
    recency: tuple[float, float]
    """§4.1: how recent it is among variants: Date (or receipt), then receipt."""
    forbidding: str
    """The first of must-revalidate, proxy-revalidate, s-maxage (§5.2.2.2, .8, .10), or ""."""
    no_cache: bool
    """§5.2.2.4: it must be validated before every reuse."""
    lifetime: tuple[object, object] | None = None
    """(config, freshness.Lifetime) for the latest config asked (freshness.freshness_lifetime); typed loosely
    so this module imports nothing that imports it."""
    served: tuple[str, Headers] | None = None
    """The headers served at the latest Age value asked (headers.served_headers)."""
    full: tuple[str, Headers] | None = None
    """Those with Content-Length (headers.full_headers)."""


def facts(stored: StoredResponse) -> Facts:
    """The record's facts, worked out on first use and kept in it."""
    known = stored.facts
    if known is not None:
        return known  # type: ignore[return-value]  # the slot holds only Facts (set below)
    cc = parse_cache_control(stored.headers)
    made = Facts(
        cache_control=cc,
        vary=parse_vary(stored.headers),
        initial_age=_corrected_initial_age(stored),
        recency=(header_date(stored.headers, "date") or stored.response_time, stored.response_time),
        forbidding=next((d for d in _FORBIDDING if d in cc), ""),
        no_cache="no-cache" in cc,
    )
    object.__setattr__(stored, "facts", made)  # frozen: the slot is the record's own memo (see http_model)
    return made


def _corrected_initial_age(stored: StoredResponse) -> float:
    age_value = parse_age(stored.headers) or 0
    date = header_date(stored.headers, "date", now=stored.response_time)
    apparent_age = max(0.0, stored.response_time - (stored.response_time if date is None else date))
    response_delay = max(0.0, stored.response_time - stored.request_time)
    return max(apparent_age, age_value + response_delay)
