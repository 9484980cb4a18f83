"""Header fields stored (RFC 9111 §3.1) and served with Age (§5.1)."""

from __future__ import annotations

import pytest

from fwdproxy.cache.directives import DELTA_SECONDS_MAX, format_http_date
from fwdproxy.cache.headers import HOP_BY_HOP, age_value, full_headers, served_headers, storable_headers
from fwdproxy.http_model import Headers, StoredResponse

NOW = 1_700_000_000.0


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_not_stored(name: str) -> None:
    """§3.1: connection-specific fields are never stored."""
    kept = storable_headers(Headers.of([(name.title(), "x"), ("Content-Type", "text/plain")]))
    assert kept.fields == (("Content-Type", "text/plain"),)


@pytest.mark.parametrize(
    "fields, expected",
    [
        pytest.param(
            [("Connection", "a, b"), ("a", "1"), ("B", "2"), ("c", "3")],
            [("c", "3")],
            id="3.1 fields named in Connection",
        ),
        pytest.param(
            [("Connection", "A"), ("Connection", "keep-alive"), ("a", "1"), ("c", "3")],
            [("c", "3")],
            id="3.1 several Connection lines",
        ),
        pytest.param(
            [("Set-Cookie", "a=b"), ("Content-Encoding", "gzip"), ("X-Frame-Options", "deny")],
            [("Set-Cookie", "a=b"), ("Content-Encoding", "gzip"), ("X-Frame-Options", "deny")],
            id="3.1 end-to-end fields kept",
        ),
    ],
)
def test_storable_headers(fields: list[tuple[str, str]], expected: list[tuple[str, str]]) -> None:
    assert storable_headers(Headers.of(fields)).fields == tuple(expected)


def test_storable_headers_adds_a_missing_date() -> None:
    """RFC 9110 §6.6.1: a recipient with a clock adds Date to a response it caches."""
    assert storable_headers(Headers(), response_time=NOW).fields == (("Date", format_http_date(NOW)),)
    dated = Headers.of({"Date": "Mon, 01 Jan 2024 00:00:00 GMT"})
    assert storable_headers(dated, response_time=NOW) == dated


@pytest.mark.parametrize(
    "age, expected",
    [
        pytest.param(0, "0", id="5.1 zero"),
        pytest.param(29.9, "29", id="5.1 rounded down"),
        pytest.param(-3, "0", id="5.1 never negative"),
        pytest.param(DELTA_SECONDS_MAX + 5, str(DELTA_SECONDS_MAX), id="1.2.2 saturates"),
        pytest.param(float("inf"), str(DELTA_SECONDS_MAX), id="1.2.2 infinity saturates"),
    ],
)
def test_age_value(age: float, expected: str) -> None:
    assert age_value(age) == expected


def test_served_headers_set_age_and_keep_date() -> None:
    """§5.1: Age on every response served from cache, replacing a stored one; Date untouched."""
    date = format_http_date(NOW - 100)
    s = StoredResponse(
        "http://a/",
        200,
        "OK",
        Headers.of([("Date", date), ("Age", "5"), ("X", "1")]),
        NOW - 100,
        NOW - 100,
        0,
    )
    assert served_headers(s, now=NOW).fields == (
        ("Date", date),
        ("Age", "105"),
        ("X", "1"),
        ("Accept-Ranges", "bytes"),
    )


def test_served_and_full_headers_are_shared_within_a_second_of_age() -> None:
    """Hits on one entry within the same second of Age share one Headers object; a new second, a new Age."""
    s = StoredResponse("http://a/", 200, "OK", Headers.of([("X", "1")]), NOW - 10, NOW - 10, 7)
    first = served_headers(s, now=NOW)
    assert served_headers(s, now=NOW + 0.5) is first
    later = served_headers(s, now=NOW + 1)
    assert later.get("age") == "11" and later is not first
    full = full_headers(s, now=NOW + 1)
    assert full.fields == (("X", "1"), ("Age", "11"), ("Accept-Ranges", "bytes"), ("Content-Length", "7"))
    assert full_headers(s, now=NOW + 1.9) is full
    assert full_headers(s, now=NOW + 2).get("age") == "12"
    other = StoredResponse("http://a/", 200, "OK", Headers.of([("X", "2")]), NOW - 10, NOW - 10, 3)
    assert full_headers(other, now=NOW + 2).fields == (
        ("X", "2"),
        ("Age", "12"),
        ("Accept-Ranges", "bytes"),
        ("Content-Length", "3"),
    )


@pytest.mark.parametrize(
    "status, stored_value, expected",
    [
        pytest.param(200, None, "bytes", id="RFC9110-14.3 a stored 200 answers ranges"),
        pytest.param(200, "none", "bytes", id="RFC9110-14.3 the cache answers even if the origin would not"),
        pytest.param(404, None, None, id="RFC9110-14.2 other statuses are served whole: no claim"),
        pytest.param(301, "bytes", "bytes", id="the origin's own field is kept as stored"),
    ],
)
def test_accept_ranges_served(status: int, stored_value: str | None, expected: str | None) -> None:
    fields = [("X", "1")] + ([("Accept-Ranges", stored_value)] if stored_value else [])
    s = StoredResponse("http://a/", status, "", Headers.of(fields), NOW, NOW, 3)
    assert served_headers(s, now=NOW).get("accept-ranges") == expected
    assert full_headers(s, now=NOW).get("accept-ranges") == expected
