"""Lookup verdicts (RFC 9111 §4, §4.2.4, §5.2) and serving stale on error (RFC 5861)."""

from __future__ import annotations

import pytest

from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.directives import format_http_date
from fwdproxy.cache.policy import Verdict, lookup, stale_on_error
from fwdproxy.cache.rules import Rule
from fwdproxy.cache.status import Fwd, render
from fwdproxy.http_model import Headers, Request, StoredResponse

NOW = 1_700_000_000.0
URL = "https://files.example/packages/a.whl"
IMMUTABLE = CacheConfig(rules=(Rule("https://files.example/*", immutable=True),))
OFFLINE = CacheConfig(offline=True)
F = list[tuple[str, str]]


def stored(
    fields: F, *, resident: float = 0, status: int = 200, vary_request: F | None = None
) -> StoredResponse:
    """A response received ``resident`` seconds before NOW, with Date set to its receipt."""
    received = NOW - resident
    headers = Headers.of([("Date", format_http_date(received)), *fields])
    return StoredResponse(URL, status, "", headers, received, received, 0, Headers.of(vary_request or []))


def cc(value: str) -> F:
    return [("Cache-Control", value)]


@pytest.mark.parametrize(
    "fields, resident, request_fields, config, verdict, fwd, detail",
    [
        pytest.param(cc("max-age=60"), 30, [], None, Verdict.SERVE, None, "", id="4.2 fresh within max-age"),
        pytest.param(
            cc("max-age=60"), 90, [], None, Verdict.REVALIDATE, Fwd.STALE, "", id="4.2 stale after max-age"
        ),
        pytest.param(cc("max-age=0"), 0, [], None, Verdict.REVALIDATE, Fwd.STALE, "", id="5.2.2.1 max-age=0"),
        pytest.param(
            cc("s-maxage=10, max-age=60"),
            30,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "s-maxage",
            id="5.2.2.10 s-maxage wins",
        ),
        pytest.param(
            [*cc("max-age=3600"), ("Age", "7200")],
            0,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "",
            id="4.2.3 Age beyond max-age",
        ),
        pytest.param(
            [*cc("max-age=3600"), ("Age", "2147483648")],
            0,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "",
            id="1.2.2 Age 2147483648 is very old",
        ),
        pytest.param(
            [*cc("max-age=3600"), ("Age", "7200.0")],
            0,
            [],
            None,
            Verdict.SERVE,
            None,
            "",
            id="5.1 Age 7200.0 ignored",
        ),
        pytest.param(
            cc("max-age=2147483648"),
            86400,
            [],
            None,
            Verdict.SERVE,
            None,
            "",
            id="1.2.2 max-age=2^31 is fresh",
        ),
        pytest.param(
            [("Expires", "Thu, 18 Aug 50 02:01:18 GMT")],
            0,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "",
            id="5.3 invalid Expires is already expired",
        ),
        pytest.param(
            [("Expires", format_http_date(NOW - 10))],
            0,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "",
            id="4.2.1 Expires before Date is stale",
        ),
        pytest.param(
            [("Expires", format_http_date(NOW + 60))],
            0,
            [],
            None,
            Verdict.SERVE,
            None,
            "",
            id="5.3 future Expires",
        ),
        pytest.param(
            cc("max-age=600, no-cache"),
            0,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "no-cache",
            id="5.2.2.4 no-cache always revalidates",
        ),
        pytest.param(
            cc("max-age=600, No-CaChE"),
            0,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "no-cache",
            id="5.2 No-CaChE is no-cache",
        ),
        pytest.param(
            cc('max-age=600, no-cache="Set-Cookie"'),
            0,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "no-cache",
            id="5.2.2.4 qualified no-cache treated as no-cache",
        ),
        pytest.param(
            cc('max-age=600, unknown-directive, x="y"'),
            0,
            [],
            None,
            Verdict.SERVE,
            None,
            "",
            id="5.2.3 unknown directives ignored",
        ),
        pytest.param(
            cc("max-age=600"),
            0,
            cc("no-cache"),
            None,
            Verdict.REVALIDATE,
            Fwd.REQUEST,
            "request-no-cache",
            id="5.2.1.4 request no-cache",
        ),
        pytest.param(
            cc("max-age=600"),
            0,
            [("Pragma", "no-cache")],
            None,
            Verdict.REVALIDATE,
            Fwd.REQUEST,
            "request-no-cache",
            id="5.4 Pragma no-cache without Cache-Control",
        ),
        pytest.param(
            cc("max-age=600"),
            0,
            [("Pragma", "no-cache"), *cc("max-age=600")],
            None,
            Verdict.SERVE,
            None,
            "",
            id="5.4 Pragma ignored when Cache-Control present",
        ),
        pytest.param(
            cc("max-age=600"),
            0,
            cc("no-store"),
            None,
            Verdict.FORWARD,
            Fwd.REQUEST,
            "request-no-store",
            id="5.2.1.5 request no-store bypasses",
        ),
        pytest.param(
            cc("max-age=600"),
            30,
            cc("max-age=0"),
            None,
            Verdict.REVALIDATE,
            Fwd.REQUEST,
            "request-max-age",
            id="5.2.1.1 request max-age=0",
        ),
        pytest.param(
            cc("max-age=600"), 30, cc("max-age=60"), None, Verdict.SERVE, None, "", id="5.2.1.1 young enough"
        ),
        pytest.param(
            cc("max-age=600"),
            30,
            cc("max-age=abc"),
            None,
            Verdict.REVALIDATE,
            Fwd.REQUEST,
            "request-max-age",
            id="5.2.1.1 invalid request max-age counts as 0",
        ),
        pytest.param(
            cc("max-age=600, immutable"),
            30,
            cc("max-age=0"),
            None,
            Verdict.SERVE,
            None,
            "",
            id="RFC 8246 immutable: a reload does not revalidate a fresh response",
        ),
        pytest.param(
            cc("max-age=60, immutable"),
            90,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "",
            id="RFC 8246 stale immutable is revalidated",
        ),
        pytest.param(
            cc("max-age=60"),
            30,
            cc("min-fresh=40"),
            None,
            Verdict.REVALIDATE,
            Fwd.REQUEST,
            "request-min-fresh",
            id="5.2.1.3 min-fresh not met",
        ),
        pytest.param(
            cc("max-age=60"), 30, cc("min-fresh=10"), None, Verdict.SERVE, None, "", id="5.2.1.3 met"
        ),
        pytest.param(
            cc("max-age=60"),
            1000,
            cc("max-stale"),
            None,
            Verdict.SERVE,
            None,
            "max-stale",
            id="5.2.1.2 bare max-stale",
        ),
        pytest.param(
            cc("max-age=60"),
            90,
            cc("max-stale=100"),
            None,
            Verdict.SERVE,
            None,
            "max-stale",
            id="5.2.1.2 within",
        ),
        pytest.param(
            cc("max-age=60"),
            90,
            cc("max-stale=10"),
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "",
            id="5.2.1.2 beyond",
        ),
        pytest.param(
            cc("max-age=60"),
            90,
            cc("max-stale=abc"),
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "",
            id="5.2.1.2 invalid max-stale ignored",
        ),
        pytest.param(
            cc("max-age=60, must-revalidate"),
            90,
            cc("max-stale"),
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "must-revalidate",
            id="5.2.2.2 must-revalidate beats max-stale",
        ),
        pytest.param(
            cc("max-age=60, proxy-revalidate"),
            90,
            cc("max-stale"),
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "proxy-revalidate",
            id="5.2.2.8 proxy-revalidate beats max-stale",
        ),
        pytest.param(
            cc("s-maxage=60"),
            90,
            cc("max-stale"),
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "s-maxage",
            id="5.2.2.10 s-maxage implies proxy-revalidate",
        ),
        pytest.param(
            cc("max-age=60, must-revalidate"),
            30,
            [],
            None,
            Verdict.SERVE,
            None,
            "",
            id="5.2.2.2 fresh is served",
        ),
        pytest.param(
            cc("max-age=1, stale-while-revalidate=3600"),
            100,
            [],
            None,
            Verdict.STALE_WHILE_REVALIDATE,
            Fwd.STALE,
            "stale-while-revalidate",
            id="RFC 5861 3 within the window",
        ),
        pytest.param(
            cc("max-age=1, stale-while-revalidate=10"),
            100,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "",
            id="RFC 5861 3 after the window",
        ),
        pytest.param(
            cc("max-age=1, stale-while-revalidate=3600, must-revalidate"),
            100,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "must-revalidate",
            id="RFC 5861 3 never with must-revalidate",
        ),
        pytest.param(
            cc("max-age=1, stale-while-revalidate=3600, proxy-revalidate"),
            100,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "proxy-revalidate",
            id="RFC 5861 3 never with proxy-revalidate",
        ),
        pytest.param(
            cc("max-age=1, stale-while-revalidate=3600, no-cache"),
            100,
            [],
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "no-cache",
            id="RFC 5861 3 never with no-cache",
        ),
        pytest.param(
            cc("max-age=1, stale-while-revalidate=3600"),
            100,
            cc("max-age=0"),
            None,
            Verdict.REVALIDATE,
            Fwd.STALE,
            "request-max-age",
            id="RFC 5861 3 not when the client wants it young",
        ),
        pytest.param(
            cc("max-age=60"),
            30,
            cc("only-if-cached"),
            None,
            Verdict.SERVE,
            None,
            "",
            id="5.2.1.7 fresh is served",
        ),
        pytest.param(
            cc("max-age=60"),
            90,
            cc("only-if-cached"),
            None,
            Verdict.GATEWAY_TIMEOUT,
            Fwd.STALE,
            "only-if-cached",
            id="5.2.1.7 stale gives 504",
        ),
        pytest.param(
            cc("max-age=60"),
            30,
            cc("only-if-cached, no-cache"),
            None,
            Verdict.GATEWAY_TIMEOUT,
            Fwd.REQUEST,
            "request-no-cache",
            id="5.2.1.7 with no-cache gives 504",
        ),
        pytest.param(cc("max-age=60"), 30, [], OFFLINE, Verdict.SERVE, None, "", id="offline fresh"),
        pytest.param(
            cc("max-age=60"), 900, [], OFFLINE, Verdict.SERVE, None, "offline", id="4.2.4 offline stale"
        ),
        pytest.param(
            cc("max-age=60"),
            30,
            cc("max-age=0"),
            OFFLINE,
            Verdict.SERVE,
            None,
            "offline",
            id="4.2.4 offline: request max-age is a preference",
        ),
        pytest.param(
            cc("max-age=60, must-revalidate"),
            900,
            [],
            OFFLINE,
            Verdict.GATEWAY_TIMEOUT,
            Fwd.STALE,
            "must-revalidate",
            id="5.2.2.2 offline must-revalidate gives 504",
        ),
        pytest.param(
            cc("max-age=60, no-cache"),
            0,
            [],
            OFFLINE,
            Verdict.GATEWAY_TIMEOUT,
            Fwd.STALE,
            "no-cache",
            id="5.2.2.4 offline no-cache gives 504",
        ),
        pytest.param(
            cc("max-age=60"),
            0,
            cc("no-cache"),
            OFFLINE,
            Verdict.GATEWAY_TIMEOUT,
            Fwd.REQUEST,
            "request-no-cache",
            id="5.2.1.4 offline request no-cache gives 504",
        ),
        pytest.param(
            cc("max-age=0, no-cache"),
            10,
            cc("no-cache"),
            IMMUTABLE,
            Verdict.SERVE,
            None,
            "rule-immutable",
            id="rule immutable: fresh whatever origin and reloads say",
        ),
        pytest.param(
            cc("max-age=0"),
            10,
            cc("max-age=0"),
            IMMUTABLE,
            Verdict.SERVE,
            None,
            "rule-immutable",
            id="rule immutable: request max-age ignored",
        ),
        pytest.param(
            cc("max-age=60"),
            120,
            [],
            CacheConfig(rules=(Rule("https://files.example/*", min_ttl=600),)),
            Verdict.SERVE,
            None,
            "rule-min-ttl",
            id="rule min_ttl keeps it fresh",
        ),
        pytest.param(
            cc("max-age=6000"),
            120,
            [],
            CacheConfig(rules=(Rule("https://files.example/*", max_ttl=60),)),
            Verdict.REVALIDATE,
            Fwd.STALE,
            "rule-max-ttl",
            id="rule max_ttl makes it stale",
        ),
        pytest.param(
            [("Last-Modified", format_http_date(NOW - 86400 * 30))],
            30,
            [],
            None,
            Verdict.SERVE,
            None,
            "",
            id="4.2.2 heuristically fresh",
        ),
    ],
)
def test_lookup(
    fields: F,
    resident: float,
    request_fields: F,
    config: CacheConfig | None,
    verdict: Verdict,
    fwd: Fwd | None,
    detail: str,
) -> None:
    decision = lookup(
        Request("GET", URL, Headers.of(request_fields)),
        [stored(fields, resident=resident)],
        now=NOW,
        config=config or CacheConfig(),
    )
    assert (decision.verdict, decision.fwd, decision.detail) == (verdict, fwd, detail)
    assert decision.stored is not None


