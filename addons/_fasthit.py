"""The fast hit layer's one question to the cache: can this request be answered from memory now, and how?
(not an addon).

``decide`` runs the same steps as the cache addon's lookup for a GET/HEAD (unkeyed bypass, §4 lookup, Vary
selection) and builds the answer with the same ``answer``/``make_response`` code as the full path's hit, so
Vary, request directives, 304s, ranges, HEAD, Age and Cache-Status come out identical. It answers only a fresh
hit whose body is in the memory tier; anything else (a miss, stale, revalidation, a disk or big body) is None
and the full path takes the request. Point it at the cache exchange's hit decision when that exists.
"""

from dataclasses import dataclass

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons._cachehttp import _encode, _encoded, answer
from fwdproxy import cache, unkeyed
from fwdproxy import store as storage
from fwdproxy.cache import CacheConfig, Verdict
from fwdproxy.http_model import Request


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


def decide(
    request: Request, store: storage.TieredStore, config: CacheConfig, now: float
) -> FastAnswer | None:
    """The answer to ``request`` (method, key URL and headers as the cache addon would see them after the
    addons before it) from the memory tier, or None when the full path must handle it."""
    if request.method not in ("GET", "HEAD") or unkeyed.bypass(request.headers, has_body=False) is not None:
        return None
    primary = cache.primary_key(request.method, request.url)
    listing = store.variants(primary)
    if not listing:
        return None
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
    fields = _encoded(ans.headers) if stable else _encode(ans.headers)
    status = cache.render_bytes(decision.cache_status())
    return FastAnswer(ans.status, ans.reason.encode(), fields, status, stable, ans.content, primary)
