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


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("ci:s3cret", id="right"),
        pytest.param("ci:s3creX", id="wrong last byte of the password"),
        pytest.param("xx:s3cret", id="wrong user"),
        pytest.param("ci:s", id="a prefix of the password"),
        pytest.param("c", id="a prefix of the user"),
    ],
)
def test_credentials_are_compared_in_constant_time(given: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing must not tell a wrong user from a wrong password, nor how long a matching prefix is: every
    well-formed attempt is one hmac.compare_digest over the whole ``user:pass``, never ``==`` or a short cut."""
    calls: list[tuple[bytes, bytes]] = []
    real = access.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    creds = access.Credentials.parse("ci:s3cret")
    ok = creds.check("Basic " + base64.b64encode(given.encode()).decode())
    assert ok is (given == "ci:s3cret")
    assert calls == [(given.encode(), b"ci:s3cret")]
