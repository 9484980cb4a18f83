"""The registry simulator of scripts/bench_clients answers like a registry (issue 17, point 9), plain and HTTPS."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import io
import re
import shutil
import ssl
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.support import REPO


def load_bench() -> ModuleType:
    path = REPO / "scripts" / "bench_clients"
    loader = importlib.machinery.SourceFileLoader("bench_clients", str(path))
    spec = importlib.util.spec_from_loader("bench_clients", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_clients"] = module  # dataclasses look their module up while the class is made
    loader.exec_module(module)
    return module


@pytest.mark.parametrize("sim", ["plain", "internet"])
def test_index_page_and_wheel_carry_the_registry_headers(sim: str, tmp_path: Path) -> None:
    bench = load_bench()
    reg = bench.Registry(["smokepkg"], ["smoke-npm"], bench.SIMS[sim])
    bench.start_registry(reg, tmp_path)
    try:
        verify: ssl.SSLContext | bool = False
        if reg.sim.tls:
            verify = ssl.create_default_context(cafile=str(reg.ca_pem))
        with httpx.Client(verify=verify, timeout=10) as client:
            started = time.monotonic()
            index = client.get(f"{reg.base('index')}/simple/smokepkg/")
            first = time.monotonic() - started
            assert index.status_code == 200
            assert index.headers["cache-control"] == "max-age=600"
            assert index.headers["content-type"] == "text/html"
            link = re.search(r'href="([^"#]+)#sha256=([0-9a-f]+)"', index.text)
            assert link is not None, index.text
            url, digest = link.groups()
            assert url.startswith(reg.base("files") + "/packages/smokepkg-1.0.0-py3-none-any.whl")

            wheel = client.get(url)
            assert wheel.status_code == 200
            assert wheel.headers["cache-control"] == "max-age=365000000, immutable"
            assert hashlib.sha256(wheel.content).hexdigest() == digest
            with zipfile.ZipFile(io.BytesIO(wheel.content)) as z:
                assert "smokepkg/__init__.py" in z.namelist()

            again = client.get(
                f"{reg.base('index')}/simple/smokepkg/", headers={"If-None-Match": index.headers["etag"]}
            )
            assert again.status_code == 304
            assert again.content == b""

            packument = client.get(f"{reg.base('npm')}/npm/smoke-npm")
            assert packument.headers["cache-control"] == "public, max-age=300"
            tarball = client.get(packument.json()["versions"]["1.0.0"]["dist"]["tarball"])
            assert tarball.headers["cache-control"] == "public, immutable, max-age=31557600"
            assert tarball.content[:2] == b"\x1f\x8b"
        used, connections, requests, not_modified = reg.reset()
        assert requests == 5
        assert not_modified == 1
        origins = 2 if reg.sim.split_hosts else 1
        assert reg.origins("pip") == origins
        # One keep-alive connection per host: the index, then the files host, then npm (the index's host when
        # there is one host only).
        assert connections == (3 if reg.sim.split_hosts else 1)
        assert used == connections
        # The first answer waits one request round trip, plus TCP and TLS round trips on a new connection.
        assert first >= bench.DELAY * (3 if reg.sim.setup_rtt else 1)
    finally:
        bench.stop_registry(reg)


@pytest.mark.skipif(not shutil.which("npm"), reason="npm is not installed")
@pytest.mark.parametrize("npmrc_cafile", [False, True], ids=["npmrc without cafile", "npmrc with cafile"])
def test_npm_installs_through_the_proxy_with_the_env_exports(
    npmrc_cafile: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real npm, HTTPS registry (trustme), `fwdproxy run`, and exactly what `fwdproxy env` prints: the
    package installs, both its requests go through the proxy intercepted, and npm gets a cafile only when
    its npmrc has one (which would otherwise hide the fwdproxy CA from it)."""
    bench = load_bench()
    npmrc, global_npmrc = tmp_path / "npmrc", tmp_path / "global-npmrc"
    global_npmrc.write_text("")
    # update-notifier=false: no check for a newer npm (a GET of the registry's "npm" packument).
    npmrc.write_text(
        "update-notifier=false\n" + ("cafile=/etc/ssl/certs/ca-certificates.crt\n" if npmrc_cafile else "")
    )
    npm_conf = {"npm_config_globalconfig": str(global_npmrc), "npm_config_userconfig": str(npmrc)}
    for name, value in npm_conf.items():
        monkeypatch.setenv(name, value)  # for `fwdproxy env`, which asks npm for its ca/cafile
    reg = bench.Registry([], ["env-npm"], bench.SIMS["internet"])
    bench.start_registry(reg, tmp_path)
    fwd = bench.Fwd(tmp_path, tmp_path / "cache", reg, [])
    try:
        assert ("npm_config_cafile" in fwd.env) is npmrc_cafile
        assert fwd.env["NODE_EXTRA_CA_CERTS"] == str(fwd.confdir / "mitmproxy-ca-cert.pem")
        project = tmp_path / "project"
        project.mkdir()
        (project / "package.json").write_text(
            '{"name": "p", "version": "1.0.0", "dependencies": {"env-npm": "1.0.0"}}'
        )
        env = bench.client_env(reg, fwd, **npm_conf)
        argv = ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock", "--fetch-retries=0",
                f"--registry={reg.base('npm')}/npm/", f"--cache={tmp_path / 'npm-cache'}"]  # fmt: skip
        out = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        installed = project / "node_modules" / "env-npm"
        assert (installed / "index.js").read_bytes() == b"module.exports = 1;\n"
        assert '"name": "env-npm"' in (installed / "package.json").read_text()
    finally:
        records = fwd.stop()
        bench.stop_registry(reg)
    gets = sorted(str(r.get("url")) for r in records if r.get("method") == "GET")
    assert gets == [f"{reg.base('npm')}/npm/env-npm", f"{reg.base('npm')}/npm/env-npm/-/env-npm-1.0.0.tgz"]


