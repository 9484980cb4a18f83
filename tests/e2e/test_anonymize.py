"""Anonymity end to end (issue 5): what a local echo origin sees per level, over HTTP and intercepted HTTPS."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from fwdproxy.anonymize import DEFAULT_ACCEPT_LANGUAGE, DEFAULT_USER_AGENT, IDENTIFYING_REQUEST_HEADERS
from tests.support import REPO, Origin, Proxy, Reply, client, mitmdump_argv, run_cli

ADDRESS = "203.0.113.7"
"""The client address every identifying header carries (TEST-NET-3); it must never reach an origin."""

ISSUE_LIST = (
    *"Forwarded Via X-Forwarded-For X-Forwarded-Host X-Forwarded-Server X-Forwarded-Proto".split(),
    *"X-Forwarded-Port X-Real-IP X-Client-IP Client-IP True-Client-IP CF-Connecting-IP".split(),
    *"Fastly-Client-IP X-Cluster-Client-IP X-Originating-IP X-Remote-IP X-Remote-Addr".split(),
    *"X-ProxyUser-IP Proxy-Client-IP WL-Proxy-Client-IP X-Coming-From Coming-From X-Host".split(),
)
"""The headers issue 5 names, written out here so the test does not trust the module's own list."""

IDENTIFYING = tuple(dict.fromkeys(ISSUE_LIST + IDENTIFYING_REQUEST_HEADERS + ("X-Forwarded-Ssl",)))

NORMAL = [
    ("Accept-Language", "de-CH,de;q=0.8"),
    ("User-Agent", "client/1.0"),
    ("Referer", "https://tracker.example.net/page?q=secret"),  # cross-site for 127.0.0.1 and localhost
    ("Cookie", "session=abc"),
    ("Authorization", "Bearer t"),
    ("From", "me@example.net"),
    ("Sec-CH-UA", '"Chromium";v="142"'),
    ("Sec-CH-UA-Platform", '"Linux"'),
    ("X-Request-ID", "42"),
]
LOADED = (
    NORMAL
    + [(n, "for=203.0.113.7" if n == "Forwarded" else ADDRESS) for n in IDENTIFYING]
    + [("Proxy-Authorization", "Basic eDp5"), ("Proxy-Connection", "keep-alive")]
)
PROXY_ONLY = {"proxy-authorization", "proxy-connection"}
"""Removed at every level, off included."""
HTTPX_DEFAULTS = {"host", "accept", "accept-encoding", "connection", "user-agent"}
"""What httpx sends on its own (user-agent is overridden by NORMAL)."""

EXPECTED = {
    "standard": HTTPX_DEFAULTS
    | {"accept-language", "referer", "cookie", "authorization", "from", "sec-ch-ua", "sec-ch-ua-platform"}
    | {"x-request-id"},
    "strict": HTTPX_DEFAULTS | {"accept-language", "cookie", "authorization", "x-request-id"},
}


def backend(origin: Origin) -> None:
    origin.route(
        "/backend",
        Reply(
            200,
            {"Content-Type": "text/plain", "X-Backend-Server": "app-7.internal", "X-Served-By": "cache-fra-1"}
            | {"X-Powered-By": "PHP/8", "X-Server-IP": "10.1.2.3"},
            b"ok\n",
        ),
    )


def seen(response_text: str) -> list[tuple[str, str]]:
    """The header list the /echo origin received."""
    return [(k, v) for k, v in json.loads(response_text)]


def urls(origin: Origin, tls_origin: Origin, path: str) -> dict[str, str]:
    return {"http": origin.url(path), "https": tls_origin.url(path, host="localhost")}