@pytest.mark.parametrize(
    "fields, request_fields, config, verdict, detail",
    [
        pytest.param(
            cc("max-age=600"), [], None, Verdict.FORWARD, "authorization", id="3.5 credentials, plain max-age"
        ),
        pytest.param(cc("public, max-age=600"), [], None, Verdict.SERVE, "", id="3.5 credentials, public"),
        pytest.param(cc("s-maxage=600"), [], None, Verdict.SERVE, "", id="3.5 credentials, s-maxage"),
        pytest.param(
            cc("must-revalidate, max-age=600"), [], None, Verdict.SERVE, "", id="3.5 must-revalidate"
        ),
        pytest.param(
            cc("max-age=600"),
            cc("only-if-cached"),
            None,
            Verdict.GATEWAY_TIMEOUT,
            "authorization",
            id="3.5 credentials with only-if-cached",
        ),
        pytest.param(
            cc("max-age=600"),
            [],
            OFFLINE,
            Verdict.GATEWAY_TIMEOUT,
            "authorization",
            id="3.5 credentials offline",
        ),
    ],
)
def test_lookup_with_credentials(
    fields: F, request_fields: F, config: CacheConfig | None, verdict: Verdict, detail: str
) -> None:
    """Hardening beside §3.5: an authenticated request is answered only from responses shared on purpose."""
    request = Request("GET", URL, Headers.of([("Authorization", "Bearer t"), *request_fields]))
    decision = lookup(request, [stored(fields)], now=NOW, config=config or CacheConfig())
    assert (decision.verdict, decision.detail) == (verdict, detail)
    assert decision.fwd is (None if verdict is Verdict.SERVE else Fwd.REQUEST)


