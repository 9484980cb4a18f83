"""Validation (RFC 9111 §4.3): conditional requests, client conditionals, 304 merge, HEAD freshening."""

from __future__ import annotations

import pytest

from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.directives import format_http_date
from fwdproxy.cache.freshness import freshness_lifetime
from fwdproxy.cache.validation import (
    After304,
    client_conditional_matches,
    conditional_request_headers,
    freshen,
    freshen_from_head,
    normalize_etag,
    not_modified_response,
    on_not_modified,
    parse_etags,
    select_for_update,
    strong_match,
    weak_match,
)
from fwdproxy.http_model import Headers, Request, Response, StoredResponse

NOW = 1_700_000_000.0
URL = "http://example.com/r"
LM = "Mon, 01 Jan 2024 00:00:00 GMT"
LM_LATER = "Tue, 02 Jan 2024 00:00:00 GMT"
F = list[tuple[str, str]]


def stored(
    fields: F, *, response_time: float = NOW - 100, status: int = 200, length: int = 10
) -> StoredResponse:
    return StoredResponse(URL, status, "OK", Headers.of(fields), response_time, response_time, length)


def get(*fields: tuple[str, str], method: str = "GET") -> Request:
    return Request(method, URL, Headers.of(list(fields)))


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param('"a"', ['"a"'], id="9110 8.8.3 strong"),
        pytest.param('W/"a"', ['W/"a"'], id="9110 8.8.3 weak"),
        pytest.param('"a", W/"b" ,"c,d"', ['"a"', 'W/"b"', '"c,d"'], id="9110 13.1.2 list, comma inside"),
        pytest.param(" * ", ["*"], id="9110 13.1.2 star"),
        pytest.param('junk, "a", "unterminated', ['"a"'], id="9110 8.8.3 invalid members dropped"),
        pytest.param("", [], id="9110 8.8.3 empty"),
    ],
)
def test_parse_etags(value: str, expected: list[str]) -> None:
    assert parse_etags(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param('"a"', '"a"', id="9110 8.8.3 valid kept"),
        pytest.param(' W/"a" ', 'W/"a"', id="9110 8.8.3 trimmed"),
        pytest.param("abc", '"abc"', id="9110 8.8.3 bare token quoted"),
        pytest.param("W/abc", 'W/"abc"', id="9110 8.8.3 bare weak token quoted"),
        pytest.param('"a", "b"', None, id="9110 8.8.3 a list is not one tag"),
        pytest.param("a b", None, id="9110 8.8.3 spaces invalid"),
        pytest.param(None, None, id="9110 8.8.3 absent"),
    ],
)
def test_normalize_etag(value: str | None, expected: str | None) -> None:
    assert normalize_etag(value) == expected


@pytest.mark.parametrize(
    "a, b, weak, strong",
    [
        pytest.param('W/"1"', 'W/"1"', True, False, id="9110 8.8.3.2 both weak"),
        pytest.param('W/"1"', '"1"', True, False, id="9110 8.8.3.2 one weak"),
        pytest.param('"1"', '"1"', True, True, id="9110 8.8.3.2 both strong"),
        pytest.param('"1"', '"2"', False, False, id="9110 8.8.3.2 different"),
    ],
)
def test_etag_comparison(a: str, b: str, weak: bool, strong: bool) -> None:
    assert (weak_match(a, b), strong_match(a, b)) == (weak, strong)


