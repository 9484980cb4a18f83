"""Properties of the cache policy over arbitrary header text (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.directives import format_http_date
from fwdproxy.cache.freshness import current_age, freshness_lifetime
from fwdproxy.cache.headers import served_headers, storable_headers
from fwdproxy.cache.invalidation import invalidated_keys
from fwdproxy.cache.key import normalize_url, primary_key, secondary_key, select_variant
from fwdproxy.cache.policy import Verdict, lookup, stale_on_error
from fwdproxy.cache.rules import PRESET_CI, match_rule
from fwdproxy.cache.status import CacheStatus, Fwd, render
from fwdproxy.cache.storability import is_storable
from fwdproxy.cache.validation import (
    client_conditional_matches,
    conditional_request_headers,
    freshen_from_head,
    not_modified_response,
    on_not_modified,
)
from fwdproxy.http_model import Headers, Request, Response, StoredResponse

NOW = 1_700_000_000.0
URL = "https://example.com/x"

DIRECTIVES = [
    "max-age=60", "max-age=0", "max-age=abc", "s-maxage=30", "no-cache", "no-store", "private", "public",
    "must-revalidate", "proxy-revalidate", "immutable", "must-understand", "stale-while-revalidate=60",
    "stale-if-error=60", "max-stale", "max-stale=30", "min-fresh=10", "only-if-cached", 'max-age="5"',
    "max-age=99999999999999999999",
]  # fmt: skip

cache_control = st.one_of(
    st.lists(st.sampled_from(DIRECTIVES), max_size=4).map(", ".join),
    st.text(max_size=40),
)
dates = st.one_of(
    st.floats(NOW - 10**8, NOW + 10**8).map(format_http_date),
    st.sampled_from(["0", "garbage", "Thu, 18 Aug 50 02:01:18 GMT", "Thursday, 18-Aug-50 02:01:18 GMT"]),
    st.text(max_size=30),
)
field_value = st.one_of(
    st.text(max_size=30), st.sampled_from(['"a"', 'W/"a"', "*", "10", "7200.0", "2147483648"])
)
NAMES = ["Cache-Control", "Expires", "Date", "Age", "Last-Modified", "ETag", "Vary", "Set-Cookie", "Pragma",
         "Connection", "Content-Length", "If-None-Match", "If-Modified-Since", "Authorization", "Location"]  # fmt: skip


@st.composite
def headers(draw: st.DrawFn) -> Headers:
    fields: list[tuple[str, str]] = []
    if draw(st.booleans()):
        fields.append(("Cache-Control", draw(cache_control)))
    for name in ("Expires", "Date", "Last-Modified"):
        if draw(st.booleans()):
            fields.append((name, draw(dates)))
    fields += draw(st.lists(st.tuples(st.sampled_from(NAMES), field_value), max_size=4))
    return Headers.of(fields)


@st.composite
def stored_responses(draw: st.DrawFn) -> StoredResponse:
    received = draw(st.floats(NOW - 10**6, NOW))
    status = draw(st.sampled_from([200, 203, 204, 301, 404, 410, 500, 501, 503, 599]))
    return StoredResponse(URL, status, "", draw(headers()), received - draw(st.floats(0, 10)), received, 10)


config = st.builds(
    CacheConfig,
    negative_ttl=st.floats(0, 1000),
    heuristic_cap=st.floats(0, 10**6),
    serve_stale_on_error=st.floats(0, 10**6),
    rules=st.sampled_from([(), PRESET_CI]),
)


@settings(max_examples=300)
@given(stored_responses(), headers(), st.floats(0, 10**7), st.floats(0, 10**7), config)
def test_staleness_is_monotonic_in_age(
    s: StoredResponse, request_headers: Headers, later_a: float, later_b: float, cfg: CacheConfig
) -> None:
    """§4.2: once a response is not servable at some age, it is not servable at any greater age."""
    t1, t2 = sorted((NOW + later_a, NOW + later_b))
    request = Request("GET", URL, request_headers)
    first = lookup(request, [s], now=t1, config=cfg)
    second = lookup(request, [s], now=t2, config=cfg)
    assert second.ttl <= first.ttl
    assert current_age(s, t2) >= current_age(s, t1)
    if first.verdict is not Verdict.SERVE:
        assert second.verdict is not Verdict.SERVE


@given(stored_responses(), config)
def test_lifetime_and_age_are_never_negative(s: StoredResponse, cfg: CacheConfig) -> None:
    assert freshness_lifetime(s, cfg).seconds >= 0
    assert current_age(s, NOW) >= 0


@settings(max_examples=200)
@given(
    stored_responses(), headers(), headers(), st.integers(100, 599), st.sampled_from(["GET", "HEAD", "POST"])
)
def test_policy_never_raises(s: StoredResponse, request_headers: Headers, response_headers: Headers, status: int,
                             method: str) -> None:  # fmt: skip
    request = Request(method, URL, request_headers)
    response = Response(status, response_headers)
    is_storable(request, response, complete=True)
    lookup(request, [s], now=NOW)
    stale_on_error(request, s, status=503, now=NOW)
    conditional_request_headers(request, [s])
    client_conditional_matches(request, s)
    not_modified_response(s, now=NOW)
    on_not_modified(request, response, [s], request_time=NOW, response_time=NOW)
    freshen_from_head(s, response, request_time=NOW, response_time=NOW)
    invalidated_keys(request, response)
    storable_headers(response_headers, response_time=NOW)
    served_headers(s, now=NOW)
    secondary_key(response_headers, request_headers)
    select_variant(request, [s])


@given(st.text(max_size=80))
def test_keys_and_rules_never_raise(url: str) -> None:
    assert normalize_url(normalize_url(url)) == normalize_url(url)
    primary_key("GET", url)
    match_rule(PRESET_CI, url)
    lookup(Request("GET", url), [], now=NOW)
    invalidated_keys(Request("POST", url), Response(201, Headers.of({"Location": url})))


@given(st.text(), st.text(), st.floats(allow_nan=True, allow_infinity=True))
def test_cache_status_is_always_ascii(name: str, detail: str, ttl: float) -> None:
    rendered = render(CacheStatus(fwd=Fwd.STALE, ttl=ttl, detail=detail, key=detail), name)
    assert rendered.isascii() and "\n" not in rendered