@pytest.mark.parametrize(
    "status, resident, verdict",
    [
        pytest.param(404, 30, Verdict.SERVE, id="4.2.2 404 within negative_ttl"),
        pytest.param(404, 90, Verdict.REVALIDATE, id="4.2.2 404 beyond negative_ttl"),
        pytest.param(410, 90, Verdict.REVALIDATE, id="4.2.2 410 beyond negative_ttl"),
    ],
)
def test_negative_ttl(status: int, resident: float, verdict: Verdict) -> None:
    s = stored([("Last-Modified", format_http_date(NOW - 86400 * 365))], resident=resident, status=status)
    assert lookup(Request("GET", URL), [s], now=NOW).verdict is verdict


@pytest.mark.parametrize(
    "method, variants, request_fields, config, verdict, fwd, detail",
    [
        pytest.param("POST", 1, [], None, Verdict.FORWARD, Fwd.METHOD, "method", id="4 POST is forwarded"),
        pytest.param(
            "DELETE", 1, [], None, Verdict.FORWARD, Fwd.METHOD, "method", id="4 DELETE is forwarded"
        ),
        pytest.param("HEAD", 1, [], None, Verdict.SERVE, None, "", id="4 HEAD served from a stored GET"),
        pytest.param("GET", 0, [], None, Verdict.FORWARD, Fwd.URI_MISS, "", id="4 nothing stored"),
        pytest.param(
            "GET", 1, [("Accept-Encoding", "br")], None, Verdict.FORWARD, Fwd.VARY_MISS, "", id="4.1 vary"
        ),
        pytest.param(
            "GET",
            0,
            cc("only-if-cached"),
            None,
            Verdict.GATEWAY_TIMEOUT,
            Fwd.URI_MISS,
            "only-if-cached",
            id="5.2.1.7 only-if-cached miss gives 504",
        ),
        pytest.param(
            "GET",
            1,
            [("Accept-Encoding", "br"), *cc("only-if-cached")],
            None,
            Verdict.GATEWAY_TIMEOUT,
            Fwd.VARY_MISS,
            "only-if-cached",
            id="5.2.1.7 only-if-cached vary miss gives 504",
        ),
        pytest.param(
            "GET", 0, [], OFFLINE, Verdict.GATEWAY_TIMEOUT, Fwd.URI_MISS, "offline", id="offline miss"
        ),
    ],
)
def test_lookup_misses(
    method: str,
    variants: int,
    request_fields: F,
    config: CacheConfig | None,
    verdict: Verdict,
    fwd: Fwd,
    detail: str,
) -> None:
    gzip = stored(
        [*cc("max-age=60"), ("Vary", "Accept-Encoding")], vary_request=[("Accept-Encoding", "gzip")]
    )
    decision = lookup(
        Request(method, URL, Headers.of([("Accept-Encoding", "gzip"), *request_fields])),
        [gzip] * variants,
        now=NOW,
        config=config or CacheConfig(),
    )
    assert (decision.verdict, decision.fwd, decision.detail) == (verdict, fwd, detail)


