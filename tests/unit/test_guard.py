"""What a request must pass at the door: field counts, one Host that agrees with the target, no loop to self."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwdproxy.guard import (
    MAX_FIELDS,
    Refusal,
    authority,
    candidates,
    check_fields,
    host_agrees,
    literal_address,
    targets_self,
)


@pytest.mark.parametrize(
    "scheme, host, port, expected",
    [
        pytest.param("http", "example.org", 80, "example.org", id="9110 4.2.1 default port elided"),
        pytest.param("https", "example.org", 443, "example.org", id="9110 4.2.2 default port elided"),
        pytest.param("http", "example.org", 8080, "example.org:8080", id="9110 7.2 other port kept"),
        pytest.param("https", "example.org", 80, "example.org:80", id="9110 7.2 80 is not https's default"),
        pytest.param("http", "::1", 8080, "[::1]:8080", id="3986 3.2.2 IPv6 literal bracketed"),
        pytest.param("http", "[::1]", 80, "[::1]", id="3986 3.2.2 already bracketed"),
    ],
)
def test_authority(scheme: str, host: str, port: int, expected: str) -> None:
    assert authority(scheme, host, port) == expected


@pytest.mark.parametrize(
    "field, scheme, host, port, expected",
    [
        pytest.param("example.org", "http", "example.org", 80, True, id="9110 7.2 same host"),
        pytest.param("EXAMPLE.org.", "http", "example.org", 80, True, id="host names are case-insensitive"),
        pytest.param("example.org:80", "http", "example.org", 80, True, id="explicit default port"),
        pytest.param("example.org", "http", "example.org", 8080, False, id="port differs"),
        pytest.param("evil.example", "http", "example.org", 80, False, id="9112 3.2.2 another host"),
        pytest.param("example.org:x", "http", "example.org", 80, False, id="garbage port"),
        pytest.param("[::1]:8080", "http", "::1", 8080, True, id="IPv6 with port"),
        pytest.param("[::1]", "https", "::1", 443, True, id="IPv6 default port"),
        pytest.param("", "http", "example.org", 80, False, id="empty Host"),
    ],
)
def test_host_agrees(field: str, scheme: str, host: str, port: int, expected: bool) -> None:
    assert host_agrees(field, scheme, host, port) is expected


LOOPBACK_8080 = (("127.0.0.1", 8080),)
EVERYWHERE_8080 = (("0.0.0.0", 8080), ("::", 8080))


@pytest.mark.parametrize(
    "host, port, listening, reached_at, expected",
    [
        pytest.param("127.0.0.1", 8080, LOOPBACK_8080, None, True, id="the listen address"),
        pytest.param("localhost", 8080, LOOPBACK_8080, None, True, id="localhost names loopback"),
        pytest.param("LOCALHOST.", 8080, LOOPBACK_8080, None, True, id="case and trailing dot"),
        pytest.param("127.0.0.1", 8081, LOOPBACK_8080, None, False, id="another port is an origin"),
        pytest.param("127.0.0.2", 8080, LOOPBACK_8080, None, False, id="another loopback address is not us"),
        pytest.param("127.0.0.2", 8080, EVERYWHERE_8080, None, True, id="wildcard: every loopback address"),
        pytest.param("[::1]", 8080, EVERYWHERE_8080, None, True, id="wildcard: IPv6 loopback"),
        pytest.param(
            "10.1.2.3", 8080, EVERYWHERE_8080, ("10.1.2.3", 8080), True, id="the address the client reached"
        ),
        pytest.param(
            "10.1.2.3", 8080, EVERYWHERE_8080, ("::ffff:10.1.2.3", 8080), True, id="IPv4-mapped sockname"
        ),
        pytest.param("10.9.9.9", 8080, EVERYWHERE_8080, ("10.1.2.3", 8080), False, id="another machine"),
        pytest.param("example.org", 8080, EVERYWHERE_8080, None, False, id="a name is an origin"),
    ],
)
def test_targets_self(
    host: str,
    port: int,
    listening: tuple[tuple[str, int], ...],
    reached_at: tuple[str, int] | None,
    expected: bool,
) -> None:
    assert targets_self(host, port, listening, reached_at) is expected


@pytest.mark.parametrize(
    "host, expected",
    [
        pytest.param("127.0.0.1", "127.0.0.1", id="dotted quad"),
        pytest.param("127.1", "127.0.0.1", id="inet_aton a.b: the last part fills 24 bits"),
        pytest.param("127.0.1", "127.0.0.1", id="inet_aton a.b.c: the last part fills 16 bits"),
        pytest.param("0x7f000001", "127.0.0.1", id="inet_aton hexadecimal"),
        pytest.param("2130706433", "127.0.0.1", id="inet_aton one decimal number"),
        pytest.param("0177.0.0.1", "127.0.0.1", id="inet_aton octal"),
        pytest.param("10.65536", "10.1.0.0", id="inet_aton a.b, b above 255"),
        pytest.param("0.0.0.0", "0.0.0.0", id="unspecified"),
        pytest.param("[::]", "::", id="IPv6 unspecified, bracketed"),
        pytest.param("[::ffff:127.0.0.1]", "127.0.0.1", id="IPv4-mapped IPv6 as IPv4"),
        pytest.param("127.0.0.1.", "127.0.0.1", id="trailing dot"),
        pytest.param("256.1", None, id="a part over 255 is a name"),
        pytest.param("4294967296", None, id="over 32 bits"),
        pytest.param("08.1", None, id="8 is no octal digit"),
        pytest.param("0x 1", None, id="no spaces inside"),
        pytest.param("localhost", None, id="a name"),
        pytest.param("1.2.3.4.5", None, id="five parts"),
    ],
)
def test_literal_address(host: str, expected: str | None) -> None:
    assert literal_address(host) == expected


def test_candidates_map_unspecified_to_loopback_and_add_resolved() -> None:
    assert candidates("0.0.0.0") == {"127.0.0.1"}
    assert candidates("::") == {"::1"}
    assert candidates("LocalHost.") == {"127.0.0.1", "::1"}
    assert candidates("a.localhost") == {"127.0.0.1", "::1"}  # RFC 6761 6.3
    assert candidates("me.example", ("127.0.0.1", "::ffff:10.0.0.5")) == {"127.0.0.1", "10.0.0.5"}
    assert candidates("example.org") == frozenset()


@pytest.mark.parametrize(
    "host, resolved, local, listening, expected",
    [
        pytest.param("127.1", (), frozenset(), LOOPBACK_8080, True, id="shorthand of the listen address"),
        pytest.param("0x7f000001", (), frozenset(), LOOPBACK_8080, True, id="hexadecimal loopback"),
        pytest.param("0.0.0.0", (), frozenset(), LOOPBACK_8080, True, id="0.0.0.0 connects to loopback"),
        pytest.param("[::]", (), frozenset(), EVERYWHERE_8080, True, id=":: connects to ::1"),
        pytest.param(
            "me.example", ("127.0.0.1",), frozenset(), LOOPBACK_8080, True, id="a name resolving to us"
        ),
        pytest.param("me.example", ("192.0.2.9",), frozenset(), LOOPBACK_8080, False, id="a name elsewhere"),
        pytest.param(
            "192.0.2.2",
            (),
            frozenset({"192.0.2.2"}),
            EVERYWHERE_8080,
            True,
            id="wildcard: an interface address",
        ),
        pytest.param("192.0.2.2", (), frozenset(), EVERYWHERE_8080, False, id="wildcard: another machine"),
        pytest.param(
            "192.0.2.2", (), frozenset({"192.0.2.2"}), LOOPBACK_8080, False, id="bound to loopback only"
        ),
    ],
)
def test_targets_self_after_resolution(
    host: str,
    resolved: tuple[str, ...],
    local: frozenset[str],
    listening: tuple[tuple[str, int], ...],
    expected: bool,
) -> None:
    assert targets_self(host, 8080, listening, None, resolved, local) is expected


def test_field_count_limit() -> None:
    assert check_fields(["X"] * MAX_FIELDS) is None
    verdict = check_fields(["X"] * (MAX_FIELDS + 1))
    assert verdict is not None and verdict.refusal is Refusal.TOO_MANY_FIELDS and verdict.status == 431
    assert f"{MAX_FIELDS + 1} header fields" in verdict.message


def test_several_host_fields_are_400() -> None:
    assert check_fields(["Host", "Accept"]) is None
    verdict = check_fields(["Host", "Accept", "host"])
    assert verdict is not None and verdict.refusal is Refusal.SEVERAL_HOSTS and verdict.status == 400


@given(
    st.text(max_size=40),
    st.sampled_from(["http", "https", "ws", "x"]),
    st.text(max_size=20),
    st.integers(0, 70000),
)
def test_host_checks_never_raise(field: str, scheme: str, host: str, port: int) -> None:
    host_agrees(field, scheme, host, port)
    targets_self(host, port, EVERYWHERE_8080, (host, port))


@given(
    st.sampled_from(["http", "https"]),
    st.sampled_from(["example.org", "EXAMPLE.ORG", "127.0.0.1", "::1", "[::1]", "a-b.c"]),
    st.integers(1, 65535),
)
def test_authority_agrees_with_its_target(scheme: str, host: str, port: int) -> None:
    assert host_agrees(authority(scheme, host, port), scheme, host, port)
