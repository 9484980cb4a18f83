"""What `fwdproxy cache ls/show` say about stored entries: sizes, ages, freshness and the policy's reasoning."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, assert_never
from urllib.parse import urlsplit

from fwdproxy import cache
from fwdproxy.cache import CacheConfig, Verdict
from fwdproxy.cache.policy import stale_forbidden
from fwdproxy.http_model import Request, StoredResponse
from fwdproxy.store.record import VARIANT_SEPARATOR
from fwdproxy.units import format_duration


def split_key(key: str) -> tuple[str, str]:
    """(primary key, Vary secondary key) of a store key (see store.variant_key)."""
    primary, _, secondary = key.partition(VARIANT_SEPARATOR)
    return primary, secondary


def host_of(url: str) -> str:
    """The lower-cased host of a URL ("" when it has none)."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def host_matches(url: str, pattern: str) -> bool:
    """``--host`` filtering: a glob over the host (``*.pythonhosted.org``), or over ``host:port``."""
    pattern = pattern.lower()
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    return fnmatch.fnmatchcase(host, pattern) or fnmatch.fnmatchcase(f"{host}:{port}", pattern)


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One stored response (one variant), as `ls` lists it."""

    key: str
    url: str
    status: int
    size: int
    """Body bytes."""
    age: float
    """Current age (RFC 9111 §4.2.3), seconds."""
    lifetime: float
    ttl: float
    """Remaining freshness: lifetime minus age; negative once stale."""
    source: str
    """What set the lifetime: ``rule <name>`` when a cache rule did, else the origin's max-age, s-maxage,
    expires, heuristic or none."""
    hits: int
    """Hits counted for the URL's primary key (see fwdproxy.hits)."""
    vary: str
    """The Vary secondary key ("" when the response has no Vary)."""
    rule: str
    stored_at: float
    pieces: tuple[tuple[int, int], ...] = ()
    """A partial entry (RFC 9111 §3.3): the byte ranges it holds; () for a complete response."""
    full_length: int = -1
    """A partial entry: the length of the whole representation."""

    @property
    def partial(self) -> str:
        """``bytes 0-99, 500-599 of 1000`` for a partial entry, "" for a complete one."""
        if not self.pieces:
            return ""
        return f"bytes {', '.join(f'{a}-{b}' for a, b in self.pieces)} of {self.full_length}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "url": self.url,
            "status": self.status,
            "size": self.size,
            "age": round(self.age, 3),
            "lifetime": round(self.lifetime, 3),
            "ttl": round(self.ttl, 3),
            "fresh": self.ttl > 0,
            "source": self.source,
            "hits": self.hits,
            "vary": self.vary or None,
            "rule": self.rule or None,
            "stored_at": self.stored_at,
            "partial": (
                {"pieces": [list(p) for p in self.pieces], "length": self.full_length}
                if self.pieces
                else None
            ),
        }


def decided_by(meta: StoredResponse, lifetime: cache.Lifetime) -> str:
    """What set the lifetime, in one word or two: ``rule ci-pypi``, else the origin's ``max-age`` etc."""
    return f"rule {lifetime.rule.name}" if lifetime.rule is not None else lifetime.source.value


def row(key: str, meta: StoredResponse, config: CacheConfig, now: float, hits: Mapping[str, int]) -> EntryRow:
    """The `ls` row of one entry."""
    lifetime = cache.freshness_lifetime(meta, config)
    age = cache.current_age(meta, now)
    primary, secondary = split_key(key)
    return EntryRow(
        key=key,
        url=meta.url,
        status=meta.status,
        size=meta.body_length,
        age=age,
        lifetime=lifetime.seconds,
        ttl=lifetime.seconds - age,
        source=decided_by(meta, lifetime),
        hits=hits.get(primary, 0),
        vary=secondary,
        rule=meta.rule or (lifetime.rule.name if lifetime.rule else ""),
        stored_at=meta.response_time,
        pieces=meta.pieces,
        full_length=meta.full_length,
    )


def rows(
    listing: Iterable[tuple[str, StoredResponse]],
    config: CacheConfig,
    now: float,
    hits: Mapping[str, int],
    host: str | None = None,
) -> list[EntryRow]:
    """`ls` rows, filtered by host glob, sorted by URL."""
    found = [row(k, m, config, now, hits) for k, m in listing if host is None or host_matches(m.url, host)]
    return sorted(found, key=lambda r: (r.url, r.vary))


def status_text(status: int, reason: str) -> str:
    """``200 OK``: the stored reason phrase, or the standard one when none was sent (HTTP/2 has none)."""
    if reason:
        return f"{status} {reason}"
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def preset_of(rule_name: str) -> str | None:
    """The preset a rule belongs to (``ci`` for ``ci-pypi``), or None for a rule of a config file."""
    return next((p for p, rules in cache.PRESETS.items() if any(r.name == rule_name for r in rules)), None)


def _rule_label(name: str) -> str:
    preset = preset_of(name)
    return f"cache rule {name!r}" + (f" (--preset {preset})" if preset else "")