def test_lookup_numbers_and_cache_status() -> None:
    """§4.2.3 age and remaining ttl; RFC 9211 rendering of the decision."""
    fresh = lookup(Request("GET", URL), [stored(cc("max-age=300"), resident=3)], now=NOW)
    assert (fresh.age, fresh.ttl) == (3, 297)
    assert render(fresh.cache_status()) == "fwdproxy; hit; ttl=297"
    stale = lookup(Request("GET", URL), [stored(cc("max-age=60"), resident=90)], now=NOW)
    assert stale.ttl == -30
    assert (
        render(stale.cache_status(stored=True, fwd_status=304))
        == "fwdproxy; fwd=stale; fwd-status=304; stored; ttl=-30"
    )
    miss = lookup(Request("GET", URL), [], now=NOW)
    assert render(miss.cache_status(stored=True)) == "fwdproxy; fwd=uri-miss; stored"
    forced = lookup(Request("GET", URL, Headers.of(cc("no-cache"))), [stored(cc("max-age=60"))], now=NOW)
    assert render(forced.cache_status()) == "fwdproxy; fwd=request; ttl=60; detail=request-no-cache"
    rule = lookup(Request("GET", URL), [stored(cc("max-age=0"))], now=NOW, config=IMMUTABLE)
    assert render(rule.cache_status()) == "fwdproxy; hit; ttl=31536000; detail=rule-immutable"


