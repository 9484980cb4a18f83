"""Which GET/HEAD requests bypass the shared cache: bodies and unkeyed rewrite fields (issue 16)."""

from __future__ import annotations

import pytest

from fwdproxy.http_model import Headers
from fwdproxy.unkeyed import REWRITE_HEADERS, UNKEYED_HEADERS, Bypass, bypass, has_body


@pytest.mark.parametrize(
    "fields, body, expected",
    [
        pytest.param({"Accept": "*/*"}, False, None, id="plain GET is cacheable"),
        pytest.param({"Accept": "*/*"}, True, Bypass.REQUEST_BODY, id="9110 9.3.1 GET with a body"),
        pytest.param({"x-original-url": "/admin"}, False, Bypass.REWRITE_HEADER, id="IIS path rewrite"),
        pytest.param(
            {"X-HTTP-Method-Override": "DELETE"}, False, Bypass.REWRITE_HEADER, id="method override"
        ),
        pytest.param({"X-Forwarded-Host": "evil.example"}, False, Bypass.REWRITE_HEADER, id="forwarded host"),
        pytest.param({"Forwarded": "for=192.0.2.1"}, False, None, id="7239 for= only names a client"),
        pytest.param({"Forwarded": "for=x;Host=evil"}, False, Bypass.REWRITE_HEADER, id="7239 5.3 host="),
        pytest.param({"Forwarded": "proto=http"}, False, Bypass.REWRITE_HEADER, id="7239 5.4 proto="),
        pytest.param({"X-Forwarded-For": "192.0.2.1"}, False, None, id="a client address rewrites nothing"),
    ],
)
def test_bypass(fields: dict[str, str], body: bool, expected: Bypass | None) -> None:
    assert bypass(Headers.of(fields), has_body=body) is expected


def test_every_rewrite_header_is_unkeyed() -> None:
    assert set(REWRITE_HEADERS) <= set(UNKEYED_HEADERS)
    for name in UNKEYED_HEADERS:
        assert bypass(Headers.of({name.upper(): "x"}), has_body=False) is Bypass.REWRITE_HEADER


@pytest.mark.parametrize(
    "fields, received, expected",
    [
        pytest.param({}, b"", False, id="no body"),
        pytest.param({"Content-Length": "0"}, b"", False, id="9112 6.2 zero length"),
        pytest.param({"Content-Length": "0, 0"}, b"", False, id="repeated zero length"),
        pytest.param({"Content-Length": "5"}, None, True, id="9112 6.2 announced, not read"),
        pytest.param({"Transfer-Encoding": "chunked"}, b"", True, id="9112 6.1 chunked, even if empty"),
        pytest.param({}, b"x", True, id="HTTP/2 DATA without a length"),
    ],
)
def test_has_body(fields: dict[str, str], received: bytes | None, expected: bool) -> None:
    assert has_body(Headers.of(fields), received) is expected
