"""fwdproxy.fasthead: which request heads the fast hit layer reads itself, and what it makes of them."""

from __future__ import annotations

import pytest

from fwdproxy.fasthead import Head, Leave, Tunnel, read_head

TUNNEL = Tunnel("https", "a.test", 443)


def test_absolute_form_head_is_read_with_the_key_url_and_its_size() -> None:
    buf = b"GET http://A-b.test:8080/x?y=1 HTTP/1.1\r\nHost: a-b.test:8080\r\nAccept: */*\r\n\r\nGET"
    head = read_head(buf.replace(b"A-b", b"a-b"), None)
    assert isinstance(head, Head)
    assert (head.method, head.scheme, head.host, head.port, head.path) == (
        "GET",
        "http",
        "a-b.test",
        8080,
        "/x?y=1",
    )
    assert head.url == "http://a-b.test:8080/x?y=1"
    assert head.fields == ((b"Host", b"a-b.test:8080"), (b"Accept", b"*/*"))
    assert head.size == len(buf) - 3


def test_origin_form_head_in_a_tunnel_keys_on_the_tunnel() -> None:
    head = read_head(b"HEAD /p HTTP/1.1\r\nhost: A.test\r\n\r\n", TUNNEL)
    assert isinstance(head, Head)
    assert (head.method, head.url) == ("HEAD", "https://a.test/p")


def test_default_port_is_left_out_of_the_key() -> None:
    head = read_head(b"GET http://a.test:80/ HTTP/1.1\r\nHost: a.test\r\n\r\n", None)
    assert isinstance(head, Head) and head.url == "http://a.test/"


@pytest.mark.parametrize(
    "buf",
    [
        pytest.param(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n", id="no blank line yet"),
        pytest.param(b"GET http://a.test/ HT", id="request line cut"),
        pytest.param(b"", id="nothing"),
    ],
)
def test_incomplete_heads_wait(buf: bytes) -> None:
    assert read_head(buf, None) is Leave.INCOMPLETE


H = b"Host: a.test\r\n"


@pytest.mark.parametrize(
    "buf, tunnel",
    [
        pytest.param(b"POST http://a.test/ HTTP/1.1\r\n" + H + b"\r\n", None, id="POST"),
        pytest.param(b"PURGE http://a.test/ HTTP/1.1\r\n" + H + b"\r\n", None, id="PURGE"),
        pytest.param(b"get http://a.test/ HTTP/1.1\r\n" + H + b"\r\n", None, id="lower-case method"),
        pytest.param(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", None, id="CONNECT"),
        pytest.param(b"GET http://a.test/ HTTP/1.0\r\n" + H + b"\r\n", None, id="HTTP/1.0"),
        pytest.param(b"GET / HTTP/1.1\r\n" + H + b"\r\n", None, id="origin-form to the proxy"),
        pytest.param(
            b"GET http://a.test/ HTTP/1.1\r\n" + H + b"\r\n", TUNNEL, id="absolute-form in a tunnel"
        ),
        pytest.param(b"GET https://a.test/ HTTP/1.1\r\n" + H + b"\r\n", None, id="https target in plain"),
        pytest.param(b"GET http://u@a.test/ HTTP/1.1\r\n" + H + b"\r\n", None, id="userinfo"),
        pytest.param(b"GET http://A.test/ HTTP/1.1\r\n" + H + b"\r\n", None, id="upper-case host"),
        pytest.param(b"GET http://[::1]/ HTTP/1.1\r\nHost: [::1]\r\n\r\n", None, id="IPv6 literal"),
        pytest.param(
            b"GET http://a.test:0080/ HTTP/1.1\r\n" + H + b"\r\n", None, id="port with leading zero"
        ),
        pytest.param(b"GET http://a.test:99999/ HTTP/1.1\r\n" + H + b"\r\n", None, id="port out of range"),
        pytest.param(b"GET http://a.test HTTP/1.1\r\n" + H + b"\r\n", None, id="no path"),
        pytest.param(b"GET http://a.test/#f HTTP/1.1\r\n" + H + b"\r\n", None, id="fragment"),
        pytest.param(b'GET http://a.test/"x HTTP/1.1\r\n' + H + b"\r\n", None, id="quote in path"),
        pytest.param(b"GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n", None, id="Host differs"),
        pytest.param(b"GET /x HTTP/1.1\r\nHost: b.test\r\n\r\n", TUNNEL, id="another host in a tunnel"),
        pytest.param(b"GET /x HTTP/1.1\r\nHost: a.test:8443\r\n\r\n", TUNNEL, id="another port in a tunnel"),
        pytest.param(b"GET http://a.test/ HTTP/1.1\r\n\r\n", None, id="no Host"),
        pytest.param(b"GET http://a.test/ HTTP/1.1\r\n" + H + H + b"\r\n", None, id="two Hosts"),
        pytest.param(b"GET http://a.test/ HTTP/1.1\r\nHost: u@a.test\r\n\r\n", None, id="userinfo in Host"),
        pytest.param(b"GET http://a.test/ HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n", None, id="CL"),
        pytest.param(
            b"GET http://a.test/ HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            None,
            id="TE",
        ),
        pytest.param(
            b"GET http://a.test/ HTTP/1.1\r\n"
            + H
            + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            None,
            id="CL and TE",
        ),
        pytest.param(
            b"GET http://a.test/ HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\n\r\n", None, id="Upgrade"
        ),
        pytest.param(
            b"GET http://a.test/ HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\n\r\n", None, id="Expect"
        ),
        pytest.param(b"GET http://a.test/ HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", None, id="close"),
        pytest.param(b"GET http://a.test/ HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", None, id="obs-fold"),
        pytest.param(b"GET http://a.test/ HTTP/1.1\nHost: a.test\n\n", None, id="bare LF"),
        pytest.param(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\nX: 1\r\n\r\n", None, id="one bare LF"),
        pytest.param(b"GET http://a.test/ HTTP/1.1\r\n" + H + b"X: a\rb\r\n\r\n", None, id="bare CR"),
        pytest.param(
            b"GET http://a.test/ HTTP/1.1\r\n" + H + b"X : a\r\n\r\n", None, id="space before colon"
        ),
        pytest.param(b"GET http://a.test/ HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", None, id="NUL in value"),
        pytest.param(b"\r\nGET http://a.test/ HTTP/1.1\r\n" + H + b"\r\n", None, id="leading CRLF"),
        pytest.param(
            b"GET http://a.test/ HTTP/1.1\r\n" + H + b"X: " + b"a" * 70000 + b"\r\n\r\n", None, id="huge"
        ),
        pytest.param(
            b"GET http://a.test/ HTTP/1.1\r\n" + H + b"X: " + b"a" * 70000, None, id="huge, incomplete"
        ),
    ],
)
def test_heads_for_the_full_path(buf: bytes, tunnel: Tunnel | None) -> None:
    assert read_head(buf, tunnel) is Leave.HANDOVER


def test_keep_alive_field_is_read() -> None:
    head = read_head(b"GET http://a.test/ HTTP/1.1\r\n" + H + b"Connection: Keep-Alive\r\n\r\n", None)
    assert isinstance(head, Head)
