"""Access decisions: client networks, Basic credentials, tunnel mode per host."""

from __future__ import annotations

import base64

import pytest

from fwdproxy import access
from fwdproxy.access import TunnelMode


@pytest.mark.parametrize(
    "address, allow, expected",
    [
        ("127.0.0.1", access.LOOPBACK, True),
        ("127.0.0.2", ["127.0.0.1/32"], False),
        ("::1", access.LOOPBACK, True),
        ("::ffff:127.0.0.1", access.LOOPBACK, True),
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("192.168.1.1", ["10.0.0.0/8"], False),
        ("garbage", access.LOOPBACK, False),
        ("", access.LOOPBACK, False),
    ],
)
def test_client_allowed(address: str, allow: list[str], expected: bool) -> None:
    assert access.client_allowed(address, access.parse_networks(allow)) is expected


def basic(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


@pytest.mark.parametrize(
    "header, expected",
    [
        (basic("ci:s3cret"), True),
        (basic("ci:s3cret").replace("Basic", "basic"), True),
        (basic("ci:wrong"), False),
        (basic("other:s3cret"), False),
        (basic("ci:s3cret:extra"), False),
        ("Bearer abc", False),
        ("Basic !!notbase64", False),
        ("", False),
        (None, False),
    ],
)
def test_credentials(header: str | None, expected: bool) -> None:
    assert access.Credentials.parse("ci:s3cret").check(header) is expected


@pytest.mark.parametrize(
    "host, passthrough, intercept, expected",
    [
        ("files.pythonhosted.org", [], [], TunnelMode.INTERCEPT),
        ("bank.com", ["*.bank.com"], [], TunnelMode.PASSTHROUGH),
        ("www.BANK.com", ["*.bank.com"], [], TunnelMode.PASSTHROUGH),
        ("pypi.org", [], ["*.pypi.org"], TunnelMode.INTERCEPT),
        ("github.com", [], ["*.pypi.org"], TunnelMode.PASSTHROUGH),
        ("x.pypi.org", ["x.pypi.org"], ["*.pypi.org"], TunnelMode.PASSTHROUGH),
    ],
)
def test_tunnel_mode(host: str, passthrough: list[str], intercept: list[str], expected: TunnelMode) -> None:
    assert access.tunnel_mode(host, passthrough, intercept) is expected


def test_bad_cidr_and_credentials() -> None:
    with pytest.raises(ValueError, match="not an address or CIDR"):
        access.parse_networks(["nope"])
    with pytest.raises(ValueError, match="not USER:PASS"):
        access.Credentials.parse("user")
