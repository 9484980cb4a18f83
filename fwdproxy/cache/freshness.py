"""Freshness lifetime (§4.2.1, §4.2.2, cache rules) and current age (§4.2.3) of a stored response."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.directives import CacheControl, header_date, parse_cache_control
from fwdproxy.cache.facts import facts
from fwdproxy.cache.rules import Rule, match_rule
from fwdproxy.http_model import Headers, StoredResponse

HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
"""RFC 9110 §15.1: status codes that are heuristically cacheable."""

NEGATIVE = frozenset({404, 410})
"""Heuristic freshness of these is capped by CacheConfig.negative_ttl."""

RULE_STATUSES = frozenset({200, 203})
"""Cache rules only change the freshness of successful full responses: a 404 or a redirect under a
content-addressed path is not content, and must not outlive the negative TTL."""

HEURISTIC_FRACTION = 0.1
"""§4.2.2: "10% of the time since Last-Modified" is the typical heuristic."""


class Source(enum.StrEnum):
    """Where a freshness lifetime came from (§4.2.1 order)."""

    S_MAXAGE = "s-maxage"
    MAX_AGE = "max-age"
    EXPIRES = "expires"
    HEURISTIC = "heuristic"
    NONE = "none"
    """No explicit information and no heuristic: lifetime 0."""


@dataclass(frozen=True, slots=True)
class Lifetime:
    """A freshness lifetime and how it was reached."""

    seconds: float
    """Freshness lifetime in seconds (never negative)."""
    source: Source
    """What the origin's response said (before any rule)."""
    rule: Rule | None = None
    """The cache rule that changed the lifetime, if any."""
    detail: str = ""
    """"rule-immutable", "rule-min-ttl" or "rule-max-ttl" when a rule changed it, else ""."""


def has_explicit_freshness(cc: CacheControl, headers: Headers) -> bool:
    """§4.2.1: s-maxage, max-age or Expires is present (whatever its value)."""
    return "s-maxage" in cc or "max-age" in cc or "expires" in headers


def explicit_lifetime(
    cc: CacheControl, headers: Headers, response_time: float
) -> tuple[float, Source] | None:
    """§4.2.1 for a shared cache: s-maxage, else max-age, else Expires - Date; None without any.

    Invalid or duplicated values resolve conservatively (§4.2.1: an invalid value means stale, several
    values the smallest); an invalid Expires means already expired (§5.3).
    """
    if "s-maxage" in cc:
        return float(cc.seconds("s-maxage", invalid=0) or 0), Source.S_MAXAGE
    if "max-age" in cc:
        return float(cc.seconds("max-age", invalid=0) or 0), Source.MAX_AGE
    if "expires" in headers:
        expires = header_date(headers, "expires", now=response_time)
        if expires is None:
            return 0.0, Source.EXPIRES
        date = header_date(headers, "date", now=response_time)
        # §4.2.1: Expires earlier than Date (or than receipt, without Date) means stale.
        return max(0.0, expires - (response_time if date is None else date)), Source.EXPIRES
    return None


def heuristic_lifetime(
    status: int, cc: CacheControl, headers: Headers, response_time: float, config: CacheConfig
) -> float:
    """§4.2.2: 10% of Date - Last-Modified, capped; only for heuristically cacheable or public responses."""
    if status not in HEURISTICALLY_CACHEABLE and "public" not in cc:
        return 0.0
    if 500 <= status and status != 501:  # transient errors are stored only with explicit freshness
        return 0.0
    if "set-cookie" in headers:  # hardening: cookies are shared only when the origin says how long
        return 0.0
    last_modified = header_date(headers, "last-modified", now=response_time)
    if last_modified is None:
        return 0.0
    date = header_date(headers, "date", now=response_time)
    lifetime = max(0.0, ((response_time if date is None else date) - last_modified) * HEURISTIC_FRACTION)
    lifetime = min(lifetime, config.heuristic_cap)
    if status in NEGATIVE:
        lifetime = min(lifetime, config.negative_ttl)
    return lifetime


