"""Security, end to end (issue 9, point 3): who may reach the admin endpoint and PURGE, no loops through the
proxy itself, a private CA key, verified origins unless loudly told otherwise, and nothing of one client's
request ever handed to another from the cache."""

from __future__ import annotations

import socket
import stat
import subprocess
from pathlib import Path

import httpx

from tests.support import Origin, Recorded, Reply, client, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def curl_from(address: str, *args: str) -> str:
    """curl's ``%{http_code}`` for a request sent from a chosen loopback source address."""
    out = subprocess.run(
        ["curl", "-sS", "--interface", address, "-o", "/dev/null", "-w", "%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def test_admin_endpoint_and_purge_only_for_allowed_clients(start_proxy, origin: Origin) -> None:
    url = origin.route("/kept", Reply(200, {"Cache-Control": "max-age=300"}, b"kept\n"))
    admin = free_port()
    proxy = start_proxy(
        "--allow",
        "127.0.0.1/32",
        "--allow",
        "127.0.0.3/32",
        "--allow-purge",
        "127.0.0.1/32",
        "--admin-port",
        str(admin),
    )
    with client(proxy) as c:
        c.get(url)
    # The admin port answers the clients --allow admits, and no one else.
    assert curl_from("127.0.0.1", f"http://127.0.0.1:{admin}/metrics") == "200"
    assert curl_from("127.0.0.2", f"http://127.0.0.1:{admin}/metrics") == "403"
    assert curl_from("127.0.0.2", f"http://127.0.0.1:{admin}/stats.json") == "403"
    # The same pages through the proxy: refused before anything else looks at the request.
    assert curl_from("127.0.0.2", "-x", proxy.url, "http://fwdproxy.local/stats.json") == "403"
    assert curl_from("127.0.0.1", "-x", proxy.url, "http://fwdproxy.local/stats.json") == "200"
    # PURGE: a client that may use the proxy but is outside --allow-purge cannot empty the cache.
    assert curl_from("127.0.0.3", "-x", proxy.url, "-X", "PURGE", url) == "403"
    with client(proxy) as c:
        assert c.get(url).headers["Cache-Status"].startswith("fwdproxy; hit")
    assert curl_from("127.0.0.1", "-x", proxy.url, "-X", "PURGE", url) == "200"
    assert origin.hits["/kept"] == 1


def test_requests_to_the_proxy_itself_are_508_not_a_loop(start_proxy, origin: Origin) -> None:
    proxy = start_proxy()
    for target in (f"http://127.0.0.1:{proxy.port}/", f"http://LocalHost:{proxy.port}/x"):
        reply = raw(proxy.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 508 Loop Detected\r\n"), (target, reply[:200])
        assert b"Content-Type: text/plain" in reply and b"is this proxy itself" in reply
    assert proxy.log().count("is this proxy itself") == 2  # each refused once, none forwarded back to us


def test_connect_to_the_proxy_itself_is_508(start_proxy) -> None:
    port = free_port()
    proxy = start_proxy("--listen-port", str(port), "--connect-port", str(port))
    assert proxy.port == port
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        reply = b""
        while b"itself" not in reply and (chunk := sock.recv(4096)):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 508 "), reply[:200]


def test_loop_caught_on_any_local_address_when_listening_everywhere(start_proxy) -> None:
    proxy = start_proxy("--listen-host", "0.0.0.0", "--allow", "127.0.0.0/8")
    # mitmproxy's own check knows only 127.0.0.1, ::1 and localhost; 127.0.0.2 reaches us too.
    reply = raw(
        proxy.port,
        f"GET http://127.0.0.2:{proxy.port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.1 508 "), reply[:300]


def test_ca_key_is_private_to_its_owner(start_proxy, tmp_path: Path, origin: Origin) -> None:
    confdir = tmp_path / "conf"
    assert run_cli("ca", "--confdir", str(confdir)).returncode == 0
    key = confdir / "mitmproxy-ca.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600  # created private
    key.chmod(0o644)  # a confdir copied by hand
    (confdir / "mitmproxy-ca.p12").chmod(0o640)
    proxy = start_proxy("--confdir", str(confdir))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((confdir / "mitmproxy-ca.p12").stat().st_mode) == 0o600
    assert (
        stat.S_IMODE((confdir / "mitmproxy-ca-cert.pem").stat().st_mode) & 0o044
    )  # the certificate stays public
    assert f"{key} (the CA's private key) was readable by others; made it private" in proxy.log()


def test_cache_dir_is_created_private_an_open_one_tightened_and_a_group_one_warned_about(
    start_proxy, tmp_path: Path
) -> None:
    made = tmp_path / "made" / "cache"
    proxy = start_proxy(cache_dir=made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700  # it holds decrypted HTTPS responses
    assert "readable by other users" not in proxy.log()
    proxy.stop()
    # Made by hand with a usual umask: tightened, said once at INFO, no warning.
    usual = tmp_path / "usual"
    usual.mkdir()
    usual.chmod(0o755)
    proxy = start_proxy(cache_dir=usual)
    assert stat.S_IMODE(usual.stat().st_mode) == 0o700
    assert proxy.log().count(f"made the cache directory {usual} private (mode 0700)") == 1
    assert "readable by other users" not in proxy.log()
    proxy.stop()
    # Shared with a group on purpose: left as the operator made it, and warned about.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o750)
    proxy = start_proxy(cache_dir=shared)
    assert f"the cache directory {shared} is readable by other users" in proxy.log()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o750


def test_origin_tls_is_verified_unless_upstream_insecure_which_warns(
    start_proxy, tls_origin: Origin, proxy_ca_file: Path
) -> None:
    url = tls_origin.url("/", host="localhost")
    verified = start_proxy("--connect-port", str(tls_origin.port), upstream_ca=False)  # origin's CA unknown
    with client(verified, verify=proxy_ca_file) as c:
        r = c.get(url)
    assert r.status_code == 502 and "presented a certificate that is not trusted" in r.text
    assert "NOT verified" not in verified.log()
    insecure = start_proxy("--connect-port", str(tls_origin.port), "--upstream-insecure", upstream_ca=False)
    assert (
        "WARNING: origin TLS certificates are NOT verified" in insecure.log()
    )  # at start, before any request
    with client(insecure, verify=proxy_ca_file) as c:
        assert c.get(url).status_code == 200
    via_set = start_proxy(
        "--connect-port", str(tls_origin.port), "--set", "ssl_insecure=true", upstream_ca=False
    )
    assert "WARNING: origin TLS certificates are NOT verified" in via_set.log()


def test_no_request_header_of_one_client_reaches_another_from_cache(start_proxy, origin: Origin) -> None:
    secrets = {"Cookie": "session=alice-secret", "X-Api-Key": "alice-key", "User-Agent": "alice-agent/1"}

    def plain(_: Recorded) -> Reply:  # Vary-less and explicitly fresh: shared by design
        return Reply(
            200, {"Cache-Control": "public, max-age=300", "Content-Type": "text/plain"}, b"shared page\n"
        )

    def by_cookie(req: Recorded) -> Reply:
        who = "alice" if "alice" in req.headers.get("Cookie", "") else "other"
        return Reply(200, {"Cache-Control": "max-age=300", "Vary": "Cookie"}, f"page for {who}\n".encode())

    shared, varying = origin.route("/shared", plain), origin.route("/varying", by_cookie)
    proxy = start_proxy()
    with client(proxy) as alice:
        alice.get(shared, headers=secrets)
        alice.get(varying, headers=secrets)
    with client(proxy) as bob:
        hit = bob.get(shared, headers={"User-Agent": "bob"})
        other = bob.get(varying, headers={"Cookie": "session=bob"})
        other_hit = bob.get(varying, headers={"Cookie": "session=bob"})
    assert hit.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert other.text == "page for other\n" and "hit" not in other.headers["Cache-Status"].split("; ")
    assert other_hit.headers["Cache-Status"].startswith("fwdproxy; hit")
    for r in (hit, other, other_hit):
        seen = "\n".join(f"{k}: {v}" for k, v in r.headers.multi_items()) + r.text
        assert not any(value in seen for value in secrets.values()), seen


def test_set_cookie_never_shared_under_a_cache_rule(start_proxy, origin: Origin, tmp_path: Path) -> None:
    config = tmp_path / "rules.toml"
    config.write_text(f'[[cache.rule]]\nmatch = "http://127.0.0.1:{origin.port}/login*"\nimmutable = true\n')
    url = origin.route(
        "/login", Reply(200, {"Cache-Control": "max-age=0", "Set-Cookie": "session=alice"}, b"welcome\n")
    )
    proxy = start_proxy("--config", str(config))
    with client(proxy) as alice:
        assert alice.get(url).headers["Set-Cookie"] == "session=alice"
    with httpx.Client(proxy=proxy.url, trust_env=False) as bob:
        r = bob.get(url)
    assert "hit" not in r.headers["Cache-Status"].split("; ")
    assert origin.hits["/login"] == 2