@pytest.mark.parametrize("level", ["off", "standard", "strict"])
def test_exact_request_headers_per_level(
    start_proxy, origin: Origin, tls_origin: Origin, proxy_ca_file: Path, level: str
) -> None:
    proxy = start_proxy("--anonymize", level, "--connect-port", str(tls_origin.port))
    backend(origin)
    backend(tls_origin)
    with client(proxy, verify=proxy_ca_file) as c:
        for scheme, url in urls(origin, tls_origin, "/echo").items():
            r = c.get(url, headers=LOADED)
            assert r.status_code == 200, (scheme, r.text)
            got = seen(r.text)
            names = [k.lower() for k, _ in got]
            assert len(names) == len(set(names)), (scheme, got)  # nothing appended to a header of ours
            if level == "off":
                sent = [(k, v) for k, v in r.request.headers.multi_items()]
                expected = [(k.lower(), v) for k, v in sent if k.lower() not in PROXY_ONLY]
                assert sorted((k.lower(), v) for k, v in got) == sorted(expected), scheme
                continue
            assert set(names) == EXPECTED[level], scheme
            assert not any(ADDRESS in v for _, v in got), (scheme, got)
            values = dict((k.lower(), v) for k, v in got)
            if level == "standard":
                assert values["user-agent"] == "client/1.0"
                assert values["referer"] == "https://tracker.example.net/page?q=secret"
            else:
                assert values["user-agent"] == DEFAULT_USER_AGENT
                assert values["accept-language"] == DEFAULT_ACCEPT_LANGUAGE
            assert values["cookie"] == "session=abc" and values["x-request-id"] == "42"
        for scheme, url in urls(origin, tls_origin, "/backend").items():
            r = c.get(url)
            hidden = {"x-backend-server", "x-served-by", "x-server-ip"}
            assert hidden <= set(r.headers) if level != "strict" else not hidden & set(r.headers), scheme
            assert r.headers["x-powered-by"] == "PHP/8", scheme  # not on the strict list


def _curl(proxy: Proxy, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "-x", proxy.url, *args, url], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_default_level_done_when(
    start_proxy, origin: Origin, tls_origin: Origin, proxy_ca_file: Path, http2: bool
) -> None:
    """Issue 5, "Done when": the six headers never reach the origin, and nothing like them is added."""
    proxy = start_proxy("--connect-port", str(tls_origin.port))
    six = ["X-Forwarded-For", "Forwarded", "Via", "X-Real-IP", "True-Client-IP", "CF-Connecting-IP"]
    headers = [arg for name in six for arg in ("-H", f"{name}: {ADDRESS}")]
    targets = urls(origin, tls_origin, "/echo")
    if http2:  # HTTP/2 inside an intercepted tunnel (h2c upgrades of plain HTTP are another matter)
        del targets["http"]
    for url in targets.values():
        out = _curl(proxy, url, "--cacert", str(proxy_ca_file), "--http2" if http2 else "--http1.1", *headers)
        got = seen(out.stdout)
        assert {k.lower() for k, _ in got} == {"host", "user-agent", "accept"}, (url, got, out.stderr)
        assert not any(ADDRESS in v for _, v in got), got


def test_strict_with_custom_rules_from_config(start_proxy, origin: Origin, tmp_path: Path) -> None:
    config = tmp_path / "fwdproxy.toml"
    config.write_text(
        "[anonymize]\n"
        'level = "strict"\n'
        'user_agent = "fleet-agent/1"\n'
        'accept_language = "fr"\n'
        'remove = ["X-Debug"]\n'
        'set = { DNT = "1" }\n'
        'keep = ["X-Request-ID", "X-Real-IP"]\n'
        'response_remove = ["X-Powered-By"]\n'
    )
    proxy = start_proxy("--config", str(config))
    backend(origin)
    same_site = origin.url("/search?q=1")
    with client(proxy) as c:
        r = c.get(
            origin.url("/echo"),
            headers={"X-Debug": "1", "X-Real-IP": "10.0.0.1", "Referer": same_site, "Via": "1.1 corp"},
        )
        values = {k.lower(): v for k, v in seen(r.text)}
        assert values["user-agent"] == "fleet-agent/1"
        assert values["accept-language"] == "fr"
        assert values["dnt"] == "1"
        assert values["x-real-ip"] == "10.0.0.1"  # kept on purpose
        assert values["referer"] == origin.url("/")  # same site: cut to the origin
        assert "x-debug" not in values and "via" not in values
        r = c.get(origin.url("/echo"), headers={"Referer": "https://tracker.example.net/p"})
        assert "referer" not in {k.lower() for k, _ in seen(r.text)}  # cross-site: removed
        r = c.get(origin.url("/backend"))
        assert not {"x-backend-server", "x-served-by", "x-server-ip", "x-powered-by"} & set(r.headers)
        assert r.text == "ok\n"


