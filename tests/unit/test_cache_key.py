"""Primary cache key, Vary secondary key and variant selection (RFC 9111 §4, §4.1)."""

from __future__ import annotations

import pytest

from fwdproxy.cache.key import (
    normalize_field,
    normalize_url,
    origin_of,
    primary_key,
    secondary_key,
    select_variant,
    vary_matches,
    vary_request_headers,
)
from fwdproxy.http_model import Headers, Request, StoredResponse

URL = "http://example.com/r"


def stored(
    vary: str | None = None,
    vary_request: list[tuple[str, str]] | None = None,
    *,
    date: str | None = None,
    response_time: float = 1000.0,
    name: str = "",
) -> StoredResponse:
    fields = [("X-Name", name)]
    if vary is not None:
        fields.append(("Vary", vary))
    if date is not None:
        fields.append(("Date", date))
    return StoredResponse(
        url=URL,
        status=200,
        reason="OK",
        headers=Headers.of(fields),
        request_time=response_time,
        response_time=response_time,
        body_length=0,
        vary_request=Headers.of(vary_request or []),
    )


def request(*fields: tuple[str, str]) -> Request:
    return Request("GET", URL, Headers.of(list(fields)))


@pytest.mark.parametrize(
    "method, url, expected",
    [
        pytest.param(
            "GET", "http://Example.COM/a?b=1", "GET http://example.com/a?b=1", id="4 host lower-cased"
        ),
        pytest.param(
            "HEAD", "http://example.com/a", "GET http://example.com/a", id="4 HEAD shares the GET key"
        ),
        pytest.param("get", "http://example.com/a", "GET http://example.com/a", id="4 method upper-cased"),
        pytest.param(
            "GET", "HTTP://example.com:80/a", "GET http://example.com/a", id="4 default http port elided"
        ),
        pytest.param(
            "GET", "https://example.com:443/a", "GET https://example.com/a", id="4 default https port"
        ),
        pytest.param(
            "GET", "https://example.com:80/a", "GET https://example.com:80/a", id="4 port 80 on https kept"
        ),
        pytest.param(
            "GET", "http://example.com:8080/a", "GET http://example.com:8080/a", id="4 other port kept"
        ),
        pytest.param("GET", "http://example.com", "GET http://example.com/", id="4 empty path is /"),
        pytest.param(
            "GET", "http://example.com?q", "GET http://example.com/?q", id="4 empty path with query"
        ),
        pytest.param(
            "GET", "http://example.com/A%2fB?Q=X", "GET http://example.com/A%2fB?Q=X", id="4 path as sent"
        ),
        pytest.param("GET", "http://example.com/a?", "GET http://example.com/a?", id="4 empty query as sent"),
        pytest.param("GET", "http://example.com/a#frag", "GET http://example.com/a", id="4 fragment dropped"),
        pytest.param(
            "GET", "http://user:pw@example.com/a", "GET http://example.com/a", id="4 userinfo dropped"
        ),
        pytest.param("GET", "http://[::1]:80/a", "GET http://[::1]/a", id="4 IPv6 literal default port"),
        pytest.param("GET", "http://[::1]:8080/a", "GET http://[::1]:8080/a", id="4 IPv6 literal port"),
        pytest.param("POST", "http://example.com/a", "POST http://example.com/a", id="4 other methods keyed"),
        pytest.param("GET", "not a url", "GET not a url", id="4 unsplittable URL unchanged"),
    ],
)
def test_primary_key(method: str, url: str, expected: str) -> None:
    assert primary_key(method, url) == expected


def test_http_and_https_never_mix() -> None:
    assert primary_key("GET", "http://example.com/a") != primary_key("GET", "https://example.com/a")


@pytest.mark.parametrize(
    "query_a, query_b",
    [
        pytest.param("?a=1", "?a=2", id="4 different queries are different keys"),
        pytest.param("?a=1&b=2", "?b=2&a=1", id="4 query order is significant"),
        pytest.param("", "?", id="4 empty query differs from none"),
    ],
)
def test_queries_are_distinct(query_a: str, query_b: str) -> None:
    assert primary_key("GET", URL + query_a) != primary_key("GET", URL + query_b)


def test_normalize_url_and_origin() -> None:
    assert (
        normalize_url("HTTPS://Files.PythonHosted.org:443/packages/x")
        == "https://files.pythonhosted.org/packages/x"
    )
    assert origin_of("http://A.example:80/x?y") == "http://a.example"


@pytest.mark.parametrize(
    "lines, name, expected",
    [
        pytest.param([], "foo", None, id="4.1 absent is None"),
        pytest.param([""], "foo", "", id="4.1 present but empty differs from absent"),
        pytest.param(["1, 2"], "foo", "1,2", id="4.1 whitespace around members removed"),
        pytest.param(["1", "2"], "foo", "1,2", id="4.1 field lines combined"),
        pytest.param([" 1 ,  2 "], "foo", "1,2", id="4.1 leading/trailing whitespace"),
        pytest.param(["a  b"], "foo", "a b", id="4.1 inner whitespace collapsed"),
        pytest.param(["en, DE"], "Accept-Language", "de,en", id="4.1 Accept-Language: order and case"),
        pytest.param(["gzip, br"], "accept-encoding", "br,gzip", id="4.1 Accept-Encoding: order"),
        pytest.param(["Text/HTML"], "accept", "Text/HTML", id="4.1 other headers keep case"),
    ],
)
def test_normalize_field(lines: list[str], name: str, expected: str | None) -> None:
    assert normalize_field(lines, name) == expected


