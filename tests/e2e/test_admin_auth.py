"""The admin surface follows --auth (issue 16 point 9): the admin port asks for the same user (401), and
http://fwdproxy.local/ through the proxy is a proxied request like any other (407)."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from tests.e2e.test_security import curl_from, free_port, raw

PAGES = ("/", "/stats.json", "/metrics")


def admin(port: int, path: str, auth: tuple[str, str] | None = None) -> httpx.Response:
    # The admin port opens just after the "listening at" line: give it a moment on a busy machine.
    deadline = time.monotonic() + 10
    while True:
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}", auth=auth, trust_env=False, timeout=10)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def proxied(proxy_url: str, path: str) -> httpx.Response:
    return httpx.get(f"http://fwdproxy.local{path}", proxy=proxy_url, trust_env=False, timeout=10)


@pytest.mark.parametrize("path", PAGES)
def test_admin_port_and_fwdproxy_local_need_the_auth_user(start_proxy, path: str) -> None:
    port = free_port()
    proxy = start_proxy("--auth", "ops:s3cret", "--admin-port", str(port))
    refused = admin(port, path)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="fwdproxy"'
    assert b"open_connections" not in refused.content and b"fwdproxy_" not in refused.content
    assert admin(port, path, ("ops", "wrong")).status_code == 401
    assert admin(port, path, ("ops2", "s3cret")).status_code == 401
    assert admin(port, path, ("ops", "s3cret")).status_code == 200
    # Through the proxy: the proxy's own authentication, as for any proxied request.
    assert proxied(proxy.url, path).status_code == 407
    assert proxied(proxy.url.replace("http://", "http://ops:wrong@"), path).status_code == 407
    answer = proxied(proxy.url.replace("http://", "http://ops:s3cret@"), path)
    assert answer.status_code == 200 and answer.content


def test_admin_auth_over_a_raw_socket_and_head(start_proxy) -> None:
    port = free_port()
    start_proxy("--auth", "ops:s3cret", "--admin-port", str(port))
    assert admin(port, "/").status_code == 401  # waits for the port to open
    token = base64.b64encode(b"ops:s3cret").decode()
    # Field names are case-insensitive (RFC 9110 5.1); a Proxy-Authorization is not an Authorization.
    ok = raw(port, f"GET /stats.json HTTP/1.1\r\nHost: x\r\nauthorization: Basic {token}\r\n\r\n".encode())
    assert ok.startswith(b"HTTP/1.1 200 ") and b'"requests"' in ok
    wrong_field = raw(
        port, f"GET /stats.json HTTP/1.1\r\nProxy-Authorization: Basic {token}\r\n\r\n".encode()
    )
    assert wrong_field.startswith(b"HTTP/1.1 401 ") and b'"requests"' not in wrong_field
    head = raw(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ") and head.endswith(b"\r\n\r\n")


def test_without_auth_the_admin_pages_are_unchanged(start_proxy) -> None:
    port = free_port()
    proxy = start_proxy("--admin-port", str(port))
    for path in PAGES:
        assert admin(port, path).status_code == 200
        assert proxied(proxy.url, path).status_code == 200


def test_allow_still_applies_with_auth(start_proxy) -> None:
    port = free_port()
    start_proxy("--auth", "ops:s3cret", "--allow", "127.0.0.1/32", "--admin-port", str(port))
    assert admin(port, "/").status_code == 401  # waits for the port to open
    # Right credentials from a client outside --allow: still 403.
    assert curl_from("127.0.0.2", "-u", "ops:s3cret", f"http://127.0.0.1:{port}/stats.json") == "403"
    assert curl_from("127.0.0.1", "-u", "ops:s3cret", f"http://127.0.0.1:{port}/stats.json") == "200"


def test_the_pac_file_needs_no_credentials_but_the_pages_do(start_proxy) -> None:
    port = free_port()
    proxy = start_proxy("--auth", "ops:s3cret", "--admin-port", str(port))
    pac = admin(port, "/proxy.pac")
    assert pac.status_code == 200  # a browser fetches its PAC URL without credentials
    assert f"PROXY 127.0.0.1:{proxy.port}" in pac.text
    assert admin(port, "/stats.json").status_code == 401
