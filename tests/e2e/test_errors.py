"""Foundation, end to end: origin failures become short plain-text 502/504 that name the host and cause."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from tests.support import Origin, client, stalled_listener


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_refused_connection_is_502_naming_host(start_proxy) -> None:
    proxy = start_proxy()
    port = _free_port()
    with client(proxy) as c:
        r = c.get(f"http://127.0.0.1:{port}/")
    assert r.status_code == 502
    assert r.headers["Content-Type"].startswith("text/plain")
    assert (
        r.text
        == f"fwdproxy: 127.0.0.1:{port} refused the connection (nothing listens there, or a firewall rejects it)\n"
    )


def test_connect_timeout_is_504(start_proxy) -> None:
    proxy = start_proxy("--connect-timeout", "1")
    with stalled_listener() as port, client(proxy) as c:
        r = c.get(f"http://127.0.0.1:{port}/")
    assert r.status_code == 504
    assert f"127.0.0.1:{port} did not accept a connection within 1 s" in r.text


def test_origin_tls_failure_is_plain_502(start_proxy, tls_origin: Origin, proxy_ca_file: Path) -> None:
    proxy = start_proxy("--connect-port", str(tls_origin.port), upstream_ca=False)  # origin CA not trusted
    with client(proxy, verify=proxy_ca_file) as c:
        r = c.get(tls_origin.url("/", host="localhost"))
    assert r.status_code == 502
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text == (
        f"fwdproxy: localhost:{tls_origin.port} presented a certificate that is not trusted"
        " (unable to get local issuer certificate)\n"
    )
    assert tls_origin.hits["/"] == 0


def test_intercepted_https_refused_is_502(start_proxy, proxy_ca_file: Path) -> None:
    port = _free_port()
    proxy = start_proxy("--connect-port", str(port))
    ctx = ssl.create_default_context(cafile=str(proxy_ca_file))
    with client(proxy, verify=proxy_ca_file) as c:
        r = c.get(f"https://localhost:{port}/")
    assert ctx is not None
    assert r.status_code == 502
    assert f"localhost:{port} refused the connection" in r.text
