"""Invalidation after unsafe requests (RFC 9111 §4.4)."""

from __future__ import annotations

import pytest

from fwdproxy.cache.invalidation import invalidated_keys
from fwdproxy.http_model import Headers, Request, Response

URL = "http://example.com/a/b"


@pytest.mark.parametrize(
    "method, status, fields, expected",
    [
        pytest.param("POST", 200, [], ["GET http://example.com/a/b"], id="4.4 POST invalidates the target"),
        pytest.param("PUT", 201, [], ["GET http://example.com/a/b"], id="4.4 PUT"),
        pytest.param("DELETE", 204, [], ["GET http://example.com/a/b"], id="4.4 DELETE"),
        pytest.param("PATCH", 303, [], ["GET http://example.com/a/b"], id="4.4 3xx is non-error"),
        pytest.param(
            "M-SEARCH", 200, [], ["GET http://example.com/a/b"], id="4.4 unknown methods are unsafe"
        ),
        pytest.param("POST", 404, [], [], id="4.4 error response invalidates nothing"),
        pytest.param("POST", 500, [], [], id="4.4 5xx invalidates nothing"),
        pytest.param("GET", 200, [], [], id="4.4 safe GET"),
        pytest.param("HEAD", 200, [], [], id="4.4 safe HEAD"),
        pytest.param("OPTIONS", 200, [], [], id="4.4 safe OPTIONS"),
        pytest.param(
            "POST",
            201,
            [("Location", "/new")],
            ["GET http://example.com/a/b", "GET http://example.com/new"],
            id="4.4 same-origin Location",
        ),
        pytest.param(
            "POST",
            200,
            [("Content-Location", "c")],
            ["GET http://example.com/a/b", "GET http://example.com/a/c"],
            id="4.4 relative Content-Location",
        ),
        pytest.param(
            "POST",
            200,
            [("Location", "http://EXAMPLE.com:80/x")],
            ["GET http://example.com/a/b", "GET http://example.com/x"],
            id="4.4 same origin after normalising",
        ),
        pytest.param(
            "POST",
            201,
            [("Location", "http://other.example/x"), ("Content-Location", "https://example.com/x")],
            ["GET http://example.com/a/b"],
            id="4.4 cross-origin URIs are not invalidated",
        ),
        pytest.param(
            "POST",
            200,
            [("Content-Location", "/a/b")],
            ["GET http://example.com/a/b"],
            id="4.4 duplicates dropped",
        ),
        pytest.param(
            "POST",
            200,
            [("Location", "/x"), ("Location", "/y")],
            ["GET http://example.com/a/b"],
            id="4.4 ambiguous Location ignored",
        ),
        pytest.param(
            "POST",
            200,
            [("Location", "http://[bad")],
            ["GET http://example.com/a/b"],
            id="4.4 unparsable ignored",
        ),
    ],
)
def test_invalidated_keys(
    method: str, status: int, fields: list[tuple[str, str]], expected: list[str]
) -> None:
    assert invalidated_keys(Request(method, URL), Response(status, Headers.of(fields))) == expected
