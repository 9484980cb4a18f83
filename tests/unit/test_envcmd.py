"""`fwdproxy env`: the variables, their formats, and the CA bundle and apt.conf it writes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fwdproxy import envcmd, trust
from fwdproxy.cli import main

PROXY = "http://127.0.0.1:3128"

REQUIRED = {
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CARGO_HTTP_CAINFO",
    "GIT_SSL_CAINFO",
    "NODE_USE_ENV_PROXY",
    "npm_config_proxy",
    "npm_config_https_proxy",
    "npm_config_cafile",
}


def pairs() -> dict[str, str]:
    return dict(envcmd.variables(PROXY, "localhost", "/b/bundle.pem", "/b/ca.pem", "/b/apt.conf"))


def test_every_variable_the_issue_names_is_set() -> None:
    names = pairs()
    assert REQUIRED <= set(names)
    assert names["NODE_USE_ENV_PROXY"] == "1"
    assert names["NODE_EXTRA_CA_CERTS"] == "/b/ca.pem"  # Node adds it to its own roots: the CA alone suffices
    bundle_users = {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "CURL_CA_BUNDLE", "CARGO_HTTP_CAINFO"}
    assert {names[n] for n in bundle_users | {"GIT_SSL_CAINFO", "npm_config_cafile"}} == {"/b/bundle.pem"}
    assert {names[n] for n in ("HTTP_PROXY", "https_proxy", "npm_config_https_proxy")} == {PROXY}


@pytest.mark.parametrize(
    "fmt, expected",
    [
        pytest.param(envcmd.Format.SH, "export A='x y'\nexport B=plain\n", id="sh quotes for eval"),
        pytest.param(envcmd.Format.GITHUB, "A=x y\nB=plain\n", id="github NAME=value"),
    ],
)
def test_render(fmt: envcmd.Format, expected: str) -> None:
    assert envcmd.render([("A", "x y"), ("B", "plain")], fmt) == expected


def test_github_format_refuses_newlines() -> None:
    with pytest.raises(ValueError, match="newline"):
        envcmd.render([("A", "x\ny")], envcmd.Format.GITHUB)


def test_sh_output_survives_eval() -> None:
    text = envcmd.render([("A", "it's $HOME; `x`")], envcmd.Format.SH)
    out = subprocess.run(
        ["sh", "-c", 'eval "$1"; printf %s "$A"', "sh", text], capture_output=True, text=True
    )
    assert out.stdout == "it's $HOME; `x`"


def test_apt_conf_points_apt_at_the_proxy() -> None:
    conf = envcmd.apt_conf(PROXY, "/b/bundle.pem")
    assert f'Acquire::http::Proxy "{PROXY}";' in conf
    assert 'Acquire::https::CaInfo "/b/bundle.pem";' in conf


def test_env_command_writes_a_bundle_of_system_roots_and_our_ca(
    confdir: Path, proxy_ca_file: Path, capsys
) -> None:
    assert main(["env", "--proxy", PROXY + "/", "--confdir", str(confdir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    values = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    assert values["HTTPS_PROXY"] == PROXY  # trailing slash dropped
    bundle = Path(values["SSL_CERT_FILE"])
    assert bundle == confdir / envcmd.BUNDLE_NAME
    text = bundle.read_text()
    assert proxy_ca_file.read_text().strip() in text
    system = trust.system_ca_bundle()
    if system:
        assert text.count("BEGIN CERTIFICATE") > 1
    assert Path(values["NODE_EXTRA_CA_CERTS"]) == proxy_ca_file
    assert Path(values["APT_CONFIG"]).read_text() == envcmd.apt_conf(PROXY, str(bundle))


def test_env_github_format(confdir: Path, capsys) -> None:
    assert main(["env", "--format", "github", "--confdir", str(confdir), "--no-proxy", "x.internal"]) == 0
    out = capsys.readouterr().out
    assert "HTTP_PROXY=http://127.0.0.1:8080\n" in out and "NO_PROXY=x.internal\n" in out
    assert "export" not in out


def test_env_rejects_a_proxy_that_is_not_a_url(confdir: Path, capsys) -> None:
    assert main(["env", "--proxy", "127.0.0.1:8080", "--confdir", str(confdir)]) == 2
    assert "not a URL" in capsys.readouterr().err
