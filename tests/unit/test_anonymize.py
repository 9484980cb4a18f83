"""Header anonymization per level (issue 5): exact kept sets, strict rewrites, custom rules, config errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwdproxy.anonymize import (
    DEFAULT_ACCEPT_LANGUAGE,
    DEFAULT_USER_AGENT,
    IDENTIFYING_REQUEST_HEADERS,
    PROXY_REQUEST_HEADERS,
    STRICT_REQUEST_HEADERS,
    STRICT_RESPONSE_HEADERS,
    AnonymizeConfig,
    Level,
    anonymize_request,
    anonymize_response,
    is_identifying,
    parse_anonymize,
    same_site,
    touched,
)
from fwdproxy.http_model import Headers
from fwdproxy.unkeyed import UNKEYED_HEADERS

URL = "https://shop.example.com/cart"
NORMAL = (
    ("Host", "shop.example.com"),
    ("Accept", "text/html"),
    ("Accept-Encoding", "gzip"),
    ("Accept-Language", "de-CH,de;q=0.8"),
    ("User-Agent", "curl/8.5.0"),
    ("Cookie", "session=abc"),
    ("Authorization", "Bearer t"),
    ("Cache-Control", "no-cache"),
    ("Referer", "https://www.example.com/search?q=secret"),
    ("Origin", "https://www.example.com"),
)
NORMAL_NAMES = {k.lower() for k, _ in NORMAL}
EXTRA_CHAIN = ("X-Forwarded-Ssl", "X-Forwarded-Client-Cert")  # caught by the X-Forwarded- prefix
LOADED = Headers.of(
    NORMAL
    + tuple((n, "203.0.113.7") for n in IDENTIFYING_REQUEST_HEADERS + EXTRA_CHAIN)
    + tuple((n, "x") for n in PROXY_REQUEST_HEADERS + STRICT_REQUEST_HEADERS)
)


def names(headers: Headers) -> set[str]:
    return {k.lower() for k, _ in headers}


def lower(names: tuple[str, ...]) -> set[str]:
    return {n.lower() for n in names}


@pytest.mark.parametrize(
    "level, kept",
    [
        pytest.param(
            Level.OFF,
            NORMAL_NAMES | lower(IDENTIFYING_REQUEST_HEADERS + EXTRA_CHAIN + STRICT_REQUEST_HEADERS),
            id="off forwards all but proxy headers",
        ),
        pytest.param(Level.STANDARD, NORMAL_NAMES | lower(STRICT_REQUEST_HEADERS), id="standard"),
        pytest.param(Level.STRICT, NORMAL_NAMES, id="strict"),
    ],
)
def test_exact_headers_kept_per_level(level: Level, kept: set[str]) -> None:
    assert names(anonymize_request(LOADED, URL, AnonymizeConfig(level=level))) == kept


def test_strict_rewrites_values() -> None:
    out = anonymize_request(LOADED, URL, AnonymizeConfig(level=Level.STRICT))
    assert out.get("User-Agent") == DEFAULT_USER_AGENT
    assert out.get("Accept-Language") == DEFAULT_ACCEPT_LANGUAGE
    assert out.get("Referer") == "https://www.example.com/"
    # Untouched normal headers keep their values and their order.
    assert [k for k, _ in out][:3] == ["Host", "Accept", "Accept-Encoding"]
    assert out.get("Cookie") == "session=abc"
    assert out.get("Origin") == "https://www.example.com"


def test_standard_leaves_normal_values_alone() -> None:
    out = anonymize_request(LOADED, URL, AnonymizeConfig())
    assert out.fields[: len(NORMAL)] == NORMAL


def test_issue_done_when_default_level() -> None:
    sent = Headers.of(
        {
            "X-Forwarded-For": "198.51.100.1",
            "Forwarded": "for=198.51.100.1",
            "Via": "1.1 corp-proxy",
            "X-Real-IP": "198.51.100.1",
            "True-Client-IP": "198.51.100.1",
            "CF-Connecting-IP": "198.51.100.1",
            "Accept": "*/*",
        }
    )
    assert anonymize_request(sent, URL, parse_anonymize({})) == Headers.of({"Accept": "*/*"})


def test_strict_adds_user_agent_and_language_when_absent() -> None:
    out = anonymize_request(Headers.of({"Accept": "*/*"}), URL, AnonymizeConfig(level=Level.STRICT))
    assert out == Headers.of(
        {"Accept": "*/*", "User-Agent": DEFAULT_USER_AGENT, "Accept-Language": DEFAULT_ACCEPT_LANGUAGE}
    )


@pytest.mark.parametrize(
    "name",
    ["x-forwarded-for", "X-FORWARDED-FOR", "via", "cf-connecting-ip", "X-Forwarded-Anything", "x-msisdn"],
)
def test_identifying_is_case_insensitive(name: str) -> None:
    assert is_identifying(name)
    out = anonymize_request(Headers.of([(name, "1"), (name, "2"), ("Accept", "*/*")]), URL, AnonymizeConfig())
    assert names(out) == {"accept"}


@pytest.mark.parametrize("name", ["Accept", "Cookie", "Host", "CDN-Loop", "From"])
def test_not_identifying(name: str) -> None:
    assert not is_identifying(name)


@pytest.mark.parametrize("name", UNKEYED_HEADERS)
def test_standard_removes_unkeyed_rewrites_and_off_keeps_them(name: str) -> None:
    sent = Headers.of([(name, "/admin"), ("Accept", "*/*")])
    assert names(anonymize_request(sent, URL, AnonymizeConfig())) == {"accept"}
    assert anonymize_request(sent, URL, AnonymizeConfig(level=Level.OFF)) == sent


def test_lists_have_no_duplicates() -> None:
    for listed in (IDENTIFYING_REQUEST_HEADERS, STRICT_REQUEST_HEADERS, STRICT_RESPONSE_HEADERS):
        assert len(lower(listed)) == len(listed)


REQ = Headers.of(
    [
        ("Accept", "*/*"),
        ("X-Forwarded-For", "198.51.100.1"),
        ("X-Debug", "1"),
        ("DNT", "0"),
        ("User-Agent", "curl/8"),
        ("Proxy-Authorization", "Basic eA=="),
    ]
)


@pytest.mark.parametrize(
    "cfg, expected",
    [
        pytest.param(
            AnonymizeConfig(remove=("x-debug",)),
            [("Accept", "*/*"), ("DNT", "0"), ("User-Agent", "curl/8")],
            id="remove, case-insensitive",
        ),
        pytest.param(
            AnonymizeConfig(set=(("dnt", "1"), ("X-Team", "ci"))),
            [("Accept", "*/*"), ("X-Debug", "1"), ("DNT", "1"), ("User-Agent", "curl/8"), ("X-Team", "ci")],
            id="set replaces in place (keeping the name's case) and adds",
        ),
        pytest.param(
            AnonymizeConfig(keep=("x-FORWARDED-for",)),
            [("Accept", "*/*"), ("X-Forwarded-For", "198.51.100.1"), ("X-Debug", "1"), ("DNT", "0")]
            + [("User-Agent", "curl/8")],
            id="keep exempts from the level list",
        ),
        pytest.param(
            AnonymizeConfig(keep=("Proxy-Authorization",)),
            [("Accept", "*/*"), ("X-Debug", "1"), ("DNT", "0"), ("User-Agent", "curl/8")],
            id="keep cannot forward Proxy-Authorization",
        ),
        pytest.param(
            AnonymizeConfig(set=(("Proxy-Authorization", "Basic eQ=="),)),
            [("Accept", "*/*"), ("X-Debug", "1"), ("DNT", "0"), ("User-Agent", "curl/8")],
            id="set cannot forward Proxy-Authorization",
        ),
        pytest.param(
            AnonymizeConfig(level=Level.STRICT, keep=("User-Agent",), remove=("Accept-Language",)),
            [("Accept", "*/*"), ("X-Debug", "1"), ("DNT", "0"), ("User-Agent", "curl/8")],
            id="strict: keep the client's UA, remove beats strict's Accept-Language",
        ),
        pytest.param(
            AnonymizeConfig(level=Level.STRICT, set=(("User-Agent", "fleet/1"),), keep=("Accept-Language",)),
            [("Accept", "*/*"), ("X-Debug", "1"), ("DNT", "0"), ("User-Agent", "fleet/1")],
            id="strict: set beats the configured UA",
        ),
        pytest.param(
            AnonymizeConfig(level=Level.OFF, remove=("X-Debug",), set=(("DNT", "1"),)),
            [("Accept", "*/*"), ("X-Forwarded-For", "198.51.100.1"), ("X-Debug", "1"), ("DNT", "0")]
            + [("User-Agent", "curl/8")],
            id="off ignores custom rules",
        ),
    ],
)
def test_custom_rules(cfg: AnonymizeConfig, expected: list[tuple[str, str]]) -> None:
    assert anonymize_request(REQ, URL, cfg) == Headers.of(expected)


@pytest.mark.parametrize(
    "referer, url, expected",
    [
        pytest.param("https://shop.example.com/a?b#c", URL, "https://shop.example.com/", id="same origin"),
        pytest.param("https://www.example.com/p", URL, "https://www.example.com/", id="same site subdomain"),
        pytest.param("https://Example.COM./p", URL, "https://example.com./", id="case and trailing dot"),
        pytest.param("https://u:pw@www.example.com:8443/p", URL, "https://www.example.com:8443/", id="port"),
        pytest.param("https://www.example.com:443/p", URL, "https://www.example.com/", id="default port"),
        pytest.param("https://tracker.example.net/p", URL, None, id="cross site"),
        pytest.param("http://www.example.com/p", URL, None, id="scheme differs"),
        pytest.param("https://10.0.0.1/p", "https://10.0.0.1/x", "https://10.0.0.1/", id="same address"),
        pytest.param("https://10.0.0.1/p", "https://10.0.0.2/x", None, id="other address, same last labels"),
        pytest.param("https://[::1]:8080/p", "https://[::1]/x", "https://[::1]:8080/", id="ipv6"),
        pytest.param("android-app://com.example/", URL, None, id="not http"),
        pytest.param("not a url", URL, None, id="garbage"),
        pytest.param("https://[::1/p", URL, None, id="broken brackets"),
        pytest.param("https://www.example.com:99999/", URL, None, id="bad port"),
    ],
)
def test_strict_referer(referer: str, url: str, expected: str | None) -> None:
    out = anonymize_request(Headers.of({"Referer": referer}), url, AnonymizeConfig(level=Level.STRICT))
    assert out.get("Referer") == expected


def test_kept_referer_is_untouched() -> None:
    cfg = AnonymizeConfig(level=Level.STRICT, keep=("referer",))
    sent = Headers.of({"Referer": "https://tracker.example.net/p?q"})
    assert anonymize_request(sent, URL, cfg).get("Referer") == "https://tracker.example.net/p?q"


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("https://a.example.com/", "https://b.example.com/", True),
        ("https://example.com/", "https://x.y.example.com/", True),
        ("https://a.example.com/", "http://a.example.com/", False),
        ("https://a.co.uk/", "https://b.co.uk/", True),  # the documented cost of having no PSL
        ("https://localhost/", "https://localhost:8080/", True),
        ("https://localhost/", "https://otherhost/", False),
        ("https://example.com/", "https://example.org/", False),
        ("ftp://example.com/", "ftp://example.com/", False),
        ("", "https://example.com/", False),
    ],
)
def test_same_site(a: str, b: str, expected: bool) -> None:
    assert same_site(a, b) is expected
    assert same_site(b, a) is expected


RESP = Headers.of(
    [("Content-Type", "text/html"), ("Server", "nginx"), ("Via", "1.1 cdn"), ("Server-Timing", "db;dur=5")]
    + [(n.upper(), "10.1.2.3") for n in STRICT_RESPONSE_HEADERS]
    + [("X-Debug-Token", "abc")]
)
RESP_NAMES = names(RESP)


@pytest.mark.parametrize(
    "cfg, kept",
    [
        pytest.param(
            AnonymizeConfig(level=Level.OFF, response_remove=("X-Debug-Token",)), RESP_NAMES, id="off"
        ),
        pytest.param(AnonymizeConfig(), RESP_NAMES, id="standard keeps responses"),
        pytest.param(
            AnonymizeConfig(response_remove=("x-debug-token",)),
            RESP_NAMES - {"x-debug-token"},
            id="standard applies response_remove",
        ),
        pytest.param(
            AnonymizeConfig(level=Level.STRICT),
            {"content-type", "server", "via", "server-timing", "x-debug-token"},
            id="strict removes backend names",
        ),
        pytest.param(
            AnonymizeConfig(level=Level.STRICT, keep=("x-served-by",), response_remove=("Via",)),
            {"content-type", "server", "server-timing", "x-debug-token", "x-served-by"},
            id="strict with keep and response_remove",
        ),
    ],
)
def test_anonymize_response(cfg: AnonymizeConfig, kept: set[str]) -> None:
    assert names(anonymize_response(RESP, cfg)) == kept


def test_parse_defaults() -> None:
    assert parse_anonymize({}) == AnonymizeConfig()
    assert AnonymizeConfig().level is Level.STANDARD


def test_parse_full_table() -> None:
    table: dict[str, object] = {
        "level": "strict",
        "user_agent": "fleet/1",
        "accept_language": "fr",
        "remove": ["X-Debug"],
        "set": {"DNT": "1"},
        "keep": ["Referer"],
        "response_remove": ["X-Powered-By"],
    }
    assert parse_anonymize(table) == AnonymizeConfig(
        level=Level.STRICT,
        user_agent="fleet/1",
        accept_language="fr",
        remove=("X-Debug",),
        set=(("DNT", "1"),),
        keep=("Referer",),
        response_remove=("X-Powered-By",),
    )


@pytest.mark.parametrize(
    "table, message",
    [
        ({"level": "x"}, "anonymize.level: 'x' is not one of off, standard, strict"),
        ({"level": 1}, "anonymize.level: 1 is not one of"),
        ({"levle": "off"}, "anonymize.levle: unknown key; expected one of level, user_agent"),
        ({"user_agent": ""}, "anonymize.user_agent: '' is not a header value"),
        (
            {"user_agent": "a\r\nX-Evil: 1"},
            "anonymize.user_agent: 'a\\\\r\\\\nX-Evil: 1' is not a header value",
        ),
        ({"accept_language": 5}, "anonymize.accept_language: 5 is not a header value"),
        ({"remove": "X-Debug"}, "anonymize.remove: 'X-Debug' is not a list of header names"),
        ({"remove": ["X Debug"]}, "anonymize.remove: 'X Debug' is not a header name"),
        ({"keep": [3]}, "anonymize.keep: 3 is not a header name"),
        ({"keep": ["proxy-authorization"]}, "anonymize.keep: 'proxy-authorization' is never forwarded"),
        ({"keep": ["Via"], "remove": ["via"]}, "anonymize.keep: 'Via' is also in anonymize.remove"),
        ({"set": ["DNT"]}, "anonymize.set: \\['DNT'\\] is not a table"),
        ({"set": {"DNT": 1}}, "anonymize.set.DNT: 1 is not a header value"),
        ({"set": {"a b": "1"}}, "anonymize.set: 'a b' is not a header name"),
        ({"set": {"DNT": "1", "dnt": "0"}}, "anonymize.set: 'dnt' appears twice"),
        ({"set": {"Proxy-Connection": "x"}}, "anonymize.set: 'Proxy-Connection' is never forwarded"),
        ({"response_remove": [""]}, "anonymize.response_remove: '' is not a header name"),
    ],
)
def test_parse_errors(table: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        parse_anonymize(table)


# --- properties ----------------------------------------------------------------------------------------

header_names = st.one_of(
    st.sampled_from(IDENTIFYING_REQUEST_HEADERS + PROXY_REQUEST_HEADERS + STRICT_REQUEST_HEADERS),
    st.sampled_from(["Referer", "User-Agent", "Accept", "X-Forwarded-Zzz"]),
    st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z"),
).map(lambda n: "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(n)))
requests = st.lists(st.tuples(header_names, st.text(max_size=40)), max_size=12).map(Headers.of)


@given(requests, st.text(max_size=40), st.sampled_from(list(Level)))
def test_no_identifying_header_survives(headers: Headers, url: str, level: Level) -> None:
    out = names(anonymize_request(headers, url, AnonymizeConfig(level=level)))
    assert not out & lower(PROXY_REQUEST_HEADERS)
    if level is not Level.OFF:
        assert not any(is_identifying(n) for n in out)
    if level is Level.STRICT:
        assert not out & lower(STRICT_REQUEST_HEADERS)


@given(st.text(max_size=60), st.text(max_size=60))
def test_strict_referer_is_an_origin_or_nothing(referer: str, url: str) -> None:
    cfg = AnonymizeConfig(level=Level.STRICT)
    out = anonymize_request(Headers.of({"Referer": referer}), url, cfg).get("Referer")
    assert out is None or (
        out.startswith(("http://", "https://")) and out.endswith("/") and out.count("/") == 3
    )


configs = st.builds(
    AnonymizeConfig,
    level=st.sampled_from(list(Level)),
    remove=st.lists(header_names, max_size=2).map(tuple),
    set=st.lists(st.tuples(header_names, st.just("1")), max_size=1).map(tuple),
    keep=st.lists(header_names, max_size=2).map(tuple),
    response_remove=st.lists(header_names, max_size=2).map(tuple),
)


@given(requests, configs)
def test_touched_is_a_safe_shortcut(headers: Headers, cfg: AnonymizeConfig) -> None:
    """What the addon skips (no touched name present) really would pass unchanged."""
    t = touched(cfg)
    lnames = names(headers)
    if not t.every_request and not any(n in t.request or n.startswith(t.request_prefixes) for n in lnames):
        assert anonymize_request(headers, URL, cfg) == headers
    if not lnames & t.response:
        assert anonymize_response(headers, cfg) == headers


def test_touched_per_level() -> None:
    assert touched(AnonymizeConfig(level=Level.OFF)).request == lower(PROXY_REQUEST_HEADERS)
    assert not touched(AnonymizeConfig(level=Level.OFF, response_remove=("X-A",))).response
    standard = touched(AnonymizeConfig(keep=("Via",), remove=("X-Debug",)))
    assert "via" not in standard.request and {"x-debug", "x-real-ip"} <= standard.request
    assert not standard.every_request and not standard.response
    assert touched(AnonymizeConfig(set=(("DNT", "1"),))).every_request
    strict = touched(AnonymizeConfig(level=Level.STRICT))
    assert strict.every_request and strict.response == lower(STRICT_RESPONSE_HEADERS)