@pytest.mark.parametrize(
    "request_fields, stored_fields, expected",
    [
        pytest.param([], [("ETag", '"a"')], [("If-None-Match", '"a"')], id="4.3.1 If-None-Match from ETag"),
        pytest.param(
            [], [("Last-Modified", LM)], [("If-Modified-Since", LM)], id="4.3.1 IMS from Last-Modified"
        ),
        pytest.param(
            [],
            [("ETag", '"a"'), ("Last-Modified", LM)],
            [("If-None-Match", '"a"'), ("If-Modified-Since", LM)],
            id="4.3.1 both validators",
        ),
        pytest.param([("X", "1")], [], [("X", "1")], id="4.3.1 no validators: unchanged"),
        pytest.param(
            [], [("ETag", "abc")], [("If-None-Match", '"abc"')], id="4.3.1 unquoted ETag sent quoted"
        ),
        pytest.param([], [("Last-Modified", "yesterday")], [], id="4.3.1 invalid Last-Modified not sent"),
        pytest.param(
            [("If-None-Match", '"x"')],
            [("ETag", '"a"')],
            [("If-None-Match", '"x", "a"')],
            id="4.3.2 union with the client's entity-tags",
        ),
        pytest.param(
            [("If-None-Match", '"a"')],
            [("ETag", '"a"')],
            [("If-None-Match", '"a"')],
            id="4.3.2 union deduplicated",
        ),
        pytest.param(
            [("If-None-Match", "*")], [("ETag", '"a"')], [("If-None-Match", "*")], id="4.3.2 star kept"
        ),
        pytest.param(
            [("If-Modified-Since", LM_LATER)],
            [("Last-Modified", LM)],
            [("If-Modified-Since", LM)],
            id="4.3.2 our Last-Modified replaces the client's date",
        ),
        pytest.param(
            [("If-Modified-Since", LM_LATER)],
            [("ETag", '"a"')],
            [("If-Modified-Since", LM_LATER), ("If-None-Match", '"a"')],
            id="4.3.2 client's date kept without ours",
        ),
        pytest.param(
            [("If-Match", '"x"')],
            [("ETag", '"a"'), ("Last-Modified", LM)],
            [("If-Match", '"x"')],
            id="4.3.2 If-Match is for the origin: forwarded as sent",
        ),
        pytest.param(
            [("Range", "bytes=0-1"), ("If-Range", '"x"')],
            [("ETag", '"a"')],
            [("Range", "bytes=0-1"), ("If-Range", '"x"')],
            id="4.3.2 If-Range forwarded as sent",
        ),
    ],
)
def test_conditional_request_headers(request_fields: F, stored_fields: F, expected: F) -> None:
    assert conditional_request_headers(get(*request_fields), [stored(stored_fields)]).fields == tuple(
        expected
    )


def test_conditional_request_headers_for_several_variants() -> None:
    """§4.3.1: entity-tags of every candidate; Last-Modified only from the selected (first) one."""
    first = stored([("ETag", '"a"'), ("Last-Modified", LM)])
    second = stored([("ETag", 'W/"b"'), ("Last-Modified", LM_LATER)])
    headers = conditional_request_headers(get(), [first, second])
    assert headers.fields == (("If-None-Match", '"a", W/"b"'), ("If-Modified-Since", LM))
    assert conditional_request_headers(get(("X", "1")), []).fields == (("X", "1"),)


