"""Freshness lifetime (RFC 9111 §4.2.1, §4.2.2), cache rules, and current age (§4.2.3)."""

from __future__ import annotations

import calendar

import pytest

from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.directives import DELTA_SECONDS_MAX, format_http_date
from fwdproxy.cache.freshness import Source, current_age, freshness_lifetime
from fwdproxy.cache.rules import Rule
from fwdproxy.http_model import Headers, StoredResponse

NOW = 1_700_000_000.0
URL = "https://files.example/packages/a.whl"


def date(offset: float) -> str:
    return format_http_date(NOW + offset)


def stored(
    fields: list[tuple[str, str]],
    *,
    status: int = 200,
    request_time: float = NOW,
    response_time: float = NOW,
    url: str = URL,
) -> StoredResponse:
    return StoredResponse(url, status, "", Headers.of(fields), request_time, response_time, 0)


IMMUTABLE = CacheConfig(rules=(Rule("https://files.example/*", immutable=True),))


@pytest.mark.parametrize(
    "status, fields, config, seconds, source, detail",
    [
        pytest.param(
            200, [("Cache-Control", "max-age=60")], None, 60, Source.MAX_AGE, "", id="5.2.2.1 max-age"
        ),
        pytest.param(
            200, [("Cache-Control", "MaX-AgE=60")], None, 60, Source.MAX_AGE, "", id="5.2 case-insensitive"
        ),
        pytest.param(
            200, [("Cache-Control", 'max-age="60"')], None, 60, Source.MAX_AGE, "", id="5.2 quoted value"
        ),
        pytest.param(
            200, [("Cache-Control", "max-age=-60")], None, 0, Source.MAX_AGE, "", id="1.2.2 negative = stale"
        ),
        pytest.param(
            200, [("Cache-Control", "max-age=3600.0")], None, 0, Source.MAX_AGE, "", id="1.2.2 decimal stale"
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=1800, max-age=1")],
            None,
            1,
            Source.MAX_AGE,
            "",
            id="4.2.1 dup smallest",
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=99999999999999999999")],
            None,
            DELTA_SECONDS_MAX,
            Source.MAX_AGE,
            "",
            id="1.2.2 max-age=99999999999999999999 saturates",
        ),
        pytest.param(
            200,
            [("Cache-Control", "s-maxage=10, max-age=60")],
            None,
            10,
            Source.S_MAXAGE,
            "",
            id="5.2.2.10 s-maxage",
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=10"), ("Cache-Control", "s-maxage=60")],
            None,
            60,
            Source.S_MAXAGE,
            "",
            id="5.2.2.10 longer s-maxage wins, two lines",
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=0, s-maxage=60"), ("Expires", date(-100)), ("Date", date(0))],
            None,
            60,
            Source.S_MAXAGE,
            "",
            id="5.2.2.10 s-maxage over max-age=0 and past Expires",
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=60"), ("Expires", date(-100)), ("Date", date(0))],
            None,
            60,
            Source.MAX_AGE,
            "",
            id="5.3 max-age over past Expires",
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=60"), ("Expires", "garbage")],
            None,
            60,
            Source.MAX_AGE,
            "",
            id="5.3 max-age over invalid Expires",
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=0"), ("Expires", date(100)), ("Date", date(0))],
            None,
            0,
            Source.MAX_AGE,
            "",
            id="5.3 max-age=0 over future Expires",
        ),
        pytest.param(
            200,
            [("Expires", date(100)), ("Date", date(0))],
            None,
            100,
            Source.EXPIRES,
            "",
            id="5.3 Expires-Date",
        ),
        pytest.param(
            200, [("Expires", date(100))], None, 100, Source.EXPIRES, "", id="4.2.1 no Date: response_time"
        ),
        pytest.param(
            200,
            [("Expires", date(-100)), ("Date", date(0))],
            None,
            0,
            Source.EXPIRES,
            "",
            id="4.2.1 Expires<Date",
        ),
        pytest.param(
            200, [("Expires", "0"), ("Date", date(0))], None, 0, Source.EXPIRES, "", id="5.3 Expires: 0"
        ),
        pytest.param(
            200,
            [("Expires", "Thu, 18 Aug 50 02:01:18 GMT")],
            None,
            0,
            Source.EXPIRES,
            "",
            id="5.3 two-digit year",
        ),
        pytest.param(
            200,
            [("Expires", "Thu 18 Aug 2050 02:01:18 GMT")],
            None,
            0,
            Source.EXPIRES,
            "",
            id="5.3 missing comma",
        ),
        pytest.param(
            200,
            [("Expires", "Thu, 18  Aug  2050 02:01:18 GMT")],
            None,
            0,
            Source.EXPIRES,
            "",
            id="5.3 extra spaces",
        ),
        pytest.param(
            200, [("Expires", "Thu, 18-Aug-2050 02:01:18 GMT")], None, 0, Source.EXPIRES, "", id="5.3 dashes"
        ),
        pytest.param(
            200,
            [("Expires", date(100)), ("Expires", date(200))],
            None,
            0,
            Source.EXPIRES,
            "",
            id="4.2.1 two Expires",
        ),
        pytest.param(
            200,
            [("Expires", "Thursday, 18-Aug-50 02:01:18 GMT"), ("Date", date(0))],
            None,
            calendar.timegm((2050, 8, 18, 2, 1, 18, 0, 0, 0)) - NOW,
            Source.EXPIRES,
            "",
            id="5.6.7 rfc850 Expires accepted",
        ),
        pytest.param(
            200,
            [("Last-Modified", date(-1000)), ("Date", date(0))],
            None,
            100,
            Source.HEURISTIC,
            "",
            id="4.2.2 10% of Last-Modified age",
        ),
        pytest.param(
            200,
            [("Last-Modified", date(-100 * 86400)), ("Date", date(0))],
            None,
            86400,
            Source.HEURISTIC,
            "",
            id="4.2.2 heuristic capped at a day",
        ),
        pytest.param(
            200,
            [("Last-Modified", date(-10000))],
            CacheConfig(heuristic_cap=50),
            50,
            Source.HEURISTIC,
            "",
            id="4.2.2 heuristic cap configurable",
        ),
        pytest.param(
            404,
            [("Last-Modified", date(-10000))],
            None,
            60,
            Source.HEURISTIC,
            "",
            id="4.2.2 404 capped by negative_ttl",
        ),
        pytest.param(
            410,
            [("Last-Modified", date(-10000))],
            CacheConfig(negative_ttl=5),
            5,
            Source.HEURISTIC,
            "",
            id="4.2.2 410 capped by configured negative_ttl",
        ),
        pytest.param(
            404,
            [("Cache-Control", "max-age=600")],
            None,
            600,
            Source.MAX_AGE,
            "",
            id="4.2.1 explicit 404 not capped",
        ),
        pytest.param(
            501, [("Last-Modified", date(-1000))], None, 100, Source.HEURISTIC, "", id="4.2.2 501 heuristic"
        ),
        pytest.param(
            201, [("Last-Modified", date(-1000))], None, 0, Source.NONE, "", id="4.2.2 201 not heuristic"
        ),
        pytest.param(
            299,
            [("Last-Modified", date(-1000)), ("Cache-Control", "public")],
            None,
            100,
            Source.HEURISTIC,
            "",
            id="4.2.2 public allows heuristics",
        ),
        pytest.param(
            503,
            [("Last-Modified", date(-1000)), ("Cache-Control", "public")],
            None,
            0,
            Source.NONE,
            "",
            id="4.2.2 transient 5xx never heuristic",
        ),
        pytest.param(
            200,
            [("Last-Modified", date(-1000)), ("Set-Cookie", "a=b")],
            None,
            0,
            Source.NONE,
            "",
            id="3.1 Set-Cookie never heuristic (hardening)",
        ),
        pytest.param(200, [], None, 0, Source.NONE, "", id="4.2.2 no Last-Modified, no heuristic"),
        pytest.param(
            200, [("Last-Modified", date(1000))], None, 0, Source.NONE, "", id="4.2.2 future Last-Modified"
        ),
        pytest.param(
            200,
            [("Last-Modified", date(-1000)), ("Cache-Control", "max-age=abc")],
            None,
            0,
            Source.MAX_AGE,
            "",
            id="4.2.2 no heuristic when explicit (even invalid) info exists",
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=0, no-cache")],
            IMMUTABLE,
            365 * 86400,
            Source.MAX_AGE,
            "rule-immutable",
            id="rule immutable overrides max-age=0",
        ),
        pytest.param(
            200,
            [],
            CacheConfig(rules=(Rule("https://files.example/*", immutable=True, max_ttl=3600),)),
            3600,
            Source.NONE,
            "rule-immutable",
            id="rule immutable for max_ttl",
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=60")],
            CacheConfig(rules=(Rule("https://files.example/*", min_ttl=3600),)),
            3600,
            Source.MAX_AGE,
            "rule-min-ttl",
            id="rule min_ttl raises",
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=7200")],
            CacheConfig(rules=(Rule("https://files.example/*", min_ttl=3600),)),
            7200,
            Source.MAX_AGE,
            "",
            id="rule min_ttl leaves a longer lifetime alone",
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=7200")],
            CacheConfig(rules=(Rule("https://files.example/*", max_ttl=60),)),
            60,
            Source.MAX_AGE,
            "rule-max-ttl",
            id="rule max_ttl lowers",
        ),
        pytest.param(
            200,
            [("Last-Modified", date(-1000))],
            CacheConfig(rules=(Rule("https://files.example/*", max_ttl=60),)),
            60,
            Source.HEURISTIC,
            "rule-max-ttl",
            id="rule max_ttl caps heuristics",
        ),
        pytest.param(
            200,
            [],
            CacheConfig(rules=(Rule("https://files.example/*", min_ttl=300),)),
            300,
            Source.NONE,
            "rule-min-ttl",
            id="rule min_ttl without any information",
        ),
        pytest.param(
            404,
            [("Last-Modified", date(-10000))],
            IMMUTABLE,
            60,
            Source.HEURISTIC,
            "",
            id="rules never apply to a 404",
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=0"), ("Set-Cookie", "a=b")],
            IMMUTABLE,
            0,
            Source.MAX_AGE,
            "",
            id="rules never apply to Set-Cookie responses (hardening)",
        ),
        pytest.param(
            200,
            [("Cache-Control", "max-age=0")],
            CacheConfig(rules=(Rule("https://other/*", immutable=True),)),
            0,
            Source.MAX_AGE,
            "",
            id="rule for another URL",
        ),
    ],
)
def test_freshness_lifetime(
    status: int,
    fields: list[tuple[str, str]],
    config: CacheConfig | None,
    seconds: float,
    source: Source,
    detail: str,
) -> None:
    lifetime = freshness_lifetime(stored(fields, status=status), config or CacheConfig())
    assert (lifetime.seconds, lifetime.source, lifetime.detail) == (seconds, source, detail)
    assert (lifetime.rule is not None) is bool(detail)