@pytest.mark.parametrize(
    "vary, stored_request, presented, expected",
    [
        pytest.param(None, [], [], True, id="4.1 no Vary always matches"),
        pytest.param("Foo", [("Foo", "1")], [("Foo", "1")], True, id="4.1 same value matches"),
        pytest.param("Foo", [("Foo", "1")], [("Foo", "2")], False, id="4.1 different value"),
        pytest.param("Foo", [], [("Foo", "1")], False, id="4.1 stored request omitted the header"),
        pytest.param("Foo", [("Foo", "1")], [], False, id="4.1 presented request omits the header"),
        pytest.param("Foo", [], [], True, id="4.1 both omit the header"),
        pytest.param("foo", [("FOO", "1")], [("Foo", "1")], True, id="4.1 field names case-insensitive"),
        pytest.param("Foo", [("Foo", "1, 2")], [("Foo", "1"), ("Foo", "2")], True, id="4.1 combining lines"),
        pytest.param("Foo", [("Foo", "1,2")], [("Foo", " 1, 2 ")], True, id="4.1 removing whitespace"),
        pytest.param(
            "Foo, Bar", [("Foo", "1"), ("Bar", "2")], [("Bar", "2"), ("Foo", "1")], True, id="4.1 two"
        ),
        pytest.param(
            "Foo, Bar", [("Foo", "1"), ("Bar", "2")], [("Foo", "1"), ("Bar", "3")], False, id="4.1 two-way"
        ),
        pytest.param(
            "Foo", [("Foo", "1")], [("Foo", "1"), ("Other", "x")], True, id="4.1 unlisted headers ignored"
        ),
        pytest.param(
            "Accept-Language",
            [("Accept-Language", "en, de")],
            [("Accept-Language", "De,eN")],
            True,
            id="4.1 Accept-Language normalised",
        ),
        pytest.param("*", [], [], False, id="4.1 Vary: * never matches"),
        pytest.param("*, *", [], [], False, id="4.1 Vary: *, * never matches"),
        pytest.param(", *", [], [], False, id="4.1 Vary: , * never matches"),
        pytest.param("Foo, *", [("Foo", "1")], [("Foo", "1")], False, id="4.1 Vary: Foo, * never matches"),
    ],
)
def test_vary_matches(
    vary: str | None, stored_request: list[tuple[str, str]], presented: list[tuple[str, str]], expected: bool
) -> None:
    assert vary_matches(stored(vary, stored_request), request(*presented)) is expected


def test_vary_star_on_separate_lines_never_matches() -> None:
    s = StoredResponse(URL, 200, "OK", Headers.of([("Vary", "*"), ("Vary", "*")]), 0, 0, 0)
    assert not vary_matches(s, request())


def test_select_variant_picks_the_match() -> None:
    gzip = stored("Accept-Encoding", [("Accept-Encoding", "gzip")], name="gzip")
    br = stored("Accept-Encoding", [("Accept-Encoding", "br")], name="br")
    assert select_variant(request(("Accept-Encoding", "br")), [gzip, br]) is br
    assert select_variant(request(("Accept-Encoding", "zstd")), [gzip, br]) is None
    assert select_variant(request(), []) is None


def test_select_variant_prefers_the_most_recent() -> None:
    """§4.1: among several matching responses the most recent (by Date) is used."""
    old = stored(date="Mon, 01 Jan 2024 00:00:00 GMT", response_time=2000.0, name="old")
    new = stored(date="Tue, 02 Jan 2024 00:00:00 GMT", response_time=1000.0, name="new")
    assert select_variant(request(), [old, new]) is new
    undated_a, undated_b = stored(response_time=1.0), stored(response_time=2.0)
    assert select_variant(request(), [undated_b, undated_a]) is undated_b


def test_vary_request_headers_keeps_only_selecting_fields() -> None:
    response = Headers.of([("Vary", "Accept-Encoding, X-Foo")])
    req = Headers.of([("Accept-Encoding", "gzip"), ("Cookie", "secret"), ("x-foo", "1"), ("X-Foo", "2")])
    assert vary_request_headers(response, req).fields == (
        ("Accept-Encoding", "gzip"),
        ("x-foo", "1"),
        ("X-Foo", "2"),
    )
    assert vary_request_headers(Headers(), req).fields == ()


@pytest.mark.parametrize(
    "vary, a, b, same",
    [
        pytest.param(None, [("Foo", "1")], [("Foo", "2")], True, id="4.1 no Vary: one variant"),
        pytest.param("Foo", [("Foo", "1")], [("Foo", "2")], False, id="4.1 different variants"),
        pytest.param("Foo", [("Foo", "1, 2")], [("Foo", "1"), ("Foo", "2")], True, id="4.1 normalised alike"),
        pytest.param("Foo", [], [("Foo", "")], False, id="4.1 absent differs from empty"),
        pytest.param("Foo, Bar", [("Foo", "1")], [("Foo", "1")], True, id="4.1 order of Vary irrelevant"),
    ],
)
def test_secondary_key(
    vary: str | None, a: list[tuple[str, str]], b: list[tuple[str, str]], same: bool
) -> None:
    response = Headers.of([("Vary", vary)] if vary else [])
    assert (secondary_key(response, Headers.of(a)) == secondary_key(response, Headers.of(b))) is same


def test_secondary_key_values() -> None:
    assert secondary_key(Headers(), Headers.of({"Foo": "1"})) == ""
    assert secondary_key(Headers.of({"Vary": "*"}), Headers()) == "*"
    assert secondary_key(Headers.of({"Vary": "B, a"}), Headers.of({"A": "1"})) == "a=1\nb"
