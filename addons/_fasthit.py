"""The fast hit layer's one question to the cache: can this request be answered from memory now, and how?
(not an addon).

``decide`` runs the same steps as the cache addon's lookup for a GET/HEAD (unkeyed bypass, §4 lookup, Vary
selection) and builds the answer with the same ``answer``/``make_response`` code as the full path's hit, so
Vary, request directives, 304s, ranges, HEAD, Age and Cache-Status come out identical. It answers only a fresh
hit whose body is in the memory tier; anything else (a miss, stale, revalidation, a disk or big body) is None
and the full path takes the request. Point it at the cache exchange's hit decision when that exists.
"""

import math
from dataclasses import dataclass

from fwdproxy import cache, unkeyed
from fwdproxy import store as storage
from fwdproxy.cache import CacheConfig, Verdict
from fwdproxy.cache.answer import answer
from fwdproxy.http_model import Request, StoredResponse
from fwdproxy_addons._cachehttp import _encode


@dataclass(frozen=True, slots=True)
class FastAnswer:
    """A response made entirely from a memory-tier entry."""

    status: int
    reason: bytes
    fields: tuple[tuple[bytes, bytes], ...]
    """The header fields but Cache-Status, encoded as the full path encodes them (the same tuple for every
    hit of an entry within a second when ``stable``)."""
    cache_status: bytes
    """The Cache-Status value, the full path's last field (the same object within a second of ttl)."""
    stable: bool
    body: bytes
    """What follows the head: empty for HEAD and 304."""
    primary: str
    """The entry's primary key (hit counts)."""


@dataclass(frozen=True, slots=True)
class _Recent:
    """A decision that stays the same while nothing it read changes (see ``decide``)."""

    request: Request
    config: CacheConfig
    metas: tuple[StoredResponse, ...]
    key: str
    meta: StoredResponse
    body: bytes
    since: float
    until: float
    """The answer holds for ``since <= now < until`` (a clock set back leaves the window)."""
    answer: FastAnswer


RECENT_MAX = 4096


def decide(
    request: Request,
    store: storage.TieredStore,
    config: CacheConfig,
    now: float,
    recent: dict[int, _Recent] | None = None,
) -> FastAnswer | None:
    """The answer to ``request`` (method, key URL and headers as the cache addon would see them after the
    addons before it) from the memory tier, or None when the full path must handle it.

    ``recent`` (owned by the caller, keyed by the request object) remembers a plain fresh hit's answer
    until the first instant it could differ: the entry expires, or its Age or Cache-Status ttl changes (both
    whole seconds). It is used only while the store lists the very same stored records and holds the very
    same memory entry, the request has no Cache-Control or Pragma of its own (so only expiry matters) and
    offline mode is off: the answer is then exactly what the full computation gives."""
    if request.method not in ("GET", "HEAD") or unkeyed.bypass(request.headers, has_body=False) is not None:
        return None
    primary = cache.primary_key(request.method, request.url)
    listing = store.variants(primary)
    if not listing:
        return None
    if recent is not None and (known := recent.get(id(request))) is not None:
        if (
            known.request is request
            and known.config is config
            and known.since <= now < known.until
            and len(known.metas) == len(listing)
            and all(a is b for a, (_, b) in zip(known.metas, listing, strict=True))
            and (hit := store.memory_get(known.key)) is not None
            and hit.meta is known.meta
            and hit.body is known.body
        ):
            return known.answer
    decision = cache.lookup(request, [meta for _, meta in listing], now=now, config=config)
    if decision.verdict is not Verdict.SERVE:
        return None  # stale-while-revalidate needs a background flow: the full path starts it
    key = next((k for k, m in listing if m is decision.stored), "")
    entry = store.memory_get(key) if key else None
    if entry is None or not isinstance(entry.body, bytes):
        return None
    ans = answer(request, entry.meta, entry.body, now)
    if ans.file is not None:
        return None
    # make_response's fields, without building the mitmproxy Response the full path needs for its hooks.
    stable = ans.stable and ans.parts is None
    fields = ans.headers.latin1() if stable else _encode(ans.headers)
    status = cache.render_bytes(decision.cache_status())
    fast = FastAnswer(ans.status, ans.reason.encode(), fields, status, stable, ans.content, primary)
    if (
        recent is not None
        and stable
        and not config.offline
        and "cache-control" not in request.headers
        and "pragma" not in request.headers
    ):
        # Age shows floor(age), ttl floor(ttl) (cache.headers.age_value, cache.status): both change when
        # the clock passes the next whole second of either; the entry is fresh while ttl > 0.
        age, ttl = decision.age, decision.ttl
        window = min(ttl, math.floor(age) + 1 - age, ttl - math.floor(ttl))
        if window > 0:
            if len(recent) >= RECENT_MAX:
                recent.clear()
            metas = tuple(meta for _, meta in listing)
            recent[id(request)] = _Recent(
                request, config, metas, key, entry.meta, entry.body, now, now + window, fast
            )
    return fast