def test_flag_overrides_the_file_level(start_proxy, origin: Origin, tmp_path: Path) -> None:
    config = tmp_path / "fwdproxy.toml"
    config.write_text('[anonymize]\nlevel = "strict"\nremove = ["X-Debug"]\n')
    proxy = start_proxy("--config", str(config), "--anonymize", "off")
    with client(proxy) as c:
        got = seen(c.get(origin.url("/echo"), headers={"X-Forwarded-For": ADDRESS, "X-Debug": "1"}).text)
    values = {k.lower(): v for k, v in got}
    assert values["x-forwarded-for"] == ADDRESS and values["x-debug"] == "1"  # off ignores custom rules
    assert values["user-agent"].startswith("python-httpx/")


def test_bad_rule_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "fwdproxy.toml"
    config.write_text('[anonymize]\nremove = "X-Debug"\n')
    out = run_cli("run", "--listen-port", "0", "--cache-dir", str(tmp_path / "c"), "--config", str(config))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"fwdproxy: {config}: anonymize.remove: 'X-Debug' is not a list of header names; try e.g. [\"X-Debug\"]"
    )


def test_logs_name_removed_headers_never_values(start_proxy, origin: Origin) -> None:
    proxy = start_proxy("-v")
    with client(proxy) as c:
        c.get(origin.url("/echo"), headers={"X-Forwarded-For": ADDRESS, "True-Client-IP": ADDRESS})
    log = proxy.log()
    assert "removed true-client-ip, x-forwarded-for" in log
    assert ADDRESS not in log


def test_mitmdump_script_takes_the_same_rules(
    tmp_path: Path, confdir: Path, origin: Origin, origin_ca_file: Path
) -> None:
    config = tmp_path / "fwdproxy.toml"
    config.write_text('[anonymize]\nuser_agent = "fleet-agent/1"\nremove = ["X-Debug"]\n')
    argv = mitmdump_argv(
        "-q",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        "0",
        "-s",
        str(REPO / "addons" / "fwdproxy.py"),
        "--set",
        f"confdir={confdir}",
        "--set",
        f"fwd_cache_dir={tmp_path / 'cache'}",
        "--set",
        "fwd_anonymize=strict",
        "--set",
        f"fwd_anonymize_config={config}",
    )
    proxy = Proxy(argv, tmp_path)
    try:
        with client(proxy) as c:
            got = seen(c.get(origin.url("/echo"), headers={"X-Debug": "1", "Via": "1.1 corp"}).text)
    finally:
        proxy.stop()
    values = {k.lower(): v for k, v in got}
    assert values["user-agent"] == "fleet-agent/1"
    assert "x-debug" not in values and "via" not in values


def test_raw_tcp_tunnel_is_named_in_the_log(start_proxy) -> None:
    """A tunnel carrying neither TLS nor HTTP (here a server-speaks-first, SSH-like protocol) is relayed blind."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"SSH-2.0-origin\r\n")
            conn.sendall(b"echo:" + conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    proxy = start_proxy("--connect-port", str(port), "-v")
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"HTTP/1.1 200")
            assert reader.readline() == b"\r\n"
            # Both sides send their banner at once, as SSH does (the lazy origin connection opens on the
            # client's first bytes).
            sock.sendall(b"SSH-2.0-client\r\n")
            assert reader.readline() == b"SSH-2.0-origin\r\n"
            assert reader.readline() == b"echo:SSH-2.0-client\r\n"
    finally:
        listener.close()
    assert f"passthrough tunnel to 127.0.0.1:{port} (raw TCP: not cached, not rewritten)" in proxy.log()
