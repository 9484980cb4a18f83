"""The fwdproxy command itself, and the same chain loaded by mitmdump -s."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.support import REPO, Origin, Proxy, Reply, client, mitmdump_argv, run_cli


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("fwdproxy 0.") and "\nmitmproxy 12.3" in out.stdout


def test_ca_creates_and_prints(tmp_path: Path) -> None:
    out = run_cli("ca", "--confdir", str(tmp_path / "conf"))
    assert out.returncode == 0
    path = Path(out.stdout.strip())
    assert path == tmp_path / "conf" / "mitmproxy-ca-cert.pem" and path.exists()
    pem = run_cli("ca", "--confdir", str(tmp_path / "conf"), "--pem")
    assert pem.stdout == path.read_text() and pem.stdout.startswith("-----BEGIN CERTIFICATE-----")
    helptext = run_cli("ca", "--help").stdout
    for word in ("curl", "pip", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "update-ca-certificates"):
        assert word in helptext


def test_bad_flag_value_is_one_clear_line(tmp_path: Path) -> None:
    out = run_cli("run", "--listen-port", "0", "--cache-dir", str(tmp_path), "--memory-cache-size", "huge")
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "fwdproxy: --memory-cache-size: 'huge' is not a size; try e.g. 1048576, 512KiB, 256MiB or 10GiB"
    )


def test_unknown_mitmproxy_option_is_an_error(tmp_path: Path, confdir: Path) -> None:
    out = run_cli(
        "run",
        "--listen-port",
        "0",
        "--cache-dir",
        str(tmp_path),
        "--confdir",
        str(confdir),
        "--set",
        "nosuch=1",
    )
    assert out.returncode == 2
    assert "nosuch" in out.stderr


def test_busy_port_exits_nonzero(start_proxy, tmp_path: Path, confdir: Path) -> None:
    first = start_proxy()
    out = run_cli(
        "run",
        "--listen-port",
        str(first.port),
        "--cache-dir",
        str(tmp_path / "c2"),
        "--confdir",
        str(confdir),
    )
    assert out.returncode == 1
    assert "is already in use (another fwdproxy? pick --listen-port)" in out.stderr


def test_sigterm_stops_cleanly(start_proxy) -> None:
    proxy = start_proxy()
    assert proxy.stop() == 0


def test_mitmdump_script_runs_the_same_chain(
    tmp_path: Path,
    confdir: Path,
    origin: Origin,
    tls_origin: Origin,
    origin_ca_file: Path,
    proxy_ca_file: Path,
) -> None:
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
        f"fwd_upstream_ca={origin_ca_file}",
        "--set",
        f"fwd_connect_ports={tls_origin.port}",
        "--set",
        "fwd_allow=127.0.0.1/32",
    )
    proxy = Proxy(argv, tmp_path)
    try:
        with client(proxy, verify=proxy_ca_file) as c:
            assert c.get(origin.url("/")).text == "hello from origin\n"
            assert c.get(tls_origin.url("/", host="localhost")).text == "hello from origin\n"
        out = subprocess.run(
            ["curl", "-sS", "--interface", "127.0.0.2", "-x", proxy.url, origin.url("/")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "is not allowed to use this proxy" in out.stdout
    finally:
        proxy.stop()


def test_scripts_are_executable() -> None:
    for name in ("scripts/run", "scripts/test", ".ci/run"):
        mode = os.stat(REPO / name).st_mode
        assert mode & stat.S_IXUSR, name


def test_a_bad_cache_rule_stops_the_start_before_listening(tmp_path: Path, confdir: Path) -> None:
    # [[cache.rule]] tables are checked with the others before the proxy listens (not when the addon loads).
    cfg = tmp_path / "fwdproxy.toml"
    cfg.write_text('[[cache.rule]]\nmatch = "x"\nmax_ttl = "soon"\n')
    out = run_cli(
        "run",
        "--listen-port",
        "0",
        "--cache-dir",
        str(tmp_path / "c"),
        "--confdir",
        str(confdir),
        "--config",
        str(cfg),
    )
    assert out.returncode == 2
    assert out.stderr.startswith(f"fwdproxy: {cfg}: cache.rule[0].max_ttl: 'soon' is not a duration")
    assert "listening" not in out.stdout
    assert not (tmp_path / "c").exists()  # stopped before anything opened the cache


def test_mitmdump_script_takes_cache_rules_and_sizes_from_the_same_table(
    tmp_path: Path, confdir: Path, origin: Origin
) -> None:
    cfg = tmp_path / "fwdproxy.toml"
    cfg.write_text('[[cache.rule]]\nmatch = "http://127.0.0.1:*/packages/*"\nimmutable = true\n')
    url = origin.route("/packages/p.tar.gz", Reply(headers={"Cache-Control": "max-age=0"}, body=b"x" * 3000))
    big = origin.route(
        "/packages/big.tar.gz", Reply(headers={"Cache-Control": "max-age=0"}, body=b"y" * 5000)
    )
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
        f"fwd_cache_dir={tmp_path / 'c'}",
        "--set",
        "fwd_admin_port=0",
        "--set",
        f"fwd_config={cfg}",
        "--set",
        "fwd_max_object_size=4KiB",  # text parsed with the options table, as --max-object-size would be
    )
    proxy = Proxy(argv, tmp_path)
    try:
        with client(proxy) as c:
            assert c.get(url).content == b"x" * 3000
            second = c.get(url)
            c.get(big)
            assert c.get(big).content == b"y" * 5000
    finally:
        proxy.stop()
    assert second.content == b"x" * 3000 and "detail=rule-immutable" in second.headers["Cache-Status"]
    assert origin.hits["/packages/p.tar.gz"] == 1
    assert origin.hits["/packages/big.tar.gz"] == 2  # over fwd_max_object_size: never stored