@pytest.mark.parametrize(
    "request_fields, stored_fields, status, method, expected",
    [
        pytest.param(
            [("If-None-Match", '"a"')], [("ETag", '"a"')], 200, "GET", True, id="4.3.2 strong ETag matches"
        ),
        pytest.param(
            [("If-None-Match", 'W/"a"')], [("ETag", '"a"')], 200, "GET", True, id="4.3.2 weak comparison"
        ),
        pytest.param(
            [("If-None-Match", '"a"')], [("ETag", 'W/"a"')], 200, "GET", True, id="4.3.2 stored weak"
        ),
        pytest.param(
            [("If-None-Match", '"a", "b", "c"')], [("ETag", '"a"')], 200, "GET", True, id="4.3.2 first"
        ),
        pytest.param(
            [("If-None-Match", '"a", "b", "c"')], [("ETag", '"b"')], 200, "GET", True, id="4.3.2 middle"
        ),
        pytest.param(
            [("If-None-Match", '"a", "b", "c"')], [("ETag", '"c"')], 200, "GET", True, id="4.3.2 last"
        ),
        pytest.param([("If-None-Match", '"x"')], [("ETag", '"a"')], 200, "GET", False, id="4.3.2 no match"),
        pytest.param([("If-None-Match", "*")], [], 200, "GET", True, id="4.3.2 star matches any stored"),
        pytest.param([("If-None-Match", '"a"')], [], 200, "GET", False, id="4.3.2 stored has no ETag"),
        pytest.param([("If-None-Match", '"a"')], [("ETag", '"a"')], 200, "HEAD", True, id="4.3.2 HEAD"),
        pytest.param(
            [("If-None-Match", '"a"')], [("ETag", '"a"')], 200, "POST", False, id="4.3.2 POST never"
        ),
        pytest.param(
            [("If-None-Match", '"a"')], [("ETag", '"a"')], 404, "GET", False, id="9110 13.2.1 not for 404"
        ),
        pytest.param(
            [("If-None-Match", '"x"'), ("If-Modified-Since", LM_LATER)],
            [("ETag", '"a"'), ("Last-Modified", LM)],
            200,
            "GET",
            False,
            id="4.3.2 If-None-Match takes precedence over IMS",
        ),
        pytest.param(
            [("If-Modified-Since", LM)], [("Last-Modified", LM)], 200, "GET", True, id="4.3.2 IMS equal"
        ),
        pytest.param(
            [("If-Modified-Since", LM_LATER)], [("Last-Modified", LM)], 200, "GET", True, id="4.3.2 IMS later"
        ),
        pytest.param(
            [("If-Modified-Since", LM)],
            [("Last-Modified", LM_LATER)],
            200,
            "GET",
            False,
            id="4.3.2 modified since",
        ),
        pytest.param(
            [("If-Modified-Since", "Monday, 01-Jan-24 00:00:00 GMT")],
            [("Last-Modified", LM)],
            200,
            "GET",
            True,
            id="4.3.2 IMS in rfc850 form",
        ),
        pytest.param(
            [("If-Modified-Since", LM_LATER)],
            [("Date", LM)],
            200,
            "GET",
            True,
            id="4.3.2 no Last-Modified: Date",
        ),
        pytest.param(
            [("If-Modified-Since", format_http_date(NOW))],
            [],
            200,
            "GET",
            True,
            id="4.3.2 neither: receipt time",
        ),
        pytest.param(
            [("If-Modified-Since", "garbage")], [("Last-Modified", LM)], 200, "GET", False, id="9110 invalid"
        ),
        pytest.param([], [("ETag", '"a"')], 200, "GET", False, id="4.3.2 no conditional"),
    ],
)
def test_client_conditional_matches(
    request_fields: F, stored_fields: F, status: int, method: str, expected: bool
) -> None:
    assert (
        client_conditional_matches(get(*request_fields, method=method), stored(stored_fields, status=status))
        is expected
    )


def test_not_modified_response_carries_the_304_fields() -> None:
    """RFC 9110 §15.4.5 (a 304 the cache generates carries ETag) and §5.1 Age."""
    s = stored(
        [
            ("Date", format_http_date(NOW - 100)),
            ("ETag", '"a"'),
            ("Cache-Control", "max-age=600"),
            ("Expires", format_http_date(NOW + 500)),
            ("Vary", "Accept-Encoding"),
            ("Content-Location", "/r.en"),
            ("Last-Modified", LM),
            ("Content-Length", "10"),
            ("Content-Type", "text/plain"),
            ("Set-Cookie", "a=b"),
        ]
    )
    response = not_modified_response(s, now=NOW)
    assert response.status == 304
    assert [k for k, _ in response.headers] == [
        "Date", "ETag", "Cache-Control", "Expires", "Vary", "Content-Location", "Last-Modified", "Age",
    ]  # fmt: skip
    assert response.headers.get("etag") == '"a"'
    assert response.headers.get("age") == "100"
    assert response.headers.get("date") == format_http_date(NOW - 100)  # Date is never rewritten


