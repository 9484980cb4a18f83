"""fwdproxy.target: one reading of the target, and the cache key built from what is forwarded (issue 16)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwdproxy import guard, target
from fwdproxy.cache.key import normalize_url, primary_key
from fwdproxy.target import Problem


@pytest.mark.parametrize(
    "method, path, expected",
    [
        pytest.param("GET", "/x?q=1", None, id="9112-3.2.1 origin-form"),
        pytest.param("GET", "/", None, id="9112-3.2.1 root"),
        pytest.param("GET", "/a@b/c", None, id="3986-3.3 @ inside a path is data"),
        pytest.param("OPTIONS", "*", None, id="9112-3.2.4 OPTIONS asterisk"),
        pytest.param("options", "*", None, id="9112-3.2.4 method compared case-insensitively"),
        pytest.param("GET", "*", Problem.STAR_NOT_OPTIONS, id="9112-3.2.4 asterisk for GET"),
        pytest.param("PURGE", "*", Problem.STAR_NOT_OPTIONS, id="9112-3.2.4 asterisk for PURGE"),
        pytest.param("GET", "@evil.example/x", Problem.NOT_ORIGIN_FORM, id="9113-8.3.1 :path with userinfo"),
        pytest.param("GET", "x", Problem.NOT_ORIGIN_FORM, id="9113-8.3.1 relative path"),
        pytest.param("GET", "", Problem.NOT_ORIGIN_FORM, id="9113-8.3.1 empty path"),
        pytest.param("GET", "http://a/x", Problem.NOT_ORIGIN_FORM, id="9113-8.3.1 absolute URL in :path"),
        pytest.param("GET", "?q", Problem.NOT_ORIGIN_FORM, id="9113-8.3.1 query only"),
        pytest.param("GET", "/a b", Problem.PATH_WHITESPACE, id="9112-3.2 space in target"),
        pytest.param("GET", "/a\tb", Problem.PATH_WHITESPACE, id="9112-3.2 tab in target"),
        pytest.param("GET", "/a\x00", Problem.PATH_WHITESPACE, id="9112-3.2 NUL in target"),
        pytest.param("GET", "/a\x7f", Problem.PATH_WHITESPACE, id="9112-3.2 DEL in target"),
    ],
)
def test_check_path(method: str, path: str, expected: Problem | None) -> None:
    refusal = target.check_path(method, path)
    assert (refusal.problem if refusal else None) is expected
    if refusal is not None:
        assert refusal.status == 400 and refusal.message


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("example.com", None, id="9110-7.2 host"),
        pytest.param("example.com:8443", None, id="9110-7.2 host and port"),
        pytest.param("[::1]:443", None, id="3986-3.2.2 IPv6 literal"),
        pytest.param("victim@evil.example", Problem.USERINFO, id="9110-4.2.4 userinfo"),
        pytest.param("user:pw@evil.example:443", Problem.USERINFO, id="9110-4.2.4 userinfo with password"),
        pytest.param("@evil.example", Problem.USERINFO, id="9110-4.2.4 empty userinfo"),
        pytest.param("a.example/x", Problem.BAD_AUTHORITY, id="3986-3.2 slash ends the authority"),
        pytest.param("a.example?x", Problem.BAD_AUTHORITY, id="3986-3.2 query ends the authority"),
        pytest.param("a.example#x", Problem.BAD_AUTHORITY, id="3986-3.2 fragment ends the authority"),
        pytest.param("a.example\\b.example", Problem.BAD_AUTHORITY, id="3986-3.2 backslash read as slash"),
        pytest.param("a.example b.example", Problem.BAD_AUTHORITY, id="3986-3.2 whitespace"),
    ],
)
def test_check_authority(value: str, expected: Problem | None) -> None:
    refusal = target.check_authority(value, "Host")
    assert (refusal.problem if refusal else None) is expected
    if refusal is not None:
        assert refusal.status == 400 and "Host" in refusal.message


@pytest.mark.parametrize(
    "named, scheme, host, port, misdirected",
    [
        pytest.param("a.test", "https", "a.test", 443, False, id="9110-7.2 same host, default port"),
        pytest.param(
            "A.Test:443", "https", "a.test", 443, False, id="9110-4.2.3 case and explicit default port"
        ),
        pytest.param("a.test:8443", "https", "a.test", 8443, False, id="9110-7.2 same host and port"),
        pytest.param("b.test", "https", "a.test", 443, True, id="9110-15.5.20 another host"),
        pytest.param("a.test:8443", "https", "a.test", 443, True, id="9110-15.5.20 another port"),
        pytest.param("a.test", "https", "a.test", 8443, True, id="9110-15.5.20 port left out means 443"),
        pytest.param("127.0.0.1:8443", "https", "localhost", 8443, True, id="9110-15.5.20 name vs address"),
    ],
)
def test_check_tunnel(named: str, scheme: str, host: str, port: int, misdirected: bool) -> None:
    refusal = target.check_tunnel(named, scheme, host, port)
    assert (refusal is not None) is misdirected
    if refusal is not None:
        assert refusal.problem is Problem.MISDIRECTED and refusal.status == 421


@pytest.mark.parametrize(
    "scheme, host, port, path, expected",
    [
        pytest.param(
            "https", "Example.COM", 443, "/a?b", "https://example.com/a?b", id="4 default port elided"
        ),
        pytest.param("http", "a.test", 8080, "/", "http://a.test:8080/", id="4 other port kept"),
        pytest.param("HTTP", "a.test", 80, "/x", "http://a.test/x", id="4 scheme lower-cased"),
        pytest.param("https", "::1", 8443, "/", "https://[::1]:8443/", id="4 IPv6 bracketed"),
        pytest.param("https", "a.test", 443, "/f#frag", "https://a.test/f", id="9110-4.2.4 fragment dropped"),
        pytest.param(
            "http", "a.test", 80, "*", "http://a.test/", id="9112-3.2.4 asterisk as mitmproxy's url"
        ),
        pytest.param("https", "a.test", 443, "/a@b", "https://a.test/a@b", id="3986-3.3 @ in path kept"),
    ],
)
def test_key_url(scheme: str, host: str, port: int, path: str, expected: str) -> None:
    assert target.key_url(scheme, host, port, path) == expected


def test_key_url_never_reads_a_path_as_an_authority() -> None:
    # The poisoning of issue 16: mitmproxy's request.url for :path "@evil.example/x" is
    # "https://victim.example@evil.example/x", which normalize_url reads as host evil.example.
    assert normalize_url("https://victim.example@evil.example/x") == "https://evil.example/x"
    assert target.key_url("https", "victim.example", 443, "@evil.example/x").startswith(
        "https://victim.example/"
    )


# -- property: the key is the key of what the origin receives ------------------------------------------------

_LABEL = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
_HOSTS = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
# Anything a client can put in :path or a request line, including delimiters and non-ASCII (HTTP/2 carries
# any octets but CR, LF and NUL; mitmproxy decodes them with surrogateescape).
_PATHS = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=40),
    st.text(alphabet="/?#@:;=&%.a-_~!$'()*+,[]\\", max_size=40).map(lambda p: "/" + p),
    st.just("*"),
)


@given(
    scheme=st.sampled_from(["http", "https"]),
    host=_HOSTS,
    port=st.one_of(st.sampled_from([80, 443]), st.integers(1, 65535)),
    method=st.sampled_from(["GET", "HEAD", "OPTIONS", "POST"]),
    path=_PATHS,
)
def test_key_equals_key_of_what_the_origin_receives(
    scheme: str, host: str, port: int, method: str, path: str
) -> None:
    """For every request the checks accept, the cache key (built from the structured target) equals the key
    an observer derives from the request line and Host field the origin receives."""
    host_field = guard.authority(scheme, host, port)
    if target.check_path(method, path) or target.check_authority(host_field, "Host"):
        return  # refused: nothing is forwarded, looked up or stored
    forwarded_target = target.without_fragment(path)  # what the guard leaves in request.path
    assert "#" not in forwarded_target
    key = primary_key(method, target.key_url(scheme, host, port, path))
    if forwarded_target == "*":
        assert method == "OPTIONS"  # never stored (only GET/HEAD are looked up or stored)
        return
    received = normalize_url(f"{scheme}://{host_field}{forwarded_target}")
    assert key == primary_key(method, received)
    # The key URL is already normal: parsing it again (PURGE, invalidation, rules) reads the same target.
    url = target.key_url(scheme, host, port, path)
    assert normalize_url(url) == url
    assert url.split("://", 1)[1].startswith(host_field.lower().removesuffix(f":{port}"))
