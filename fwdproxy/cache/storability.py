"""Whether a shared cache may store a response (RFC 9111 §3), with the reason."""

from __future__ import annotations

from dataclasses import dataclass

from fwdproxy.cache.config import DEFAULT_CONFIG, CacheConfig
from fwdproxy.cache.directives import parse_cache_control, parse_vary, request_cache_control
from fwdproxy.cache.freshness import HEURISTICALLY_CACHEABLE, applicable_rule, has_explicit_freshness
from fwdproxy.cache.rules import Rule
from fwdproxy.http_model import Request, Response

UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 304, 307, 308}
    | {400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417}
    | {421, 422, 426, 451}
    | {500, 501, 502, 503, 504, 505}
)
"""§3, §5.2.2.3: status codes whose caching semantics we implement (RFC 9110 §15); must-understand
lets a response be stored despite no-store only with one of these."""

TRANSIENT_ERROR_EXCEPT = 501
"""5xx responses are stored only with explicit freshness, except 501, which RFC 9110 §15.6.2 makes
heuristically cacheable because it describes the server, not a passing failure."""


@dataclass(frozen=True, slots=True)
class StoreDecision:
    """Whether to store a response, and why."""

    store: bool
    reason: str
    """Short kebab-case reason, e.g. "cacheable", "no-store", "private", "authorization", "incomplete"."""
    rule: Rule | None = None
    """The cache rule that will govern the entry's freshness (store its name in StoredResponse.rule)."""

    def __bool__(self) -> bool:
        return self.store


def is_storable(
    request: Request,
    response: Response,
    *,
    complete: bool,
    generated: bool = False,
    config: CacheConfig = DEFAULT_CONFIG,
) -> StoreDecision:
    """§3: may a shared cache store this response to this request?

    ``complete``: the whole body arrived (§3.3: incomplete responses are not stored here).
    ``generated``: the proxy made the response itself (a 502/504 for a failed connection).
    """
    cc = parse_cache_control(response.headers)
    status = response.status
    if generated:
        return StoreDecision(False, "generated")
    if not complete:
        return StoreDecision(False, "incomplete")
    if request.method.upper() != "GET":
        # §3: only GET is cached here; a HEAD response has no body to answer a GET with, it only
        # freshens a stored GET (§4.3.5).
        return StoreDecision(False, "method")
    if "no-store" in request_cache_control(request.headers):
        return StoreDecision(False, "request-no-store")  # §5.2.1.5
    if status < 200 or status == 304:
        return StoreDecision(False, "status")  # §3: final responses only; a 304 freshens (§4.3.4)
    if status == 206:
        return StoreDecision(False, "partial")  # partial content is not combined here (§3.3)
    if "must-understand" in cc:
        # §5.2.2.3: must-understand overrides no-store only when the status code is understood.
        if status not in UNDERSTOOD_STATUSES:
            return StoreDecision(False, "must-understand")
    elif "no-store" in cc:
        return StoreDecision(False, "no-store")
    if "private" in cc:
        # §5.2.2.7: a shared cache never stores it; the field-name form is treated as the plain one.
        return StoreDecision(False, "private")
    if "authorization" in request.headers and not (
        "public" in cc or "s-maxage" in cc or "must-revalidate" in cc
    ):
        return StoreDecision(False, "authorization")  # §3.5
    if "*" in parse_vary(response.headers):
        return StoreDecision(False, "vary-star")  # §4.1: never matches, so storing it is useless
    explicit = has_explicit_freshness(cc, response.headers)
    if status >= 500 and status != TRANSIENT_ERROR_EXCEPT and not explicit:
        return StoreDecision(False, "error-without-explicit-freshness")
    if "set-cookie" in response.headers and not explicit:
        # Hardening (§3.1 allows it): a cookie is shared only under the origin's explicit freshness,
        # never under heuristic freshness or a cache rule.
        return StoreDecision(False, "set-cookie-without-explicit-freshness")
    rule = applicable_rule(status, response.headers, request.url, config)
    if not (explicit or "public" in cc or status in HEURISTICALLY_CACHEABLE or rule is not None):
        return StoreDecision(False, "not-cacheable")  # §3: nothing makes this status storable
    return StoreDecision(True, "cacheable", rule)