@pytest.mark.parametrize(
    "response_fields, candidates, assume_ours, expected",
    [
        pytest.param(
            [("ETag", '"a"')], [[("ETag", '"a"')], [("ETag", '"b"')]], False, [0], id="4.3.4 strong ETag"
        ),
        pytest.param(
            [("ETag", '"a"')],
            [[("ETag", '"a"')], [("ETag", '"a"')]],
            False,
            [0, 1],
            id="4.3.4 strong selects all",
        ),
        pytest.param([("ETag", '"x"')], [[("ETag", '"a"')]], True, [], id="4.3.4 strong ETag matches none"),
        pytest.param(
            [("ETag", '"a"')], [[("ETag", 'W/"a"')]], False, [], id="4.3.4 strong never matches weak"
        ),
        pytest.param(
            [("ETag", 'W/"a"')],
            [[("ETag", 'W/"a"')], [("ETag", '"a"')]],
            False,
            [1],
            id="4.3.4 weak: most recent match",
        ),
        pytest.param(
            [("Last-Modified", LM)],
            [[("Last-Modified", LM)], [("Last-Modified", LM_LATER)]],
            False,
            [0],
            id="4.3.4 Last-Modified as weak validator",
        ),
        pytest.param(
            [("ETag", 'W/"a"'), ("Last-Modified", LM)],
            [[("ETag", 'W/"a"'), ("Last-Modified", LM_LATER)]],
            False,
            [],
            id="4.3.4 all weak validators must agree",
        ),
        pytest.param([], [[]], False, [0], id="4.3.4 no validators anywhere: the single one"),
        pytest.param([], [[], []], False, [], id="4.3.4 no validators, several stored: none"),
        pytest.param([], [[("ETag", '"a"')]], False, [], id="4.3.4 304 without validators, stored has one"),
        pytest.param(
            [], [[("ETag", '"a"')]], True, [0], id="4.3.4 lenient when only our validators were sent"
        ),
    ],
)
def test_select_for_update(
    response_fields: F, candidates: list[F], assume_ours: bool, expected: list[int]
) -> None:
    stored_list = [stored(f, response_time=NOW - 100 + i) for i, f in enumerate(candidates)]
    selected = select_for_update(
        Response(304, Headers.of(response_fields)), stored_list, assume_ours=assume_ours
    )
    assert selected == [stored_list[i] for i in expected]


