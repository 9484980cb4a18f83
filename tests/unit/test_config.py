"""Config: flags + TOML merged into Settings; every error names the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fwdproxy import cache, config, options
from fwdproxy.anonymize import Level
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


def test_every_option_is_a_settings_field_with_the_tables_default() -> None:
    # sections, explicit and resolved come from parsing, not from the options table.
    fields = set(config.Settings.__dataclass_fields__) - {"sections", "explicit", "resolved"}
    assert fields == {o.name for o in config.OPTIONS}
    defaults = config.Settings()
    for opt in config.OPTIONS:
        assert getattr(defaults, opt.name) == opt.default_value(), opt.name


def test_log_format_choices_are_the_access_logs_formats() -> None:
    from fwdproxy.accesslog import LogFormat

    assert options.BY_NAME["log_format"].choices == tuple(f.value for f in LogFormat)


def test_file_tables_become_typed_records_before_the_start(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[cache.rule]]\nmatch = "*.whl"\nimmutable = true\n'
        '[upstreams.corp]\nmembers = [{ url = "http://u:p@10.0.0.5:3128" }]\n'
        '[[routes]]\nmatch = "*.corp"\nupstream = "corp"\n'
        '[anonymize]\nremove = ["X-Debug"]\n',
    )
    s = settings(["--config", path, "--preset", "ci", "--anonymize", "strict"])
    assert s.resolved is not None
    assert s.resolved.rules[0].pattern == "*.whl" and s.resolved.rules[0].immutable
    assert s.resolved.rules[1:] == cache.PRESETS["ci"]
    assert [g.name for g in s.resolved.egress.groups] == ["corp"]
    assert s.resolved.egress.routes[0].upstream == "corp"
    assert s.resolved.upstream_auth == {
        ("10.0.0.5", 3128): s.resolved.egress.groups[0].members[0].proxy_authorization
    }
    assert s.resolved.anonymize.remove == ("X-Debug",) and s.resolved.anonymize.level is Level.STRICT


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param('[[cache.rule]]\nmatch = "x"\nmax_ttl = "soon"\n', "cache.rule[0].max_ttl", id="rule"),
        pytest.param("[cache]\nother = 1\n", "[cache] holds only [[cache.rule]] tables", id="cache table"),
        pytest.param(
            '[[routes]]\nmatch = "*"\nupstream = "nope"\n',
            "routes[0].upstream: 'nope' is not a group",
            id="route",
        ),
    ],
)
def test_bad_tables_stop_the_start(tmp_path: Path, text: str, message: str) -> None:
    # Cache rules used to be checked only when the cache addon loaded; now with every other table.
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
        settings(["--config", path])


def test_unknown_preset_names_the_flag() -> None:
    with pytest.raises(ValueError, match="--preset: preset 'nope' is unknown; known presets: ci"):
        settings(["--preset", "nope"])


def test_file_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'listen_port = 3128\n[[cache.rule]]\nmatch = "x"\nimmutable = true\n')
    reads: list[str] = []
    real = config.read_toml
    monkeypatch.setattr(config, "read_toml", lambda p, where="": reads.append(p) or real(p, where))
    s = settings(["--config", path])
    assert reads == [path] and s.resolved is not None and len(s.resolved.rules) == 1


# -- mitmproxy options (mitmdump -s addons/fwdproxy.py --set fwd_...) use the same table -------------------


def test_mitm_values_are_parsed_with_the_table() -> None:
    s = config.from_mitm(
        config.Settings(),
        {
            "fwd_read_timeout": "90",
            "fwd_memory_cache_size": "64MiB",
            "fwd_connect_ports": ["443", "8443"],
            "fwd_upstream_ca": "",
            "fwd_serve_stale_on_error": "1d",
        },
    )
    assert (s.read_timeout, s.memory_cache_size, s.connect_port) == (90.0, 64 * 1024**2, (443, 8443))
    assert s.upstream_ca is None
    assert s.explicit == {
        "read_timeout",
        "memory_cache_size",
        "connect_port",
        "upstream_ca",
        "serve_stale_on_error",
    }


@pytest.mark.parametrize(
    "values, message",
    [
        pytest.param({"fwd_read_timeout": "abc"}, "fwd_read_timeout: 'abc' is not a duration", id="duration"),
        pytest.param(
            {"fwd_connect_ports": ["x"]}, "fwd_connect_ports: ['x'] is not a list of integers", id="port"
        ),
        pytest.param({"fwd_allow_purge": ["nope"]}, "fwd_allow_purge: 'nope' is not", id="cidr"),
        pytest.param({"fwd_admin_port": 70000}, "fwd_admin_port 70000 is not a port", id="admin port"),
        pytest.param({"fwd_preset": ["nope"]}, "fwd_preset: preset 'nope' is unknown", id="preset"),
        pytest.param({"fwd_upstreams": ["10.0.0.1:3128"]}, "fwd_upstreams: .*not a proxy URL", id="upstream"),
    ],
)
def test_mitm_errors_name_the_mitmproxy_option(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.from_mitm(config.Settings(), values)


def test_mitm_defaults_parse_back_to_the_defaults() -> None:
    # What mitmproxy holds by default is the table's default written as text: it parses back to itself.
    given = {o.mitm_name: options.mitm_default(o) for o in options.OPTIONS if o.ours}
    parsed = options.parse_mitm(given)
    for opt in options.OPTIONS:
        if opt.ours:
            assert parsed[opt.name] == opt.default_value(), opt.name


def test_mitm_config_file_tables(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen_port = 1\n[[cache.rule]]\nmatch = "x"\nimmutable = true\n')
    s = config.from_mitm(config.Settings(), {"fwd_config": path})
    assert s.resolved is not None and len(s.resolved.rules) == 1
    assert s.listen_port == 8080  # under mitmdump the file gives only its tables
    with pytest.raises(ValueError, match=r"fwd_config: .*: cache.rule\[0\]"):
        config.from_mitm(config.Settings(), {"fwd_config": write(tmp_path, "[[cache.rule]]\nnope = 1\n")})


def test_library_defaults_agree_with_the_options_table() -> None:
    # These classes keep a default of their own (for use without the proxy); it must be the table's.
    from fwdproxy import dnscache, originpool
    from fwdproxy.cache import CacheConfig

    assert CacheConfig().negative_ttl == options.BY_NAME["negative_ttl"].default
    assert dnscache.DEFAULT_TTL == options.BY_NAME["dns_ttl"].default
    assert originpool.DEFAULT_IDLE_TIMEOUT == options.BY_NAME["origin_idle_timeout"].default
    assert originpool.DEFAULT_MAX_PER_ORIGIN == options.BY_NAME["origin_max_connections"].default
