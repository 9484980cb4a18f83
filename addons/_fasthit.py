"""The fast hit layer's one question to the cache: can this request be answered from memory now, and how?
(not an addon).

``decide`` asks the cache exchange's own hit decision (fwdproxy/cache/exchange.py ``hit``: the same
Exchange, §4 lookup, Vary selection and answer.py rendering the cache addon drives for a flow), so Vary,
request directives, 304s, ranges, HEAD, Age and Cache-Status come out identical. It answers only when the
exchange serves from a body in the memory tier, or from a disk-tier body the store reads whole (at most
``disk_max`` bytes: what the full path too reads on the event loop, checksum verified, and promotes to memory
when it fits); anything else (a miss, a stale entry to validate, a body streamed from its file, a 504) is
None and the full path takes the request.
"""

import math
from dataclasses import dataclass

from fwdproxy import cache, unkeyed
from fwdproxy import store as storage
from fwdproxy.cache import CacheConfig, exchange
from fwdproxy.cache.answer import close
from fwdproxy.cache.states import State
from fwdproxy.http_model import Request
from fwdproxy_addons._cachehttp import _encode


@dataclass(frozen=True, slots=True)
class FastAnswer:
    """A response made entirely from a memory-tier entry."""

    status: int
    reason: bytes
    fields: tuple[tuple[bytes, bytes], ...]
    """The header fields but Cache-Status, encoded as the full path encodes them."""
    cache_status: bytes
    """The Cache-Status value, the full path's last field."""
    body: bytes
    """What follows the head: empty for HEAD and 304."""
    primary: str
    """The entry's primary key (hit counts, the background revalidation's key)."""
    key: str
    """The entry's key in the store."""
    revalidate: bool
    """RFC 5861 §3: served stale while revalidating; the key wants one background revalidation."""
    until: float
    """The same request gets exactly this answer from this entry while ``now < until`` (0: do not reuse it):
    Age and Cache-Status ttl show whole seconds, and a fresh entry stays fresh until its ttl runs out."""
    from_disk: bool
    """The body was read from the disk tier (not held in memory)."""
    whole: bool
    """``body`` is the stored body itself (not a HEAD, 304 or range): another read of it gives the answer."""


def decide(
    request: Request, store: storage.TieredStore, config: CacheConfig, now: float, *, disk_max: int = 0
) -> FastAnswer | None:
    """The answer to ``request`` (method, key URL and headers as the cache addon would see them after the
    addons before it) from the memory tier, or from the disk tier for a body of at most ``disk_max`` bytes;
    None when the full path must handle it."""
    if request.method not in ("GET", "HEAD"):
        return None
    bypass = unkeyed.bypass(request.headers, has_body=False)
    primary = cache.primary_key(request.method, request.url)
    listing = store.variants(primary)
    if not listing:
        return None  # nothing stored: whatever the exchange decides, it is not a hit

    read: list[tuple[bytes, bool]] = []
    """The body hit() asked for, and whether it came from the disk tier."""

    def body_of(key: str) -> bytes | None:
        entry = store.memory_get(key)
        from_disk = False
        if entry is None and disk_max > 0:
            length = next((m.body_length for k, m in listing if k == key), -1)
            if 0 <= length <= disk_max:
                entry = store.get(key)  # the full path's read (_checked_get), promoted to memory if it fits
                from_disk = True
        if entry is None:
            return None
        if not isinstance(entry.body, bytes):
            close(entry.body)  # a file to stream (or to check first): the full path's
            return None
        read.append((entry.body, from_disk))
        return entry.body

    ex, ans = exchange.hit(request, listing, body_of, now=now, config=config, bypass=bypass)
    if ans is None or ans.file is not None:
        return None
    assert ex.state is State.SERVED
    revalidate = ex.decision.verdict is cache.Verdict.STALE_WHILE_REVALIDATE
    stable = ans.stable and ans.parts is None
    fields = ans.headers.latin1() if stable else _encode(ans.headers)
    until = 0.0
    if (
        stable
        and not revalidate
        and not config.offline
        and "cache-control" not in request.headers
        and "pragma" not in request.headers
    ):
        # Age shows floor(age), ttl floor(ttl) (cache.headers.age_value, cache.status): both change when the
        # clock passes the next whole second of either; the entry is fresh while ttl > 0. Without request
        # directives (and offline mode) nothing but the clock and the entry decides the answer.
        age, ttl = ex.decision.age, ex.decision.ttl
        window = min(ttl, math.floor(age) + 1 - age, ttl - math.floor(ttl))
        if window > 0:
            until = now + window
    return FastAnswer(
        ans.status,
        ans.reason.encode(),
        fields,
        cache.render_bytes(ex.status()),
        ans.content,
        ex.primary,
        ex.selected,
        revalidate,
        until,
        read[0][1],
        ans.content is read[0][0] and request.method == "GET",
    )