def test_freshen_merges_304_headers() -> None:
    """§4.3.4: fields from the 304 replace stored ones, except Content-Length and hop-by-hop fields."""
    s = stored(
        [
            ("Date", format_http_date(NOW - 100)),
            ("Cache-Control", "max-age=1"),
            ("ETag", '"a"'),
            ("Content-Length", "10"),
            ("Test-Header", "A"),
            ("Kept", "yes"),
            ("Age", "50"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=1"),
        ]
    )
    not_modified = Response(
        304,
        Headers.of(
            [
                ("Date", format_http_date(NOW)),
                ("Cache-Control", "max-age=3600"),
                ("ETag", '"a"'),
                ("Content-Length", "0"),
                ("Test-Header", "B"),
                ("Set-Cookie", "a=2"),
                ("Connection", "close, X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
            ]
        ),
    )
    fresh = freshen(s, not_modified, request_time=NOW - 1, response_time=NOW)
    h = fresh.headers
    assert h.get("content-length") == "10"  # a 304 never changes the stored Content-Length
    assert h.get("test-header") == "B" and h.get("kept") == "yes"
    assert h.get_all("set-cookie") == ["a=2"]
    assert "x-hop" not in h and "connection" not in h and "keep-alive" not in h
    assert "age" not in h  # the new response_time restarts the age clock
    assert h.get("date") == format_http_date(NOW)
    assert (fresh.request_time, fresh.response_time, fresh.body_length) == (NOW - 1, NOW, 10)
    assert freshness_lifetime(fresh, CacheConfig()).seconds == 3600


def test_freshen_without_date_sets_one() -> None:
    """RFC 9110 §6.6.1: a cache adds Date when the response lacks one; the old Date never survives."""
    s = stored([("Date", format_http_date(NOW - 1000)), ("Cache-Control", "max-age=60")])
    fresh = freshen(s, Response(304), request_time=NOW, response_time=NOW)
    assert fresh.headers.get_all("date") == [format_http_date(NOW)]


@pytest.mark.parametrize(
    "request_fields, response_fields, candidates, action, serve",
    [
        pytest.param(
            [], [("ETag", '"a"')], [[("ETag", '"a"')]], After304.SERVE_STORED, 0, id="4.3.3 full response"
        ),
        pytest.param(
            [("If-None-Match", '"a"')],
            [("ETag", '"a"')],
            [[("ETag", '"a"')]],
            After304.SEND_304,
            0,
            id="4.3.3 client's own tag matches: 304",
        ),
        pytest.param(
            [("If-None-Match", '"x"')],
            [("ETag", '"a"')],
            [[("ETag", '"a"')]],
            After304.SERVE_STORED,
            0,
            id="4.3.2 304 for our tag, not the client's: full response",
        ),
        pytest.param(
            [("If-None-Match", '"x"')],
            [("ETag", '"x"')],
            [[("ETag", '"a"')]],
            After304.PASS_THROUGH,
            None,
            id="4.3.2 304 for the client's tag: pass it through",
        ),
        pytest.param(
            [("If-Modified-Since", LM_LATER)],
            [("Last-Modified", LM)],
            [[("Last-Modified", LM)]],
            After304.SEND_304,
            0,
            id="4.3.2 client's IMS holds for the freshened entry",
        ),
        pytest.param(
            [("If-Modified-Since", "Sun, 31 Dec 2023 00:00:00 GMT")],
            [("Last-Modified", LM)],
            [[("Last-Modified", LM)]],
            After304.SERVE_STORED,
            0,
            id="4.3.2 client's IMS too old: full response",
        ),
        pytest.param(
            [], [("ETag", '"x"')], [[("ETag", '"a"')]], After304.RETRY, None, id="4.3.4 nothing selected"
        ),
        pytest.param(
            [], [], [[("ETag", '"a"')]], After304.SERVE_STORED, 0, id="4.3.4 304 without validators"
        ),
        pytest.param(
            [("If-None-Match", '"x"')],
            [],
            [[("ETag", '"a"')]],
            After304.RETRY,
            None,
            id="4.3.4 ambiguous 304 after a union: retry",
        ),
        pytest.param(
            [("If-None-Match", '"x"')],
            [],
            [[]],
            After304.PASS_THROUGH,
            None,
            id="4.3.4 only the client's validators",
        ),
    ],
)
def test_on_not_modified(
    request_fields: F, response_fields: F, candidates: list[F], action: After304, serve: int | None
) -> None:
    stored_list = [stored([*f, ("Cache-Control", "max-age=60")]) for f in candidates]
    outcome = on_not_modified(
        get(*request_fields),
        Response(304, Headers.of(response_fields)),
        stored_list,
        request_time=NOW,
        response_time=NOW,
    )
    assert outcome.action is action
    if serve is None:
        assert outcome.serve is None and outcome.updated == ()
    else:
        assert outcome.serve is not None and outcome.serve.response_time == NOW
        assert outcome.serve in outcome.updated


@pytest.mark.parametrize(
    "response_fields, status, kept",
    [
        pytest.param(
            [("ETag", '"a"'), ("Content-Length", "10"), ("X", "new")], 200, True, id="4.3.5 matching"
        ),
        pytest.param([("X", "new")], 200, True, id="4.3.5 no validators to compare"),
        pytest.param([("Content-Length", "11")], 200, False, id="4.3.5 Content-Length differs"),
        pytest.param(
            [("Content-Length", "10"), ("Content-Length", "11")], 200, False, id="4.3.5 CL ambiguous"
        ),
        pytest.param([("ETag", '"b"')], 200, False, id="4.3.5 ETag differs"),
        pytest.param([("Last-Modified", LM_LATER)], 200, False, id="4.3.5 Last-Modified differs"),
        pytest.param([("Last-Modified", LM), ("X", "new")], 200, True, id="4.3.5 Last-Modified matches"),
    ],
)
def test_freshen_from_head(response_fields: F, status: int, kept: bool) -> None:
    s = stored([("ETag", '"a"'), ("Last-Modified", LM), ("Content-Length", "10"), ("X", "old")])
    result = freshen_from_head(
        s, Response(status, Headers.of(response_fields)), request_time=NOW, response_time=NOW
    )
    if kept:
        assert result is not None and result.headers.get("x") == "new" and result.response_time == NOW
        assert result.headers.get("content-length") == "10"
    else:
        assert result is None


def test_freshen_from_head_ignores_other_statuses() -> None:
    s = stored([("ETag", '"a"')])
    assert (
        freshen_from_head(s, Response(404, Headers.of({"ETag": '"b"'})), request_time=NOW, response_time=NOW)
        is s
    )
