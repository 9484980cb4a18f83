"""What an operator meets in the first hour (issue 18): the runtime file that `fwdproxy env` and `fwdproxy cache`
find, the start banner, a port in use, --help, -v, a bad mitmdump --set value, and /proxy.pac."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fwdproxy import runtime
from tests.support import REPO, Origin, mitmdump_argv, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runtime_files(cache_dir: Path) -> list[Path]:
    user = runtime.user_dir()
    return [p for p in [cache_dir / runtime.CACHE_DIR_NAME, *user.glob("*.json")] if p.exists()]


def test_the_runtime_file_lets_env_and_cache_find_the_running_proxy(
    start_proxy, tmp_path: Path, confdir: Path
) -> None:
    cache_dir = tmp_path / "rt-cache"
    proxy = start_proxy(cache_dir=cache_dir)
    mine = [p for p in runtime_files(cache_dir) if json.loads(p.read_text())["port"] == proxy.port]
    assert len(mine) == 2  # the cache dir's and the per-user one
    record = json.loads(mine[0].read_text())
    assert record["pid"] == proxy.proc.pid and record["confdir"] == str(confdir)
    assert record["cache_dir"] == str(cache_dir) and record["ca"] == str(confdir / "mitmproxy-ca-cert.pem")

    env = run_cli("env", "--proxy", proxy.url)
    assert env.returncode == 0, env.stderr
    assert f"export HTTPS_PROXY={proxy.url}\n" in env.stdout
    assert f"export NODE_EXTRA_CA_CERTS={confdir / 'mitmproxy-ca-cert.pem'}\n" in env.stdout
    assert f"fwdproxy env: using {proxy.url} (pid {proxy.proc.pid}" in env.stderr

    stats = run_cli("cache", "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    if json.loads(stats.stdout)["cache_dir"] != str(cache_dir):  # another test's proxy may be newer
        assert len(runtime.find()) > 1

    # The banner prints the line that sets up a shell for exactly this proxy.
    assert f'eval "$(fwdproxy env --proxy {proxy.url} --confdir {confdir})"' in proxy.log()

    proxy.stop()
    assert not [p for p in runtime_files(cache_dir) if json.loads(p.read_text())["port"] == proxy.port]


def test_a_killed_proxy_is_not_found_and_env_makes_no_ca(start_proxy, tmp_path: Path) -> None:
    cache_dir = tmp_path / "killed-cache"
    proxy = start_proxy(cache_dir=cache_dir)
    proxy.proc.send_signal(signal.SIGKILL)
    proxy.proc.wait()
    assert (cache_dir / runtime.CACHE_DIR_NAME).exists()  # left behind by kill -9 …
    env = run_cli("env", "--proxy", proxy.url)
    assert env.returncode == 1  # … and recognised as stale: nothing runs there
    assert "fwdproxy env: no running fwdproxy" in env.stderr and "fwdproxy run" in env.stderr
    assert env.stdout == ""
    home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-m", "fwdproxy.cli", "env"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path / "nothing-here")},
    )  # fmt: skip
    assert result.returncode == 1 and "no running fwdproxy found" in result.stderr
    assert not (home / ".mitmproxy").exists()  # never a new CA as a side effect


def test_a_port_in_use_is_one_clear_line(start_proxy, tmp_path: Path, confdir: Path) -> None:
    first = start_proxy()
    for extra in ([], ["--workers", "2"]):
        result = run_cli(
            "run", "--listen-port", str(first.port), "--confdir", str(confdir),
            "--cache-dir", str(tmp_path / "second"), "--admin-port", str(free_port()), *extra,
        )  # fmt: skip
        assert result.returncode == 1
        wanted = f"fwdproxy: 127.0.0.1:{first.port} is already in use (another fwdproxy? pick --listen-port)"
        assert wanted in result.stderr.splitlines()
        assert "--mode" not in result.stderr and "status page" not in result.stderr
        assert "Traceback" not in result.stderr


def test_help_shows_defaults_as_users_write_them() -> None:
    text = " ".join(run_cli("run", "--help").stdout.split())
    assert "bytes the memory tier may hold (default: 256MiB)" in text
    assert "(default: 10GiB)" in text and "(default: 10s)" in text
    assert "268435456" not in text and "10.0" not in text


def test_a_bad_set_value_under_mitmdump_is_one_line_and_a_failure(tmp_path: Path, confdir: Path) -> None:
    result = subprocess.run(
        mitmdump_argv(
            "--listen-host", "127.0.0.1", "--listen-port", "0", "-s", "addons/fwdproxy.py",
            "--set", f"confdir={confdir}", "--set", f"fwd_cache_dir={tmp_path / 'c'}",
            "--set", "fwd_admin_port=0", "--set", "fwd_read_timeout=abc",
        ),
        capture_output=True, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "fwdproxy: fwd_read_timeout: 'abc' is not a duration" in out
    assert "Traceback" not in out


def test_workers_print_the_banner_once(start_proxy) -> None:
    proxy = start_proxy("--workers", "2")
    deadline = time.monotonic() + 10
    while "workers share port" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proxy.log().count("CA certificate (trust it to cache HTTPS)") == 1
    assert proxy.log().count("fwdproxy env --proxy") == 1


def test_verbose_logs_one_line_per_request_and_no_frames(
    start_proxy, origin: Origin, tls_origin: Origin, proxy_ca_file: Path
) -> None:
    proxy = start_proxy("-v", "--connect-port", str(tls_origin.port))
    with httpx.Client(proxy=proxy.url, trust_env=False, timeout=10) as c:
        assert c.get(origin.url("/")).status_code == 200
    ctx = ssl.create_default_context(cafile=str(proxy_ca_file))
    with httpx.Client(proxy=proxy.url, verify=ctx, trust_env=False, timeout=10, http2=True) as c:
        assert c.get(tls_origin.url("/")).status_code == 200
    deadline = time.monotonic() + 5
    while proxy.log().count("fwdproxy.request") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    log = proxy.log()
    assert f"fwdproxy.request: GET {origin.url('/')} 200 fwdproxy; fwd=uri-miss" in log
    assert f"fwdproxy.request: GET {tls_origin.url('/')} 200" in log
    assert "hpack" not in log and "Lowercased" not in log


def test_proxy_pac_on_the_admin_port_and_through_the_proxy(start_proxy) -> None:
    admin = free_port()
    proxy = start_proxy("--admin-port", str(admin))
    direct = httpx.get(f"http://127.0.0.1:{admin}/proxy.pac", trust_env=False, timeout=10)
    assert direct.status_code == 200
    assert direct.headers["content-type"] == "application/x-ns-proxy-autoconfig"
    with httpx.Client(proxy=proxy.url, trust_env=False, timeout=10) as c:
        via = c.get("http://fwdproxy.local/proxy.pac")
    assert via.status_code == 200 and via.text == direct.text
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to evaluate the PAC file")
    script = direct.text + (
        "\nconsole.log([FindProxyForURL('https://pypi.org/simple/', 'pypi.org'),"
        " FindProxyForURL('http://localhost:3000/', 'localhost')].join('|'));"
    )
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == f"PROXY 127.0.0.1:{proxy.port}|DIRECT"