def lifetime_of(
    status: int, headers: Headers, url: str, response_time: float, config: CacheConfig
) -> Lifetime:
    """The freshness lifetime of a response, with the first matching cache rule applied."""
    cc = parse_cache_control(headers)
    explicit = explicit_lifetime(cc, headers, response_time)
    if explicit is not None:
        base = Lifetime(*explicit)
    else:
        heuristic = heuristic_lifetime(status, cc, headers, response_time, config)
        base = Lifetime(heuristic, Source.HEURISTIC if heuristic > 0 else Source.NONE)
    rule = applicable_rule(status, headers, url, config)
    return base if rule is None else apply_rule(base, rule)


def applicable_rule(status: int, headers: Headers, url: str, config: CacheConfig) -> Rule | None:
    """The first rule matching the URL, if rules may apply to this response at all."""
    if status not in RULE_STATUSES or "set-cookie" in headers:
        return None  # hardening: a rule never makes a cookie-setting response shared
    return match_rule(config.rules, url)


def apply_rule(base: Lifetime, rule: Rule) -> Lifetime:
    """Clamp to [min_ttl, max_ttl], or fix to the rule's lifetime when it is immutable."""
    if rule.immutable:
        return Lifetime(rule.lifetime, base.source, rule, "rule-immutable")
    if rule.min_ttl is not None and base.seconds < rule.min_ttl:
        return Lifetime(rule.min_ttl, base.source, rule, "rule-min-ttl")
    if rule.max_ttl is not None and base.seconds > rule.max_ttl:
        return Lifetime(rule.max_ttl, base.source, rule, "rule-max-ttl")
    return base


def record_lifetime(stored: StoredResponse, config: CacheConfig) -> StoredResponse:
    """The stored response with the lifetime this config gives it written into its record, so `cache
    ls/show` can tell what decided it without the proxy's flags (call when storing and freshening)."""
    lifetime = lifetime_of(stored.status, stored.headers, stored.url, stored.response_time, config)
    return dataclasses.replace(
        stored, lifetime=lifetime.seconds, lifetime_source=lifetime.source.value, rule_detail=lifetime.detail
    )


def recorded_lifetime(stored: StoredResponse) -> Lifetime | None:
    """The lifetime recorded with the entry (record_lifetime); None for entries stored without one."""
    if stored.lifetime is None:
        return None
    try:
        source = Source(stored.lifetime_source)
    except ValueError:
        return None
    rule = None
    if stored.rule and stored.rule_detail:
        # A stand-in naming the rule the proxy applied (its pattern is not recorded: it matches no URL).
        rule = Rule("", name=stored.rule, immutable=stored.rule_detail == "rule-immutable")
    return Lifetime(max(0.0, stored.lifetime), source, rule, stored.rule_detail)


def freshness_lifetime(stored: StoredResponse, config: CacheConfig) -> Lifetime:
    """§4.2.1: the freshness lifetime of a stored response (kept with it for the latest config)."""
    known = facts(stored)
    latest = known.lifetime
    if latest is not None and latest[0] is config:
        return latest[1]  # type: ignore[return-value]  # set below: a Lifetime
    recorded = recorded_lifetime(stored) if config.recorded_lifetimes else None
    lifetime = recorded or lifetime_of(
        stored.status, stored.headers, stored.url, stored.response_time, config
    )
    known.lifetime = (config, lifetime)
    return lifetime


def cache_control_of(stored: StoredResponse) -> CacheControl:
    """§5.2: the stored response's Cache-Control directives, parsed once per stored response."""
    return facts(stored).cache_control


def current_age(stored: StoredResponse, now: float) -> float:
    """§4.2.3: corrected initial age (Age, Date, request and response times) plus time resident here."""
    return facts(stored).initial_age + max(0.0, now - stored.response_time)
