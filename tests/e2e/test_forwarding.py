"""Foundation, end to end: forwarding HTTP and HTTPS, interception vs passthrough, CONNECT ports."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

from tests.support import Origin, client


def test_http_absolute_form_reaches_origin(start_proxy, origin: Origin) -> None:
    proxy = start_proxy()
    with client(proxy) as c:
        r = c.get(origin.url("/"))
    assert r.status_code == 200
    assert r.text == "hello from origin\n"
    assert origin.hits["/"] == 1


def test_curl_http_and_intercepted_https(
    start_proxy, origin: Origin, tls_origin: Origin, proxy_ca_file: Path
) -> None:
    proxy = start_proxy("--connect-port", str(tls_origin.port))
    out = subprocess.run(
        ["curl", "-sS", "-x", proxy.url, origin.url("/")], capture_output=True, text=True, timeout=30
    )
    assert out.stdout == "hello from origin\n", out.stderr
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-x",
            proxy.url,
            "--cacert",
            str(proxy_ca_file),
            tls_origin.url("/", host="localhost"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout == "hello from origin\n", out.stderr + proxy.log()


def _issuer_through_tunnel(proxy_port: int, origin_port: int) -> str:
    """The issuer organisation of the certificate a client sees through a CONNECT tunnel to localhost."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    sock.sendall(
        f"CONNECT localhost:{origin_port} HTTP/1.1\r\nHost: localhost:{origin_port}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1024)
    assert head.startswith(b"HTTP/1.1 200"), head
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    return cert.issuer.rfc4514_string()


def test_intercepted_tunnel_shows_proxy_ca(start_proxy, tls_origin: Origin, proxy_ca_file: Path) -> None:
    proxy = start_proxy("--connect-port", str(tls_origin.port))
    assert "mitmproxy" in _issuer_through_tunnel(proxy.port, tls_origin.port)
    with client(proxy, verify=proxy_ca_file) as c:
        assert c.get(tls_origin.url("/", host="localhost")).text == "hello from origin\n"


def test_passthrough_shows_origin_certificate(
    start_proxy, tls_origin: Origin, origin_ca_file: Path, proxy_ca_file: Path
) -> None:
    proxy = start_proxy("--connect-port", str(tls_origin.port), "--passthrough", "localhost", "-v")
    issuer = _issuer_through_tunnel(proxy.port, tls_origin.port)
    assert "mitmproxy" not in issuer and "trustme" in issuer.lower()
    with client(proxy, verify=origin_ca_file) as c:  # trusting only the origin's CA works: not decrypted
        assert c.get(tls_origin.url("/", host="localhost")).text == "hello from origin\n"
    assert "passthrough tunnel to localhost" in proxy.log()


def test_intercept_list_passes_other_hosts_through(
    start_proxy, tls_origin: Origin, origin_ca_file: Path
) -> None:
    proxy = start_proxy("--connect-port", str(tls_origin.port), "--intercept", "*.example.com")
    assert "mitmproxy" not in _issuer_through_tunnel(proxy.port, tls_origin.port)
    proxy2 = start_proxy("--connect-port", str(tls_origin.port), "--intercept", "local*")
    assert "mitmproxy" in _issuer_through_tunnel(proxy2.port, tls_origin.port)


def test_connect_to_unlisted_port_gets_403(start_proxy, tls_origin: Origin) -> None:
    proxy = start_proxy()  # default: CONNECT only to 443
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"CONNECT localhost:{tls_origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    reply = b""
    while b"--connect-port)" not in reply and (chunk := sock.recv(4096)):
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 403"), reply
    assert f"CONNECT to port {tls_origin.port} is not allowed".encode() in reply


def test_http2_through_intercepted_tunnel(start_proxy, tls_origin: Origin, proxy_ca_file: Path) -> None:
    proxy = start_proxy("--connect-port", str(tls_origin.port))
    out = subprocess.run(
        ["curl", "-sS", "--http2", "-w", "\n%{http_version}", "-x", proxy.url, "--cacert", str(proxy_ca_file)]
        + [tls_origin.url("/", host="localhost")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout == "hello from origin\n\n2", out.stderr
