"""What `fwdproxy cache ls/show` say about stored entries: sizes, ages, freshness and the policy's reasoning."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fwdproxy import cache
from fwdproxy.cache import CacheConfig, Verdict
from fwdproxy.cache.policy import stale_forbidden
from fwdproxy.http_model import Request, StoredResponse
from fwdproxy.store.record import VARIANT_SEPARATOR


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
    """Where the lifetime came from: max-age, s-maxage, expires, heuristic, none."""
    hits: int
    """Hits counted for the URL's primary key (see fwdproxy.hits)."""
    vary: str
    """The Vary secondary key ("" when the response has no Vary)."""
    rule: str
    stored_at: float

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
        }


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
        source=lifetime.source.value,
        hits=hits.get(primary, 0),
        vary=secondary,
        rule=meta.rule or (lifetime.rule.name if lifetime.rule else ""),
        stored_at=meta.response_time,
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


def explain(meta: StoredResponse, config: CacheConfig, now: float) -> list[str]:
    """Freshness reasoning for one stored response, in sentences a person reads (`cache show`)."""
    lifetime = cache.freshness_lifetime(meta, config)
    age = cache.current_age(meta, now)
    ttl = lifetime.seconds - age
    cc = cache.parse_cache_control(meta.headers)
    source = {
        "s-maxage": f"s-maxage={cc.seconds('s-maxage', invalid=0)} (a shared cache prefers it, RFC 9111 §5.2.2.10)",
        "max-age": f"max-age={cc.seconds('max-age', invalid=0)} (§5.2.2.1)",
        "expires": "Expires minus Date (§5.3)",
        "heuristic": "heuristic: 10% of the time since Last-Modified, capped (§4.2.2)",
        "none": "no explicit lifetime and no heuristic applies, so it is stale at once (§4.2.1)",
    }[lifetime.source.value]
    lines = [f"freshness lifetime {lifetime.seconds:g}s, from {source}"]
    if lifetime.rule is not None:
        lines.append(f"cache rule {lifetime.rule.name!r} changed it ({lifetime.detail})")
    lines.append(f"current age {age:.0f}s (Age, Date and time held here, §4.2.3)")
    if ttl > 0:
        lines.append(f"fresh for {ttl:.0f}s more: served without asking the origin")
    else:
        lines.append(f"stale by {-ttl:.0f}s")
    forbid = stale_forbidden(meta, lifetime)
    if forbid:
        lines.append(f"{forbid}: never served stale without revalidation (§4.2.4)")
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
        "headers": [list(h) for h in meta.headers],
        "vary_request": [list(h) for h in meta.vary_request],
        "request_time": meta.request_time,
        "response_time": meta.response_time,
        "explanation": explain(meta, config, now),
    }
