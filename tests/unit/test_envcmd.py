"""`fwdproxy env`: the variables, their formats, and the CA bundle and apt.conf it writes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fwdproxy import envcmd, runtime, trust
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


def test_env_github_format(confdir: Path, proxy_ca_file: Path, capsys) -> None:
    argv = [
        "env",
        "--format",
        "github",
        "--proxy",
        PROXY,
        "--confdir",
        str(confdir),
        "--no-proxy",
        "x.internal",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"HTTP_PROXY={PROXY}\n" in out and "NO_PROXY=x.internal\n" in out
    assert "export" not in out


def test_env_rejects_a_proxy_that_is_not_a_url(confdir: Path, capsys) -> None:
    assert main(["env", "--proxy", "127.0.0.1:8080", "--confdir", str(confdir)]) == 2
    assert "not a URL" in capsys.readouterr().err


@pytest.fixture
def nobody_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty runtime directory and HOME, so no proxy is found and a CA made by mistake would show."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_env_with_no_proxy_running_says_how_to_start_one_and_makes_no_ca(
    nobody_running: Path, capsys
) -> None:
    assert main(["env"]) == 1
    err = capsys.readouterr().err
    assert "no running fwdproxy found" in err and "fwdproxy run" in err
    assert not (nobody_running / "home" / ".mitmproxy").exists()


def test_env_with_only_proxy_named_and_none_running_makes_no_ca(nobody_running: Path, capsys) -> None:
    assert main(["env", "--proxy", PROXY]) == 1
    assert "no running fwdproxy found" in capsys.readouterr().err
    assert not (nobody_running / "home" / ".mitmproxy").exists()


def test_env_with_a_confdir_that_has_no_ca_refuses(nobody_running: Path, capsys) -> None:
    empty = nobody_running / "empty-confdir"
    empty.mkdir()
    assert main(["env", "--proxy", PROXY, "--confdir", str(empty)]) == 1
    assert "mitmproxy-ca-cert.pem does not exist" in capsys.readouterr().err
    assert list(empty.iterdir()) == []  # no CA, no bundle written


def test_env_finds_the_running_proxy_by_its_runtime_file(
    nobody_running: Path, confdir: Path, proxy_ca_file: Path, capsys
) -> None:
    me = runtime.Running(
        host="127.0.0.1", port=3999, admin_port=0, confdir=str(confdir), ca=str(proxy_ca_file),
        cache_dir=str(nobody_running / "cache"), pid=os.getpid(), version="test", started=1.0,
    )  # fmt: skip
    runtime.write(me)
    assert main(["env"]) == 0
    captured = capsys.readouterr()
    values = dict(line.removeprefix("export ").split("=", 1) for line in captured.out.splitlines())
    assert values["HTTPS_PROXY"] == "http://127.0.0.1:3999"
    assert Path(values["NODE_EXTRA_CA_CERTS"]) == proxy_ca_file
    assert "fwdproxy env: using http://127.0.0.1:3999 (pid" in captured.err
    # Naming another proxy than the running one is not quietly answered with the running one's CA.
    assert main(["env", "--proxy", "http://127.0.0.1:4000"]) == 1
    assert "no running fwdproxy matches --proxy http://127.0.0.1:4000" in capsys.readouterr().err


def test_npm_cafile_only_when_npm_has_a_ca_of_its_own() -> None:
    args = (PROXY, "localhost", "/b/bundle.pem", "/b/ca.pem", "/b/apt.conf")
    without = dict(envcmd.variables(*args, npm_cafile=False))
    assert "npm_config_cafile" not in without  # Node's roots + NODE_EXTRA_CA_CERTS, nothing per connection
    assert without["NODE_EXTRA_CA_CERTS"] == "/b/ca.pem"
    assert without["npm_config_https_proxy"] == PROXY
    assert dict(envcmd.variables(*args, npm_cafile=True))["npm_config_cafile"] == "/b/bundle.pem"


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("ca=null\ncafile=null\n", False, id="npm defaults"),
        pytest.param("ca=null\ncafile=/etc/ssl/certs/ca-certificates.crt\n", True, id="npmrc cafile"),
        pytest.param('ca="-----BEGIN CERTIFICATE-----\\nMII"\ncafile=null\n', True, id="npmrc ca"),
        pytest.param("npm warn something\n", None, id="not the answer"),
        pytest.param("", None, id="nothing"),
    ],
)
def test_parse_npm_ca(text: str, expected: bool | None) -> None:
    assert envcmd.parse_npm_ca(text) is expected


@pytest.mark.skipif(not shutil.which("npm"), reason="npm is not installed")
def test_npm_has_ca_reads_npms_own_config(tmp_path: Path) -> None:
    empty, noglobal = tmp_path / "empty-npmrc", tmp_path / "global-npmrc"
    empty.write_text("")
    noglobal.write_text("")  # npm refuses one file as both the global and the user config
    withca = tmp_path / "ca-npmrc"
    withca.write_text(f"cafile={tmp_path / 'corp.pem'}\n")
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "npm_config_globalconfig": str(noglobal)}
    assert envcmd.npm_has_ca({**base, "npm_config_userconfig": str(empty)}) is False
    assert envcmd.npm_has_ca({**base, "npm_config_userconfig": str(withca)}) is True


def test_env_omits_npm_cafile_when_npm_has_none(
    confdir: Path, proxy_ca_file: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["env", "--proxy", PROXY, "--confdir", str(confdir)]
    monkeypatch.setattr(envcmd, "npm_has_ca", lambda env=None: False)
    assert main(argv) == 0
    names = [line.removeprefix("export ").split("=", 1)[0] for line in capsys.readouterr().out.splitlines()]
    assert "npm_config_cafile" not in names
    assert "NODE_EXTRA_CA_CERTS" in names
    # npm not found (installed later, e.g. by a CI step): the bundle, correct whatever npmrc it meets.
    monkeypatch.setattr(envcmd, "npm_has_ca", lambda env=None: None)
    assert main(argv) == 0
    values = dict(line.removeprefix("export ").split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert Path(values["npm_config_cafile"]) == confdir / envcmd.BUNDLE_NAME