@pytest.mark.skipif(not shutil.which("npm"), reason="npm is not installed")
@pytest.mark.parametrize("npmrc_cafile", [False, True], ids=["npmrc without cafile", "npmrc with cafile"])
def test_direct_npm_trusts_what_its_own_npmrc_makes_it_parse(
    npmrc_cafile: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A direct npm run pays for the trust set-up the user's npm has towards the real registry: with an npmrc
    `cafile` (the system bundle, parsed per connection) it gets that bundle plus the simulator's CA, as
    `fwdproxy env` gives it the bundle plus the fwdproxy CA; without one, the simulator's CA alone. Either
    way the install works direct."""
    bench = load_bench()
    npmrc, global_npmrc = tmp_path / "npmrc", tmp_path / "global-npmrc"
    global_npmrc.write_text("")
    npmrc.write_text(
        "update-notifier=false\n" + ("cafile=/etc/ssl/certs/ca-certificates.crt\n" if npmrc_cafile else "")
    )
    npm_conf = {"npm_config_globalconfig": str(global_npmrc), "npm_config_userconfig": str(npmrc)}
    for name, value in npm_conf.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(
        "npm_config_cafile", "/nonexistent/ignored.pem"
    )  # a caller's own setting is not npm's config
    reg = bench.Registry([], ["direct-npm"], bench.SIMS["internet"])
    bench.start_registry(reg, tmp_path)
    try:
        assert reg.ca_pem is not None
        assert reg.npm_ca is not None
        sim_ca = reg.ca_pem.read_text().strip()
        given = reg.npm_ca.read_text()
        assert sim_ca in given
        if npmrc_cafile:
            assert reg.npm_ca != reg.ca_pem
            assert given.count("-----BEGIN CERTIFICATE-----") > 10  # the system bundle came with it
        else:
            assert reg.npm_ca == reg.ca_pem
        env = bench.client_env(reg, None, **npm_conf)
        assert env["npm_config_cafile"] == str(reg.npm_ca)
        project = tmp_path / "project"
        project.mkdir()
        (project / "package.json").write_text(
            '{"name": "p", "version": "1.0.0", "dependencies": {"direct-npm": "1.0.0"}}'
        )
        argv = ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock", "--fetch-retries=0",
                f"--registry={reg.base('npm')}/npm/", f"--cache={tmp_path / 'npm-cache'}"]  # fmt: skip
        out = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert (project / "node_modules" / "direct-npm" / "index.js").is_file()
    finally:
        bench.stop_registry(reg)