@pytest.mark.parametrize(
    "fields, resident, request_fields, status, config, allowed, detail",
    [
        pytest.param(cc("max-age=60"), 90, [], 503, None, False, "too-stale", id="5861 4 nothing allows it"),
        pytest.param(
            cc("max-age=60"), 90, [], 404, None, False, "not-an-error", id="5861 4 404 is an answer"
        ),
        pytest.param(
            cc("max-age=60"), 90, [], 501, None, False, "not-an-error", id="5861 4 501 is an answer"
        ),
        pytest.param(
            cc("max-age=60, stale-if-error=600"),
            90,
            [],
            503,
            None,
            True,
            "stale-if-error",
            id="5861 4 within window",
        ),
        pytest.param(
            cc("max-age=60, stale-if-error=600"),
            900,
            [],
            500,
            None,
            False,
            "too-stale",
            id="5861 4 beyond window",
        ),
        pytest.param(
            cc("max-age=60, stale-if-error=600"),
            90,
            [],
            None,
            None,
            True,
            "stale-if-error",
            id="5861 4 connection failure",
        ),
        pytest.param(
            cc("max-age=60"),
            90,
            cc("stale-if-error=100"),
            502,
            None,
            True,
            "stale-if-error",
            id="5861 4 request stale-if-error",
        ),
        pytest.param(
            cc("max-age=60"), 90, cc("max-stale"), 504, None, True, "max-stale", id="5.2.1.2 max-stale"
        ),
        pytest.param(
            cc("max-age=60"),
            86400,
            [],
            503,
            CacheConfig(serve_stale_on_error=7 * 86400),
            True,
            "serve-stale-on-error",
            id="serve_stale_on_error extends to every entry",
        ),
        pytest.param(
            cc("max-age=60"),
            8 * 86400,
            [],
            None,
            CacheConfig(serve_stale_on_error=7 * 86400),
            False,
            "too-stale",
            id="serve_stale_on_error is bounded",
        ),
        pytest.param(
            cc("max-age=60, must-revalidate, stale-if-error=600"),
            90,
            [],
            503,
            CacheConfig(serve_stale_on_error=86400),
            False,
            "must-revalidate",
            id="5.2.2.2 must-revalidate forbids",
        ),
        pytest.param(
            cc("max-age=60, proxy-revalidate"),
            90,
            [],
            503,
            CacheConfig(serve_stale_on_error=86400),
            False,
            "proxy-revalidate",
            id="5.2.2.8 proxy-revalidate forbids",
        ),
        pytest.param(
            cc("s-maxage=60"),
            90,
            [],
            503,
            CacheConfig(serve_stale_on_error=86400),
            False,
            "s-maxage",
            id="5.2.2.10 s-maxage forbids",
        ),
        pytest.param(
            cc("no-cache"),
            90,
            [],
            503,
            CacheConfig(serve_stale_on_error=86400),
            False,
            "no-cache",
            id="5.2.2.4 no-cache forbids",
        ),
        pytest.param(
            cc("max-age=60"),
            90,
            cc("no-cache"),
            503,
            CacheConfig(serve_stale_on_error=86400),
            False,
            "request-no-cache",
            id="5.2.1.4 request no-cache forbids",
        ),
        pytest.param(cc("max-age=600"), 10, [], 503, None, True, "fresh", id="4.2 a fresh entry"),
        pytest.param(
            cc("max-age=600"),
            10,
            cc("max-age=0"),
            503,
            None,
            False,
            "request-max-age",
            id="5.2.1.1 request max-age=0 insists on a validated answer",
        ),
        pytest.param(
            cc("max-age=60"),
            90,
            cc("max-age=0, max-stale"),
            None,
            None,
            True,
            "max-stale",
            id="5.2.1.2 max-stale lifts the request max-age",
        ),
        pytest.param(
            cc("max-age=60"),
            3600,
            [],
            None,
            None,
            True,
            "origin-error",
            id="4.2.4 disconnected: any entry up to a day stale by default",
        ),
        pytest.param(
            cc("max-age=60"),
            2 * 86400,
            [],
            None,
            None,
            False,
            "too-stale",
            id="4.2.4 disconnected: not beyond the day",
        ),
        pytest.param(
            cc("max-age=60"),
            3600,
            [],
            503,
            None,
            False,
            "too-stale",
            id="5861 4 a 5xx needs stale-if-error or the flag set",
        ),
        pytest.param(
            cc("max-age=60"),
            3600,
            [],
            None,
            CacheConfig(stale_if_disconnected=0),
            False,
            "too-stale",
            id="4.2.4 disconnected window 0 is off",
        ),
        pytest.param(
            cc("max-age=60, must-revalidate"),
            90,
            [],
            None,
            None,
            False,
            "must-revalidate",
            id="4.2.4 disconnected never overrides must-revalidate",
        ),
        pytest.param(
            cc("max-age=60"),
            90,
            [("Authorization", "x")],
            503,
            CacheConfig(serve_stale_on_error=86400),
            False,
            "authorization",
            id="3.5 not for credentials unless shared on purpose",
        ),
        pytest.param(
            cc("public, max-age=60"),
            90,
            [("Authorization", "x")],
            503,
            CacheConfig(serve_stale_on_error=86400),
            True,
            "serve-stale-on-error",
            id="3.5 public is shared with credentials",
        ),
    ],
)
def test_stale_on_error(
    fields: F,
    resident: float,
    request_fields: F,
    status: int | None,
    config: CacheConfig | None,
    allowed: bool,
    detail: str,
) -> None:
    decision = stale_on_error(
        Request("GET", URL, Headers.of(request_fields)),
        stored(fields, resident=resident),
        status=status,
        now=NOW,
        config=config or CacheConfig(),
    )
    assert (decision.allowed, decision.detail) == (allowed, detail)
    assert bool(decision) is allowed
