"""What to do with a request given what is stored: serve, revalidate, forward, serve stale or 504."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from fwdproxy.cache.config import DEFAULT_CONFIG, CacheConfig
from fwdproxy.cache.directives import CacheControl, request_cache_control
from fwdproxy.cache.facts import facts
from fwdproxy.cache.freshness import Lifetime, cache_control_of, current_age, freshness_lifetime
from fwdproxy.cache.key import select_variant
from fwdproxy.cache.status import CacheStatus, Fwd
from fwdproxy.http_model import Request, StoredResponse

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
ORIGIN_ERRORS = frozenset({500, 502, 503, 504})
"""RFC 5861 §4: the errors that let stale-if-error (and serve_stale_on_error) answer from the cache."""


class Verdict(enum.StrEnum):
    """The next step for a request (match on it and end with assert_never)."""

    SERVE = "serve"
    """Answer from the stored response (fresh, or stale where the client or offline mode allows it)."""
    REVALIDATE = "revalidate"
    """Forward with validators from validation.conditional_request_headers (§4.3.1)."""
    FORWARD = "forward"
    """Nothing usable: forward the request as it is."""
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"
    """RFC 5861 §3: answer from the stale response now and revalidate in the background."""
    GATEWAY_TIMEOUT = "gateway-timeout"
    """§5.2.1.7 only-if-cached (or offline mode) with nothing usable: answer 504."""


@dataclass(frozen=True, slots=True)
class LookupDecision:
    """The verdict for one request, with the numbers Cache-Status and Age need."""

    verdict: Verdict
    stored: StoredResponse | None = None
    """The selected variant (§4.1), when one matched."""
    fwd: Fwd | None = None
    """Why the cache did not simply answer (Cache-Status fwd); None for a plain fresh hit."""
    age: float = 0.0
    """Current age of the selected response (§4.2.3), seconds."""
    ttl: float = 0.0
    """Freshness lifetime minus age: remaining freshness, negative when stale."""
    detail: str = ""
    """What decided it, e.g. "rule-immutable", "max-stale", "request-no-cache", "must-revalidate"."""

    def cache_status(self, *, stored: bool = False, fwd_status: int | None = None) -> CacheStatus:
        """The Cache-Status for this decision; the caller adds what happened next."""
        hit = self.verdict is Verdict.SERVE
        return CacheStatus(
            hit=hit,
            fwd=None if hit else (self.fwd or Fwd.MISS),
            fwd_status=fwd_status,
            ttl=self.ttl if self.stored is not None else None,
            stored=stored,
            detail=self.detail,
        )


def stale_forbidden(stored: StoredResponse, lifetime: Lifetime) -> str:
    """§4.2.4: the response directive that forbids serving it stale, or ""."""
    known = facts(stored)
    if known.forbidding:
        return known.forbidding
    if known.no_cache and lifetime.detail != "rule-immutable":  # §5.2.2.4
        return "no-cache"
    return ""


def shared_with_credentials(cc: CacheControl) -> bool:
    """§3.5: public, s-maxage or must-revalidate let a shared cache reuse it for authenticated requests."""
    return "public" in cc or "s-maxage" in cc or "must-revalidate" in cc


def lookup(
    request: Request,
    variants: Sequence[StoredResponse],
    *,
    now: float,
    config: CacheConfig = DEFAULT_CONFIG,
) -> LookupDecision:
    """§4: what to do with a request, given every stored response for its primary key (maybe none)."""
    if request.method.upper() not in CACHEABLE_METHODS:
        return LookupDecision(Verdict.FORWARD, fwd=Fwd.METHOD, detail="method")
    rcc = request_cache_control(request.headers)
    only_if_cached = "only-if-cached" in rcc  # §5.2.1.7
    # Offline, or only-if-cached: whatever cannot be served becomes a 504 instead of a forward.
    blocked = "offline" if config.offline else "only-if-cached" if only_if_cached else ""
    stored = select_variant(request, variants)
    if stored is None:
        fwd = Fwd.VARY_MISS if variants else Fwd.URI_MISS
        return LookupDecision(
            Verdict.GATEWAY_TIMEOUT if blocked else Verdict.FORWARD, fwd=fwd, detail=blocked
        )
    lifetime = freshness_lifetime(stored, config)
    age = current_age(stored, now)
    ttl = lifetime.seconds - age
    cc = cache_control_of(stored)
    forbid = stale_forbidden(stored, lifetime)

    def decide(verdict: Verdict, fwd: Fwd | None, detail: str) -> LookupDecision:
        if verdict is Verdict.REVALIDATE and blocked:
            verdict, detail = Verdict.GATEWAY_TIMEOUT, detail or blocked  # cannot ask the origin
        return LookupDecision(verdict, stored, fwd, age, ttl, detail)

    cannot = Verdict.GATEWAY_TIMEOUT if blocked else Verdict.FORWARD
    if "no-store" in rcc:  # §5.2.1.5: the client wants nothing cached about this exchange; bypass
        return decide(cannot, Fwd.REQUEST, "request-no-store")
    if "authorization" in request.headers and not shared_with_credentials(cc):
        # Hardening beside §3.5: credentials may select a different response (a private package where
        # an anonymous client got a 404), so they are answered only from responses shared on purpose.
        return decide(cannot, Fwd.REQUEST, "authorization")
    if "no-cache" in rcc and lifetime.detail != "rule-immutable":
        return decide(Verdict.REVALIDATE, Fwd.REQUEST, "request-no-cache")  # §5.2.1.4 (a MUST, even offline)
    if forbid == "no-cache":
        return decide(Verdict.REVALIDATE, Fwd.STALE, "no-cache")  # §5.2.2.4: always validate
    refused = _request_refuses(rcc, cc, lifetime, age, ttl)
    if ttl > 0:
        if not refused:
            return decide(Verdict.SERVE, None, lifetime.detail)
        if config.offline:
            return decide(Verdict.SERVE, None, "offline")  # §4.2.4: disconnected, preferences yield
        return decide(Verdict.REVALIDATE, Fwd.REQUEST, refused)
    # §4.2.4: stale. Served only where the client, the origin (RFC 5861) or disconnection allows it,
    # and never against must-revalidate, proxy-revalidate or s-maxage.
    max_stale = _max_stale(rcc)
    if not forbid and max_stale is not None and -ttl <= max_stale:
        return decide(Verdict.SERVE, None, "max-stale")
    if config.offline:
        return (
            decide(Verdict.GATEWAY_TIMEOUT, Fwd.STALE, forbid)
            if forbid
            else decide(Verdict.SERVE, None, "offline")
        )
    swr = cc.seconds("stale-while-revalidate", invalid=None)
    if not forbid and not refused and swr is not None and -ttl <= swr:
        return decide(Verdict.STALE_WHILE_REVALIDATE, Fwd.STALE, "stale-while-revalidate")
    return decide(Verdict.REVALIDATE, Fwd.STALE, forbid or refused or lifetime.detail)


def _request_refuses(rcc: CacheControl, cc: CacheControl, lifetime: Lifetime, age: float, ttl: float) -> str:
    """§5.2.1.1, §5.2.1.3: the request directive that rules out the stored response, or ""."""
    if not rcc.directives:
        return ""
    if lifetime.detail == "rule-immutable":
        return ""  # the operator declared this URL's content fixed: a reload cannot change it
    max_age = rcc.seconds("max-age", invalid=0)  # an invalid value counts as max-age=0
    if max_age is not None and age > max_age and not ("immutable" in cc and ttl > 0):  # RFC 8246 §2
        return "request-max-age"
    min_fresh = rcc.seconds("min-fresh", invalid=None)
    if min_fresh is not None and ttl < min_fresh:
        return "request-min-fresh"
    return ""


def _max_stale(rcc: CacheControl) -> float | None:
    """§5.2.1.2: how stale the client accepts; None for not at all, inf for the bare directive."""
    if "max-stale" not in rcc:
        return None
    valued = rcc.seconds("max-stale", invalid=None)
    if valued is not None:
        return float(valued)  # the smallest given value, if several
    return float("inf") if None in rcc.values("max-stale") else None


@dataclass(frozen=True, slots=True)
class StaleOnError:
    """Whether a stored response may answer a request whose forward failed, and why (not)."""

    allowed: bool
    detail: str
    """What allowed it ("stale-if-error", "serve-stale-on-error", "max-stale", "fresh"), else why not."""

    def __bool__(self) -> bool:
        return self.allowed


def stale_on_error(
    request: Request,
    stored: StoredResponse,
    *,
    status: int | None,
    now: float,
    config: CacheConfig = DEFAULT_CONFIG,
) -> StaleOnError:
    """RFC 5861 §4 and --serve-stale-on-error: may ``stored`` answer when the origin failed?

    ``status`` is the origin's status, or None when the connection failed or timed out. Only 500, 502,
    503 and 504 count as failures. must-revalidate, proxy-revalidate, s-maxage and no-cache still forbid
    it (§4.2.4), and so do a request no-cache and a request max-age the entry is older than (without
    max-stale). ``serve_stale_on_error`` extends the response's own stale-if-error to every other entry;
    ``stale_if_disconnected`` does so for failures without a status only.
    """
    if status is not None and status not in ORIGIN_ERRORS:
        return StaleOnError(False, "not-an-error")
    lifetime = freshness_lifetime(stored, config)
    cc = cache_control_of(stored)
    rcc = request_cache_control(request.headers)
    if "no-cache" in rcc and lifetime.detail != "rule-immutable":
        return StaleOnError(False, "request-no-cache")
    if "authorization" in request.headers and not shared_with_credentials(cc):
        return StaleOnError(False, "authorization")  # as in lookup()
    if forbid := stale_forbidden(stored, lifetime):
        return StaleOnError(False, forbid)
    age = current_age(stored, now)
    max_stale = _max_stale(rcc)
    client_max_age = rcc.seconds("max-age", invalid=0)
    if client_max_age is not None and age > client_max_age and max_stale is None:
        # §5.2.1.1: the client refuses anything older (max-age=0: it insists on a validated answer).
        return StaleOnError(False, "request-max-age")
    staleness = age - lifetime.seconds
    if staleness < 0:
        return StaleOnError(True, "fresh")  # revalidation was the client's wish; the entry is fresh
    windows = (
        ("stale-if-error", cc.seconds("stale-if-error", invalid=None)),
        ("stale-if-error", rcc.seconds("stale-if-error", invalid=None)),  # RFC 5861 §4 request form
        ("max-stale", max_stale),
        ("serve-stale-on-error", config.serve_stale_on_error or None),
        # §4.2.4: a cache that cannot reach the origin (no status at all) may serve stale when disconnected.
        ("origin-error", (config.stale_if_disconnected or None) if status is None else None),
    )
    for name, window in windows:
        if window is not None and staleness <= window:
            return StaleOnError(True, name)
    return StaleOnError(False, "too-stale")
