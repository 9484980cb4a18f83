"""Foundation, end to end: never an open relay; proxy authentication."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.support import Origin, client, fwdproxy_argv


def _get_from(address: str, proxy_url: str, url: str) -> tuple[int, str]:
    """Status and body of a GET sent from a chosen loopback source address (curl --interface)."""
    out = subprocess.run(
        ["curl", "-sS", "--interface", address, "-x", proxy_url, "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    body, _, status = out.stdout.rpartition("\n")
    return int(status), body + "\n"


def test_client_outside_allow_gets_403(start_proxy, origin: Origin) -> None:
    proxy = start_proxy("--allow", "127.0.0.1/32")
    status, body = _get_from("127.0.0.2", proxy.url, origin.url("/"))
    assert status == 403
    assert body == "fwdproxy: 127.0.0.2 is not allowed to use this proxy (see --allow)\n"
    assert origin.hits["/"] == 0
    assert _get_from("127.0.0.1", proxy.url, origin.url("/"))[0] == 200
    assert "refused client 127.0.0.2" in proxy.log()


def test_connect_outside_allow_gets_403(start_proxy, tls_origin: Origin) -> None:
    proxy = start_proxy("--allow", "127.0.0.1/32", "--connect-port", str(tls_origin.port))
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--interface",
            "127.0.0.2",
            "-x",
            proxy.url,
            "-k",
            tls_origin.url("/", host="localhost"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "403" in out.stderr


def test_public_listen_host_alone_refuses_to_start(tmp_path: Path) -> None:
    out = subprocess.run(
        fwdproxy_argv("run", "--listen-host", "0.0.0.0", "--listen-port", "0", "--cache-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "open relay" in out.stderr and "--allow" in out.stderr and "--auth" in out.stderr


def test_public_listen_host_with_allow_starts(start_proxy, origin: Origin) -> None:
    proxy = start_proxy("--listen-host", "0.0.0.0", "--allow", "127.0.0.0/8")
    assert _get_from("127.0.0.1", f"http://127.0.0.1:{proxy.port}", origin.url("/"))[0] == 200


def test_auth_required_and_not_forwarded(start_proxy, origin: Origin) -> None:
    proxy = start_proxy("--auth", "ci:s3cret")
    with client(proxy) as c:
        r = c.get(origin.url("/echo"))
    assert r.status_code == 407
    assert r.headers["Proxy-Authenticate"] == 'Basic realm="fwdproxy"'
    with httpx.Client(proxy=f"http://ci:wrong@127.0.0.1:{proxy.port}", trust_env=False) as c:
        assert c.get(origin.url("/echo")).status_code == 407
    with httpx.Client(proxy=f"http://ci:s3cret@127.0.0.1:{proxy.port}", trust_env=False) as c:
        r = c.get(origin.url("/echo"))
    assert r.status_code == 200
    assert "proxy-authorization" not in {k.lower() for k, _ in r.json()}


def test_auth_over_connect(start_proxy, tls_origin: Origin, proxy_ca_file: Path) -> None:
    proxy = start_proxy("--auth", "ci:s3cret", "--connect-port", str(tls_origin.port))
    url = tls_origin.url("/echo", host="localhost")
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            proxy.url,
            "--cacert",
            str(proxy_ca_file),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "407" in out.stdout + out.stderr
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-x",
            f"http://ci:s3cret@127.0.0.1:{proxy.port}",
            "--cacert",
            str(proxy_ca_file),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "proxy-authorization" not in out.stdout.lower()