def _origin_said(meta: StoredResponse, source: cache.Source, *, overridden: bool) -> str:
    """What the origin's headers give, as the reason for the lifetime (or, when a rule overrode them, as
    background that must not read like the verdict)."""
    cc = cache.parse_cache_control(meta.headers)
    match source:
        case cache.Source.S_MAXAGE:
            return f"s-maxage={cc.seconds('s-maxage', invalid=0)} (a shared cache prefers it, RFC 9111 §5.2.2.10)"
        case cache.Source.MAX_AGE:
            return f"max-age={cc.seconds('max-age', invalid=0)} (§5.2.2.1)"
        case cache.Source.EXPIRES:
            return "Expires minus Date (§5.3)"
        case cache.Source.HEURISTIC:
            return "heuristic: 10% of the time since Last-Modified, capped (§4.2.2)"
        case cache.Source.NONE if overridden:
            return "no explicit lifetime and no heuristic (§4.2.1)"
        case cache.Source.NONE:
            return "no explicit lifetime and no heuristic applies, so it is stale at once (§4.2.1)"
    assert_never(source)


def _seconds(seconds: float) -> str:
    whole = f"{seconds:.0f}s"
    return whole if seconds < 60 else f"{whole} ({format_duration(seconds)})"


def _lifetime_lines(meta: StoredResponse, lifetime: cache.Lifetime, recorded: bool) -> list[str]:
    rule = lifetime.rule
    if rule is None:
        lines = [
            f"freshness lifetime {_seconds(lifetime.seconds)}, from {_origin_said(meta, lifetime.source, overridden=False)}"
        ]
        if meta.rule:
            lines.append(f"{_rule_label(meta.rule)} matched and left the origin's lifetime as it was")
    else:
        how = {
            "rule-immutable": "immutable: fresh that long whatever the origin says",
            "rule-min-ttl": "raised to the rule's min_ttl",
            "rule-max-ttl": "capped at the rule's max_ttl",
        }.get(lifetime.detail, lifetime.detail)
        lines = [
            f"freshness lifetime {_seconds(lifetime.seconds)}, set by {_rule_label(rule.name)}: {how}",
            f"the origin's headers alone give {_origin_said(meta, lifetime.source, overridden=True)}; the rule decides",
        ]
    if recorded:
        lines.append("as the proxy recorded it when it stored (or last revalidated) the entry")
    elif meta.lifetime is None:
        lines.append(
            "computed here from the stored headers and the rules given (the entry has no recorded lifetime)"
        )
    else:
        lines.append("computed here from the stored headers and the rules given")
    return lines


def explain(meta: StoredResponse, config: CacheConfig, now: float) -> list[str]:
    """Freshness reasoning for one stored response, in sentences a person reads (`cache show`).

    With ``config.recorded_lifetimes`` (as `cache show` runs) an entry is explained by what the proxy
    recorded when it stored it; an older entry by its headers and ``config``'s rules.
    """
    lifetime = cache.freshness_lifetime(meta, config)
    recorded = config.recorded_lifetimes and cache.recorded_lifetime(meta) is not None
    age = cache.current_age(meta, now)
    ttl = lifetime.seconds - age
    lines = _lifetime_lines(meta, lifetime, recorded)
    lines.append(f"current age {age:.0f}s (Age, Date and time held here, §4.2.3)")
    if ttl > 0:
        lines.append(f"fresh for {ttl:.0f}s more: served without asking the origin")
    else:
        lines.append(f"stale by {-ttl:.0f}s")
    forbid = stale_forbidden(meta, lifetime)
    if forbid:
        lines.append(f"{forbid}: never served stale without revalidation (§4.2.4)")
    if meta.pieces:
        held = ", ".join(f"{a}-{b}" for a, b in meta.pieces)
        lines.append(f"partial (§3.3): holds bytes {held} of {meta.full_length}, {meta.body_length} in all")
        lines.append(
            "a range inside them is answered from them while fresh; a plain GET asks the origin for the rest"
        )
        return lines
    request = Request("GET", meta.url, meta.vary_request)
    decision = cache.lookup(request, [meta], now=now, config=config)
    validators = [f"{n}: {meta.headers.get(n)}" for n in ("ETag", "Last-Modified") if n in meta.headers]
    match decision.verdict:
        case Verdict.SERVE:
            lines.append("a plain GET now: a hit")
        case Verdict.STALE_WHILE_REVALIDATE:
            lines.append("a plain GET now: served stale while revalidating in the background (RFC 5861)")
        case Verdict.REVALIDATE:
            how = " and ".join(validators) if validators else "no validator (so a full refetch)"
            lines.append(f"a plain GET now: revalidated with the origin using {how}")
        case Verdict.FORWARD | Verdict.GATEWAY_TIMEOUT:
            lines.append(f"a plain GET now: forwarded ({decision.detail or decision.fwd or 'not reusable'})")
    return lines


def show(
    key: str, meta: StoredResponse, config: CacheConfig, now: float, hits: Mapping[str, int]
) -> dict[str, Any]:
    """Everything `cache show` prints about one variant, as plain values."""
    r = row(key, meta, config, now, hits)
    return {
        **r.as_dict(),
        "reason": meta.reason,
        "status_text": status_text(meta.status, meta.reason),
        "recorded": config.recorded_lifetimes and cache.recorded_lifetime(meta) is not None,
        "headers": [list(h) for h in meta.headers],
        "vary_request": [list(h) for h in meta.vary_request],
        "request_time": meta.request_time,
        "response_time": meta.response_time,
        "explanation": explain(meta, config, now),
    }
