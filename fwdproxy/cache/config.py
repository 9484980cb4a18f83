"""The cache policy's settings, parsed once by the addon and passed to every decision."""

from __future__ import annotations

from dataclasses import dataclass

from fwdproxy.cache.rules import Rule


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Knobs of the shared-cache policy; the defaults follow the issue's flags."""

    negative_ttl: float = 60.0
    """Cap on the heuristic freshness of a 404/410, seconds: a package published a minute after a miss is
    seen, not hidden behind a cached 404 (issue 3)."""
    heuristic_cap: float = 86400.0
    """Cap on any heuristic freshness lifetime (§4.2.2), seconds; a day, the classic browser bound."""
    serve_stale_on_error: float = 0.0
    """Serve any stored entry up to this many seconds stale when the origin fails, 5xx included (the flag set
    explicitly: registry outage mode); 0 leaves 5xx to the response's own stale-if-error."""
    stale_if_disconnected: float = 86400.0
    """Serve any stored entry up to this many seconds stale when the origin cannot be reached at all (DNS,
    refused, timeouts, TLS, a connection closed before the response head): §4.2.4 lets a disconnected cache
    do so. A day covers an outage overnight, yet does not hide a vanished origin for weeks; 0 turns it off."""
    offline: bool = False
    """Answer only from the cache; never contact an origin (504 on a miss)."""
    rules: tuple[Rule, ...] = ()
    """[[cache.rule]] tables (and presets), first match wins."""
    recorded_lifetimes: bool = False
    """Take an entry's freshness lifetime from its record (StoredResponse.lifetime) when it has one,
    instead of computing it from these settings: how `cache ls/show` agree with the proxy that stored
    the entry without repeating its flags. The proxy itself computes (its own settings are the truth)."""


DEFAULT_CONFIG = CacheConfig()
"""The defaults, shared (records are immutable)."""
