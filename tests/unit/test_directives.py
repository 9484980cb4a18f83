"""Cache-Control, Pragma, Vary, Age, delta-seconds and HTTP-date parsing."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwdproxy.cache.directives import (
    DELTA_SECONDS_MAX,
    CacheControl,
    format_http_date,
    header_date,
    parse_age,
    parse_cache_control,
    parse_delta_seconds,
    parse_http_date,
    parse_list,
    parse_vary,
    request_cache_control,
)
from fwdproxy.http_model import Headers


def cc(*lines: str) -> CacheControl:
    return parse_cache_control(Headers.of([("Cache-Control", line) for line in lines]))


AUG_18_2050 = float(calendar.timegm((2050, 8, 18, 2, 1, 18, 0, 0, 0)))


@pytest.mark.parametrize(
    "lines, expected",
    [
        pytest.param(["max-age=60"], (("max-age", "60"),), id="5.2 token value"),
        pytest.param(["No-CaChE"], (("no-cache", None),), id="5.2 names are case-insensitive"),
        pytest.param(["MAX-AGE=60, Public"], (("max-age", "60"), ("public", None)), id="5.2 upper case"),
        pytest.param(['max-age="3600"'], (("max-age", "3600"),), id="5.2 quoted-string value accepted"),
        pytest.param(["a=1", "b"], (("a", "1"), ("b", None)), id="5.2 all field lines, in order"),
        pytest.param([" , ,max-age=5 ,, "], (("max-age", "5"),), id="5.6.1 empty list members ignored"),
        pytest.param(
            ['extension="max-age=3600", max-age=1'],
            (("extension", "max-age=3600"), ("max-age", "1")),
            id="5.2 a directive inside a quoted string is not a directive",
        ),
        pytest.param(['x="a\\"b,c", y'], (("x", 'a"b,c'), ("y", None)), id="5.6.4 quoted-pair and comma"),
        pytest.param(
            ['no-cache="Set-Cookie, X"'], (("no-cache", "Set-Cookie, X"),), id="5.2.2.4 field-name form"
        ),
        pytest.param(
            ["max-age =3600"], (("max-age", "=3600"),), id="5.2 space before = makes the value invalid"
        ),
        pytest.param(
            ["max-age= 3600"], (("max-age", " 3600"),), id="5.2 space after = makes the value invalid"
        ),
        pytest.param(["max-age=36 00, public"], (("max-age", "36 00"), ("public", None)), id="5.2 junk kept"),
        pytest.param(['x="unterminated, y'], (("x", '"unterminated, y'),), id="5.6.4 unterminated quote"),
        pytest.param(["=5, public"], (("public", None),), id="5.2 nameless member dropped"),
    ],
)
def test_parse_cache_control(lines: list[str], expected: tuple[tuple[str, str | None], ...]) -> None:
    assert cc(*lines).directives == expected


@pytest.mark.parametrize(
    "lines, invalid, expected",
    [
        pytest.param(["max-age=60"], 0, 60, id="1.2.2 plain"),
        pytest.param(["max-age=003600"], 0, 3600, id="1.2.2 leading zeros"),
        pytest.param(["max-age=1800, max-age=1"], 0, 1, id="4.2.1 duplicates: smallest, same line"),
        pytest.param(["max-age=1", "max-age=1800"], 0, 1, id="4.2.1 duplicates: smallest, two lines"),
        pytest.param(["max-age=7200.0"], 0, 0, id="1.2.2 non-integer is invalid"),
        pytest.param(["max-age=-1"], 0, 0, id="1.2.2 negative is invalid"),
        pytest.param(["max-age='3600'"], 0, 0, id="1.2.2 single quotes are invalid"),
        pytest.param(["max-age=a3600"], 0, 0, id="1.2.2 leading alpha invalid"),
        pytest.param(["max-age"], 0, 0, id="5.2.2.1 missing value invalid"),
        pytest.param(["max-age=60, max-age=abc"], 0, 0, id="4.2.1 an invalid duplicate is conservative"),
        pytest.param(["max-age=abc"], None, None, id="1.2.2 invalid skipped when asked"),
        pytest.param(["max-age=99999999999999999999"], 0, DELTA_SECONDS_MAX, id="1.2.2 huge saturates"),
        pytest.param(["public"], 0, None, id="5.2 absent"),
    ],
)
def test_seconds(lines: list[str], invalid: int | None, expected: int | None) -> None:
    assert cc(*lines).seconds("max-age", invalid=invalid) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("0", 0, id="1.2.2 zero"),
        pytest.param("2147483647", 2147483647, id="1.2.2 2^31-1"),
        pytest.param("2147483648", DELTA_SECONDS_MAX, id="1.2.2 2^31"),
        pytest.param("2147483649", DELTA_SECONDS_MAX, id="1.2.2 above 2^31 saturates"),
        pytest.param("9" * 5000, DELTA_SECONDS_MAX, id="1.2.2 thousands of digits saturate"),
        pytest.param("0" * 30 + "5", 5, id="1.2.2 many leading zeros"),
        pytest.param("7200.0", None, id="1.2.2 decimal"),
        pytest.param("-7200", None, id="1.2.2 negative"),
        pytest.param(" 5", None, id="1.2.2 whitespace"),
        pytest.param("", None, id="1.2.2 empty"),
        pytest.param("١٢", None, id="1.2.2 non-ASCII digits"),
    ],
)
def test_parse_delta_seconds(value: str, expected: int | None) -> None:
    assert parse_delta_seconds(value) == expected


@pytest.mark.parametrize(
    "lines, expected",
    [
        pytest.param(["60"], 60, id="5.1 plain"),
        pytest.param(["7200.0"], None, id="5.1 float ignored"),
        pytest.param(["abc"], None, id="5.1 non-numeric ignored"),
        pytest.param(["-7200"], None, id="5.1 negative ignored"),
        pytest.param(["2147483648"], DELTA_SECONDS_MAX, id="5.1 2^31 very old"),
        pytest.param(["99999999999"], DELTA_SECONDS_MAX, id="5.1 huge saturates"),
        pytest.param(["7200, 0"], 7200, id="5.1 first member of a list"),
        pytest.param(["0, 7200"], 0, id="5.1 first member, fresh"),
        pytest.param(["7200", "0"], 7200, id="5.1 first line"),
        pytest.param([], None, id="5.1 absent"),
    ],
)
def test_parse_age(lines: list[str], expected: int | None) -> None:
    assert parse_age(Headers.of([("Age", v) for v in lines])) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("Thu, 18 Aug 2050 02:01:18 GMT", AUG_18_2050, id="5.6.7 IMF-fixdate"),
        pytest.param("Thursday, 18-Aug-50 02:01:18 GMT", AUG_18_2050, id="5.6.7 rfc850"),
        pytest.param("Thu Aug 18 02:01:18 2050", AUG_18_2050, id="5.6.7 asctime"),
        pytest.param("Thu Aug  8 02:01:18 2050", AUG_18_2050 - 10 * 86400, id="5.6.7 asctime one-digit day"),
        pytest.param("THU, 18 AUG 2050 02:01:18 gMT", AUG_18_2050, id="5.6.7 wrong case tolerated"),
        pytest.param("  Thu, 18 Aug 2050 02:01:18 GMT ", AUG_18_2050, id="5.6.7 surrounding OWS"),
        pytest.param("Tue, 19 Jan 2038 03:14:08 GMT", 2147483648.0, id="5.6.7 past 32 bits"),
        pytest.param("Sat, 20 Nov 2286 17:46:39 GMT", 9999999999.0, id="5.6.7 far future"),
        pytest.param("Thu, 18 Aug 2050 02:01:18 UTC", None, id="5.6.7 UTC is not GMT"),
        pytest.param("Thu, 18 Aug 2050 02:01:18 AEST", None, id="5.6.7 other zone"),
        pytest.param("Thu, 18 Aug 50 02:01:18 GMT", None, id="5.6.7 two-digit year in IMF-fixdate"),
        pytest.param("Thu 18 Aug 2050 02:01:18 GMT", None, id="5.6.7 missing comma"),
        pytest.param("Thu, 18  Aug  2050 02:01:18 GMT", None, id="5.6.7 extra spaces"),
        pytest.param("Thu, 18-Aug-2050 02:01:18 GMT", None, id="5.6.7 dashes"),
        pytest.param("Thu, 18 Aug 2050 02.01.18 GMT", None, id="5.6.7 time periods"),
        pytest.param("Thu, 18 Aug 2050 2:01:18 GMT", None, id="5.6.7 one-digit hour"),
        pytest.param("Thu, 31 Feb 2050 02:01:18 GMT", None, id="5.6.7 no such day"),
        pytest.param("Thu, 18 Aug 2050 24:01:18 GMT", None, id="5.6.7 hour 24"),
        pytest.param("Thu, 18 Aug 0000 02:01:18 GMT", None, id="5.6.7 year zero"),
        pytest.param("0", None, id="5.3 Expires: 0"),
        pytest.param("", None, id="5.6.7 empty"),
    ],
)
def test_parse_http_date(value: str, expected: float | None) -> None:
    assert parse_http_date(value) == expected


@pytest.mark.parametrize(
    "yy, now_year, expected_year",
    [
        pytest.param("50", 2026, 2050, id="5.6.7 rfc850 24 years ahead stays ahead"),
        pytest.param("80", 2026, 1980, id="5.6.7 rfc850 54 years ahead is last century"),
        pytest.param("26", 2026, 2026, id="5.6.7 rfc850 this year"),
        pytest.param("99", 2090, 2099, id="5.6.7 rfc850 near the century end"),
    ],
)
def test_rfc850_two_digit_year(yy: str, now_year: int, expected_year: int) -> None:
    now = float(calendar.timegm((now_year, 6, 1, 0, 0, 0, 0, 0, 0)))
    got = parse_http_date(f"Monday, 01-Jan-{yy} 00:00:00 GMT", now=now)
    assert got == float(calendar.timegm((expected_year, 1, 1, 0, 0, 0, 0, 0, 0)))


def test_format_http_date_round_trips() -> None:
    assert format_http_date(AUG_18_2050) == "Thu, 18 Aug 2050 02:01:18 GMT"
    assert parse_http_date(format_http_date(1234567890.0)) == 1234567890.0


@pytest.mark.parametrize(
    "lines, expected",
    [
        pytest.param(["Thu, 18 Aug 2050 02:01:18 GMT"], AUG_18_2050, id="4.2.1 one line"),
        pytest.param(["Thu, 18 Aug 2050 02:01:18 GMT"] * 2, AUG_18_2050, id="4.2.1 identical lines"),
        pytest.param(
            ["Thu, 18 Aug 2050 02:01:18 GMT", "Thu, 18 Aug 2050 02:01:19 GMT"],
            None,
            id="4.2.1 conflicting lines",
        ),
        pytest.param([], None, id="4.2.1 absent"),
    ],
)
def test_header_date(lines: list[str], expected: float | None) -> None:
    assert header_date(Headers.of([("Expires", v) for v in lines]), "expires") == expected


@pytest.mark.parametrize(
    "headers, expected",
    [
        pytest.param({"Pragma": "no-cache"}, (("no-cache", None),), id="5.4 Pragma no-cache alone"),
        pytest.param({"Pragma": "No-Cache, x"}, (("no-cache", None),), id="5.4 case-insensitive"),
        pytest.param(
            {"Pragma": "no-cache", "Cache-Control": "max-age=5"}, (("max-age", "5"),), id="5.4 CC wins"
        ),
        pytest.param({"Pragma": "unrecognised-extension"}, (), id="5.4 other pragma ignored"),
        pytest.param({}, (), id="5.2.1 nothing"),
    ],
)
def test_request_cache_control(headers: dict[str, str], expected: tuple[tuple[str, str | None], ...]) -> None:
    assert request_cache_control(Headers.of(headers)).directives == expected


@pytest.mark.parametrize(
    "lines, expected",
    [
        pytest.param(["Accept-Encoding"], ("accept-encoding",), id="4.1 one name lower-cased"),
        pytest.param(["Foo, bar", "FOO"], ("foo", "bar"), id="4.1 lines combined, duplicates dropped"),
        pytest.param(["*"], ("*",), id="4.1 star"),
        pytest.param([", *"], ("*",), id="4.1 empty member then star"),
        pytest.param(["Foo, *"], ("foo", "*"), id="4.1 star after a name"),
        pytest.param([], (), id="4.1 absent"),
    ],
)
def test_parse_vary(lines: list[str], expected: tuple[str, ...]) -> None:
    assert parse_vary(Headers.of([("Vary", v) for v in lines])) == expected


def test_parse_list_drops_empty_members() -> None:
    assert parse_list(" a ,, b,") == ["a", "b"]


@given(st.text())
def test_parsers_never_raise(text: str) -> None:
    headers = Headers.of([("Cache-Control", text), ("Age", text), ("Vary", text), ("Expires", text)])
    parsed = parse_cache_control(headers)
    parsed.seconds("max-age", invalid=0)
    request_cache_control(Headers.of([("Pragma", text)]))
    parse_age(headers)
    parse_vary(headers)
    parse_delta_seconds(text)
    parse_http_date(text)
    parse_http_date(text, now=0.0)


@given(st.lists(st.sampled_from(["max-age=1", " ", ",", '"', "\\", "=", "no-cache", 'x="a,b"', "\t"])))
def test_cache_control_never_raises_on_fragments(parts: list[str]) -> None:
    for name, _ in cc("".join(parts)).directives:
        assert name and name == name.lower()
