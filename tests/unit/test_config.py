"""Config: flags + TOML merged into Settings; every error names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwdproxy import config
from fwdproxy.cli import parser


def settings(argv: list[str]) -> config.Settings:
    return config.settings_from_args(parser().parse_args(["run", *argv]))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fwdproxy.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    s = settings([])
    assert (s.listen_host, s.listen_port, s.connect_port) == ("127.0.0.1", 8080, (443,))
    assert s.allow == ("127.0.0.0/8", "::1/128")
    assert s.memory_cache_size == 256 * 1024**2 and s.disk_cache_size == 10 * 1024**3
    assert s.cache_dir.endswith("fwdproxy") and s.confdir == "~/.mitmproxy"


def test_flags_parse_and_repeat() -> None:
    s = settings(
        [
            "--listen-port",
            "0",
            "--passthrough",
            "*.bank.com",
            "--passthrough",
            "x.org",
            "--connect-port",
            "8443",
        ]
        + ["--memory-cache-size", "64MiB", "--negative-ttl", "2m", "-q"]
    )
    assert s.listen_port == 0
    assert s.passthrough == ("*.bank.com", "x.org")
    assert s.connect_port == (8443,)
    assert s.memory_cache_size == 64 * 1024**2
    assert s.negative_ttl == 120
    assert s.quiet is True


def test_file_values_and_flags_override(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'listen_port = 3128\nintercept = ["*.pypi.org"]\ndisk-cache-size = "1GiB"\n'
        '[anonymize]\nlevel = "strict"\n[[cache.rule]]\nmatch = "x"\nimmutable = true\n',
    )
    s = settings(["--config", path, "--listen-port", "9000"])
    assert s.listen_port == 9000
    assert s.intercept == ("*.pypi.org",)
    assert s.disk_cache_size == 1024**3
    assert s.sections["anonymize"] == {"level": "strict"}
    assert s.anonymize == "strict"
    assert settings(["--config", path, "--anonymize", "off"]).anonymize == "off"
    assert s.sections["cache"]["rule"][0]["immutable"] is True
    assert s.explicit >= {"listen_port", "intercept", "disk_cache_size", "config"}


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param("listen_prot = 1\n", "unknown key 'listen_prot'", id="unknown key"),
        pytest.param('listen_port = "abc"\n', "listen_port: 'abc' is not an integer", id="bad int"),
        pytest.param(
            'memory_cache_size = "lots"\n', "memory_cache_size: 'lots' is not a size", id="bad size"
        ),
        pytest.param(
            "connect_port = [443, 70000]\n", "connect_port: [443, 70000] is not a list of port", id="bad port"
        ),
        pytest.param("passthrough = [1]\n", "passthrough: [1] is not a list of strings", id="bad list"),
        pytest.param("quiet = 3\n", "quiet: 3 is not true or false", id="bad bool"),
        pytest.param("allow = ['10.0.0.0/33']\n", "'10.0.0.0/33' is not an address or CIDR", id="bad cidr"),
        pytest.param("config = 'x'\n", "unknown key 'config'", id="config is a flag only"),
        pytest.param("listen_port = \n", "not valid TOML", id="not toml"),
        pytest.param(
            '[anonymize]\nlevel = "max"\n',
            "anonymize.level: 'max' is not one of off, standard, strict",
            id="bad anonymize level",
        ),
        pytest.param(
            'anonymize = "strict"\n', "anonymize: 'strict' is not a table", id="anonymize not a table"
        ),
        pytest.param(
            '[anonymize]\nremove = "X-Debug"\n',
            "anonymize.remove: 'X-Debug' is not a list of header names",
            id="bad anonymize rule",
        ),
    ],
)
def test_file_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        settings(["--config", write(tmp_path, text)])


def test_missing_file() -> None:
    with pytest.raises(ValueError, match="no such file"):
        settings(["--config", "/nonexistent/fwdproxy.toml"])


def test_flag_errors_name_the_flag() -> None:
    with pytest.raises(ValueError, match="--disk-cache-size: 'ten' is not a size"):
        settings(["--disk-cache-size", "ten"])
    with pytest.raises(ValueError, match="--set 'http2' is not NAME=VALUE"):
        settings(["--set", "http2"])
    with pytest.raises(ValueError, match="is not USER:PASS"):
        settings(["--auth", "nopassword"])
    with pytest.raises(ValueError, match="--anonymize: 'max' is not one of off, standard, strict"):
        settings(["--anonymize", "max"])


@pytest.mark.parametrize(
    "argv, ok",
    [
        pytest.param(["--listen-host", "0.0.0.0"], False, id="public alone refused"),
        pytest.param(["--listen-host", "0.0.0.0", "--allow", "10.0.0.0/8"], True, id="public with allow"),
        pytest.param(["--listen-host", "::", "--auth", "u:p"], True, id="public with auth"),
        pytest.param(["--listen-host", "localhost"], True, id="localhost"),
        pytest.param(["--listen-host", "127.0.0.5"], True, id="loopback"),
    ],
)
def test_open_relay_refused(argv: list[str], ok: bool) -> None:
    if ok:
        settings(argv)
    else:
        with pytest.raises(ValueError, match="open relay"):
            settings(argv)


def test_every_option_is_a_settings_field() -> None:
    # sections and explicit come from parsing; worker and worker_run are set by the --workers supervisor.
    fields = set(config.Settings.__dataclass_fields__) - {"sections", "explicit", "worker", "worker_run"}
    assert fields == {o.name for o in config.OPTIONS}
