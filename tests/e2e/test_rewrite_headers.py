"""Unkeyed inputs cannot poison the shared cache (issue 16 point 4): rewrite headers and GET bodies."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from fwdproxy.unkeyed import UNKEYED_HEADERS
from tests.support import Origin, Proxy, RawOrigin, Recorded, Reply, client


def answer_by_request(rec: Recorded) -> Reply:
    """An origin that, like IIS or Rails, obeys what the rewrite headers say: its answer depends on them."""
    got = {k.lower(): v for k, v in rec.header_list}  # HTTP/2 names arrive in lower case
    said = got.get("x-original-url") or got.get("x-http-method-override") or "plain"
    if rec.body:
        said += " body=" + rec.body.decode()
    body = f"answer for {said}\n".encode()
    return Reply(200, {"Content-Type": "text/plain", "Cache-Control": "public, max-age=300"}, body)


BYPASS = "fwdproxy; fwd=bypass; fwd-status=200; detail="


def sent_names(origin: Origin) -> set[str]:
    return {name.lower() for rec in origin.requests for name, _ in rec.header_list}


def test_standard_strips_every_rewrite_header_before_the_origin(start_proxy, origin: Origin) -> None:
    origin.route("/page", answer_by_request)
    proxy = start_proxy()
    attack = {name: "/admin" for name in UNKEYED_HEADERS}
    with client(proxy) as c:
        first = c.get(origin.url("/page"), headers=attack)
        second = c.get(origin.url("/page"))
    assert first.text == "answer for plain\n"
    assert not sent_names(origin) & {n.lower() for n in UNKEYED_HEADERS}
    # Stripped, the request is an ordinary one: it may be stored and serve the next client.
    assert second.text == "answer for plain\n" and second.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert origin.hits["/page"] == 1


@pytest.mark.parametrize(
    "name, value",
    [
        ("X-Original-URL", "/admin"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-Forwarded-Host", "evil.example"),
    ],
)
def test_off_bypasses_the_cache_when_a_rewrite_header_is_present(
    start_proxy, origin: Origin, name: str, value: str
) -> None:
    origin.route("/page", answer_by_request)
    proxy = start_proxy("--anonymize", "off")
    with client(proxy) as c:
        poisoned = c.get(origin.url("/page"), headers={name: value})
        victim = c.get(origin.url("/page"))
        victim_again = c.get(origin.url("/page"))
        attacker_again = c.get(origin.url("/page"), headers={name: value})
    assert poisoned.headers["Cache-Status"] == BYPASS + "rewrite-header"
    assert origin.requests[0].headers[name] == value  # off forwards it as the client sent it
    # The attacker's answer was not stored: the victim's request went to the origin and got its own answer.
    assert victim.headers["Cache-Status"] == "fwdproxy; fwd=uri-miss; fwd-status=200; stored"
    assert victim.text == victim_again.text == "answer for plain\n"
    assert victim_again.headers["Cache-Status"].startswith("fwdproxy; hit")
    # And the plain entry is not served to a request with the header: it goes to the origin again.
    assert attacker_again.headers["Cache-Status"] == BYPASS + "rewrite-header"
    assert origin.hits["/page"] == 3


def test_get_with_a_body_is_forwarded_but_never_stored_nor_served(start_proxy, origin: Origin) -> None:
    origin.route("/page", answer_by_request)
    proxy = start_proxy()
    with client(proxy) as c:
        with_body = c.request("GET", origin.url("/page"), content=b"evil")
        plain = c.get(origin.url("/page"))
        plain_hit = c.get(origin.url("/page"))
        with_body_again = c.request("GET", origin.url("/page"), content=b"again")
        head_with_body = c.request("HEAD", origin.url("/page"), content=b"x")
    assert with_body.text == "answer for plain body=evil\n"
    assert origin.requests[0].body == b"evil"  # forwarded with its body
    assert with_body.headers["Cache-Status"] == BYPASS + "request-body"
    assert plain.headers["Cache-Status"] == "fwdproxy; fwd=uri-miss; fwd-status=200; stored"
    assert plain.text == plain_hit.text == "answer for plain\n"
    assert plain_hit.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert with_body_again.text == "answer for plain body=again\n"  # not the stored entry
    assert with_body_again.headers["Cache-Status"] == BYPASS + "request-body"
    assert head_with_body.headers["Cache-Status"] == BYPASS + "request-body"
    assert origin.hits["/page"] == 4


def test_chunked_get_body_over_a_raw_socket_is_not_stored(start_proxy) -> None:
    received: list[bytes] = []

    def reply(head: bytes, sock: socket.socket) -> None:
        data = head
        while b"chunked" in head.lower() and not data.endswith(b"0\r\n\r\n") and (more := sock.recv(65536)):
            data += more
        received.append(data)
        body = b"answer\n"
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=300\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        sock.close()

    origin = RawOrigin(reply)
    proxy = start_proxy()
    url = origin.url("/page")
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(
                f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\nTransfer-Encoding: chunked\r\n"
                "Connection: close\r\n\r\n4\r\nevil\r\n0\r\n\r\n".encode()
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"Cache-Status: " + (BYPASS + "request-body").encode() in answer
        assert b"evil" in received[0]  # the body went to the origin
        with client(proxy) as c:
            assert c.get(url).headers["Cache-Status"] == "fwdproxy; fwd=uri-miss; fwd-status=200; stored"
        assert origin.hits["/page"] == 2
    finally:
        origin.stop()


def _curl_h2(proxy: Proxy, ca: Path, url: str, *args: str) -> tuple[str, dict[str, str], str]:
    """(HTTP version, response headers, body) of one curl request over HTTP/2 inside the proxy's tunnel."""
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2",
            "--suppress-connect-headers",
            "-x",
            proxy.url,
            "--cacert",
            str(ca),
            "-D",
            "-",
            *args,
            url,
        ],
        capture_output=True,
        timeout=30,
    )
    head, _, body = out.stdout.decode().partition("\r\n\r\n")
    status, *lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status.split(" ")[0], headers, body


def test_http2_rewrite_header_and_body_bypass_inside_an_intercepted_tunnel(
    start_proxy, tls_origin: Origin, proxy_ca_file: Path
) -> None:
    tls_origin.route("/page", answer_by_request)
    url = tls_origin.url("/page", host="localhost")
    proxy = start_proxy("--anonymize", "off", "--connect-port", str(tls_origin.port))
    version, rewritten, body = _curl_h2(proxy, proxy_ca_file, url, "-H", "X-Original-URL: /admin")
    assert version == "HTTP/2" and body == "answer for /admin\n"
    assert rewritten["cache-status"] == BYPASS + "rewrite-header"
    version, with_body, body = _curl_h2(proxy, proxy_ca_file, url, "-X", "GET", "--data-binary", "evil")
    assert version == "HTTP/2" and body == "answer for plain body=evil\n"
    assert with_body["cache-status"] == BYPASS + "request-body"
    _, plain, body = _curl_h2(proxy, proxy_ca_file, url)
    assert (
        body == "answer for plain\n"
        and plain["cache-status"] == "fwdproxy; fwd=uri-miss; fwd-status=200; stored"
    )
    _, hit, body = _curl_h2(proxy, proxy_ca_file, url)
    assert body == "answer for plain\n" and hit["cache-status"].startswith("fwdproxy; hit")
    # A stored entry is not served to a request with a body either.
    _, again, body = _curl_h2(proxy, proxy_ca_file, url, "-X", "GET", "--data-binary", "again")
    assert body == "answer for plain body=again\n" and again["cache-status"] == BYPASS + "request-body"
    assert tls_origin.hits["/page"] == 4
