"""Storing responses in a shared cache (RFC 9111 §3)."""

from __future__ import annotations

import pytest

from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.rules import Rule
from fwdproxy.cache.storability import is_storable
from fwdproxy.http_model import Headers, Request, Response

URL = "https://files.example/packages/a.whl"
FRESH = ("Cache-Control", "max-age=60")
AUTH = ("Authorization", "Bearer x")
IMMUTABLE = CacheConfig(rules=(Rule("https://files.example/*", immutable=True),))


@pytest.mark.parametrize(
    "method, request_fields, status, fields, expected",
    [
        pytest.param("GET", [], 200, [FRESH], "cacheable", id="3 GET 200 with max-age"),
        pytest.param("GET", [], 200, [], "cacheable", id="3 200 is heuristically cacheable"),
        pytest.param("POST", [], 200, [FRESH], "method", id="3 POST not stored"),
        pytest.param("HEAD", [], 200, [FRESH], "method", id="4.3.5 HEAD freshens, never stored"),
        pytest.param(
            "GET", [("Cache-Control", "no-store")], 200, [FRESH], "request-no-store", id="5.2.1.5 request"
        ),
        pytest.param("GET", [], 103, [FRESH], "status", id="3 interim response"),
        pytest.param("GET", [], 304, [FRESH], "status", id="4.3.4 304 freshens, never stored"),
        pytest.param("GET", [], 206, [FRESH], "partial", id="3.3 partial content"),
        pytest.param("GET", [], 200, [("Cache-Control", "no-store")], "no-store", id="5.2.2.5 no-store"),
        pytest.param(
            "GET", [], 200, [("Cache-Control", "nO-StOrE")], "no-store", id="5.2.2.5 case-insensitive"
        ),
        pytest.param(
            "GET",
            [],
            200,
            [("Cache-Control", "max-age=60, no-store"), ("Expires", "Thu, 18 Aug 2050 02:01:18 GMT")],
            "no-store",
            id="5.2.2.5 no-store despite max-age and Expires",
        ),
        pytest.param(
            "GET",
            [],
            200,
            [("Cache-Control", "no-store, must-understand, max-age=60")],
            "cacheable",
            id="5.2.2.3 must-understand with understood status overrides no-store",
        ),
        pytest.param(
            "GET",
            [],
            299,
            [("Cache-Control", "no-store, must-understand, max-age=60")],
            "must-understand",
            id="5.2.2.3 must-understand with unknown status",
        ),
        pytest.param(
            "GET",
            [],
            599,
            [("Cache-Control", "must-understand, max-age=60")],
            "must-understand",
            id="5.2.2.3 must-understand alone, unknown status",
        ),
        pytest.param(
            "GET", [], 200, [("Cache-Control", "private, max-age=60")], "private", id="5.2.2.7 private"
        ),
        pytest.param(
            "GET", [], 200, [("Cache-Control", "Private")], "private", id="5.2.2.7 case-insensitive"
        ),
        pytest.param(
            "GET",
            [],
            200,
            [("Cache-Control", 'private="Set-Cookie", max-age=60')],
            "private",
            id="5.2.2.7 qualified private treated as private",
        ),
        pytest.param("GET", [AUTH], 200, [FRESH], "authorization", id="3.5 Authorization with max-age only"),
        pytest.param(
            "GET",
            [AUTH],
            200,
            [("Cache-Control", "public, max-age=60")],
            "cacheable",
            id="3.5 Authorization public",
        ),
        pytest.param(
            "GET", [AUTH], 200, [("Cache-Control", "s-maxage=60")], "cacheable", id="3.5 with s-maxage"
        ),
        pytest.param(
            "GET",
            [AUTH],
            200,
            [("Cache-Control", "must-revalidate, max-age=60")],
            "cacheable",
            id="3.5 Authorization with must-revalidate",
        ),
        pytest.param("GET", [], 200, [FRESH, ("Vary", "*")], "vary-star", id="4.1 Vary: * never matches"),
        pytest.param(
            "GET",
            [],
            503,
            [("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
            "error-without-explicit-freshness",
            id="3 transient 503 without explicit freshness",
        ),
        pytest.param(
            "GET",
            [],
            500,
            [("Cache-Control", "public")],
            "error-without-explicit-freshness",
            id="3 public 500",
        ),
        pytest.param("GET", [], 503, [FRESH], "cacheable", id="3 503 with explicit freshness"),
        pytest.param("GET", [], 501, [], "cacheable", id="3 501 is heuristically cacheable"),
        pytest.param(
            "GET",
            [],
            200,
            [FRESH, ("Set-Cookie", "a=b")],
            "cacheable",
            id="3.1 Set-Cookie with explicit freshness",
        ),
        pytest.param(
            "GET",
            [],
            200,
            [("Expires", "Thu, 18 Aug 2050 02:01:18 GMT"), ("Set-Cookie", "a=b")],
            "cacheable",
            id="3.1 Set-Cookie with Expires",
        ),
        pytest.param(
            "GET",
            [],
            200,
            [("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"), ("Set-Cookie", "a=b")],
            "set-cookie-without-explicit-freshness",
            id="3.1 Set-Cookie under heuristic freshness (hardening)",
        ),
        pytest.param(
            "GET",
            [],
            200,
            [("Cache-Control", "no-cache")],
            "cacheable",
            id="5.2.2.4 no-cache is stored, revalidated",
        ),
        pytest.param("GET", [], 201, [], "not-cacheable", id="3 201 without explicit freshness"),
        pytest.param("GET", [], 201, [FRESH], "cacheable", id="3 201 with max-age"),
        pytest.param("GET", [], 302, [], "not-cacheable", id="3 302 without explicit freshness"),
        pytest.param(
            "GET", [], 299, [("Cache-Control", "public")], "cacheable", id="5.2.2.9 public makes storable"
        ),
        pytest.param(
            "GET", [], 200, [("Cache-Control", "unknown-ext=1")], "cacheable", id="5.2.3 unknown ignored"
        ),
    ],
)
def test_is_storable(
    method: str,
    request_fields: list[tuple[str, str]],
    status: int,
    fields: list[tuple[str, str]],
    expected: str,
) -> None:
    request = Request(method, URL, Headers.of(request_fields))
    decision = is_storable(request, Response(status, Headers.of(fields)), complete=True)
    assert decision.reason == expected
    assert bool(decision) is (expected == "cacheable")


def test_incomplete_and_generated_never_stored() -> None:
    request, response = Request("GET", URL), Response(200, Headers.of([FRESH]))
    assert is_storable(request, response, complete=False).reason == "incomplete"
    assert is_storable(request, response, complete=True, generated=True).reason == "generated"
    gateway_timeout = Response(504, Headers.of([FRESH]))
    assert is_storable(request, gateway_timeout, complete=True, generated=True).reason == "generated"


@pytest.mark.parametrize(
    "request_fields, fields, expected, rule",
    [
        pytest.param(
            [], [("Cache-Control", "max-age=0, no-cache")], "cacheable", True, id="rule immutable applies"
        ),
        pytest.param([], [("Cache-Control", "no-store")], "no-store", False, id="rule still obeys no-store"),
        pytest.param([], [("Cache-Control", "private")], "private", False, id="rule still obeys private"),
        pytest.param([AUTH], [], "authorization", False, id="rule still obeys Authorization"),
        pytest.param(
            [],
            [("Set-Cookie", "a=b")],
            "set-cookie-without-explicit-freshness",
            False,
            id="rule never shares cookies",
        ),
        pytest.param(
            [], [("Set-Cookie", "a=b"), FRESH], "cacheable", False, id="cookie with max-age, rule ignored"
        ),
    ],
)
def test_is_storable_with_rules(
    request_fields: list[tuple[str, str]], fields: list[tuple[str, str]], expected: str, rule: bool
) -> None:
    decision = is_storable(
        Request("GET", URL, Headers.of(request_fields)),
        Response(200, Headers.of(fields)),
        complete=True,
        config=IMMUTABLE,
    )
    assert decision.reason == expected
    assert (decision.rule is not None) is rule


def test_rule_makes_a_non_heuristic_status_storable_only_for_200() -> None:
    config = CacheConfig(rules=(Rule("https://files.example/*", min_ttl=60),))
    ok = is_storable(Request("GET", URL), Response(203), complete=True, config=config)
    assert ok.store and ok.rule is config.rules[0]
    no = is_storable(Request("GET", URL), Response(202), complete=True, config=config)
    assert no.reason == "not-cacheable"