@pytest.mark.parametrize(
    "fields, request_time, response_time, now, expected",
    [
        pytest.param([("Date", date(0))], NOW, NOW, NOW + 30, 30, id="4.2.3 resident time"),
        pytest.param([], NOW, NOW, NOW + 30, 30, id="4.2.3 no Date: apparent age 0"),
        pytest.param([("Date", date(0)), ("Age", "100")], NOW, NOW, NOW + 30, 130, id="4.2.3 Age added"),
        pytest.param(
            [("Date", date(0)), ("Age", "7200.0")], NOW, NOW, NOW + 30, 30, id="5.1 float Age ignored"
        ),
        pytest.param([("Date", date(0)), ("Age", "-5")], NOW, NOW, NOW, 0, id="5.1 negative Age ignored"),
        pytest.param(
            [("Date", date(0)), ("Age", "2147483648")],
            NOW,
            NOW,
            NOW,
            DELTA_SECONDS_MAX,
            id="1.2.2 huge Age very old",
        ),
        pytest.param(
            [("Date", date(0)), ("Age", "99999999999999999999")],
            NOW,
            NOW,
            NOW,
            DELTA_SECONDS_MAX,
            id="1.2.2 Age saturates",
        ),
        pytest.param([("Date", date(-50))], NOW, NOW, NOW + 10, 60, id="4.2.3 apparent age from Date"),
        pytest.param(
            [("Date", date(-50)), ("Age", "10")], NOW, NOW, NOW, 50, id="4.2.3 max(apparent, corrected)"
        ),
        pytest.param(
            [("Date", date(0)), ("Age", "5")], NOW - 10, NOW, NOW, 15, id="4.2.3 response_delay added"
        ),
        pytest.param([("Date", date(100))], NOW, NOW, NOW, 0, id="4.2.3 Date in the future: apparent age 0"),
        pytest.param(
            [("Date", date(0))], NOW, NOW, NOW - 100, 0, id="4.2.3 clock before receipt: no negative age"
        ),
    ],
)
def test_current_age(
    fields: list[tuple[str, str]], request_time: float, response_time: float, now: float, expected: float
) -> None:
    s = stored(fields, request_time=request_time, response_time=response_time)
    assert current_age(s, now) == expected
