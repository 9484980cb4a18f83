"""Flags and the TOML config file, merged into one frozen Settings record; errors name the key."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fwdproxy import access, anonymize
from fwdproxy.balance import Algorithm, parse_cli_upstreams, parse_upstreams
from fwdproxy.units import duration_text, parse_duration, parse_size, size_text


class Kind(enum.Enum):
    """How an option's value is written and parsed."""

    STR = "str"
    OPT_STR = "optional str"
    INT = "int"
    BOOL = "bool"
    SIZE = "size"
    DURATION = "duration"
    STR_LIST = "list of str"
    INT_LIST = "list of int"
    COUNT = "count"
    """A flag that may be repeated (-vv); in TOML a number or true/false."""
    WORKERS = "workers"
    """A positive integer, or ``auto`` for one per core."""


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: a flag ``--name-with-dashes`` and a TOML key ``name_with_underscores``."""

    name: str
    kind: Kind
    help: str
    flag_only: bool = False
    """Only on the command line (e.g. --config itself)."""
    short: str | None = None
    toml: str = ""
    """The TOML key when it differs from ``name``: a dotted key inside a section, e.g. ``anonymize.level``."""
    choices: tuple[str, ...] = ()
    """The only values a STR option accepts (none: any)."""

    @property
    def key(self) -> str:
        return self.toml or self.name


# Sections of the TOML file that are tables of their own, read by the feature that owns them.
SECTIONS = ("cache", "anonymize", "upstreams", "routes")

OPTIONS: tuple[Option, ...] = (
    Option("listen_host", Kind.STR, "address to listen on"),
    Option("listen_port", Kind.INT, "port to listen on; 0 picks a free port"),
    Option("workers", Kind.WORKERS, "proxy processes sharing the port and the cache; auto: one per core"),
    Option("cache_dir", Kind.STR, "where the disk cache lives (created if missing)"),
    Option("confdir", Kind.STR, "mitmproxy's confdir, where the CA lives (shared with mitmdump)"),
    Option("config", Kind.OPT_STR, "TOML config file; flags override its values", flag_only=True),
    Option("passthrough", Kind.STR_LIST, "host glob whose CONNECT tunnels are relayed blindly (repeatable)"),
    Option("intercept", Kind.STR_LIST, "when given, only these host globs are decrypted (repeatable)"),
    Option("connect_port", Kind.INT_LIST, "a port CONNECT may reach; others get 403 (repeatable)"),
    Option("upstream_ca", Kind.OPT_STR, "extra CA bundle (PEM) trusted for origin certificates"),
    Option(
        "upstream_insecure",
        Kind.BOOL,
        "do NOT verify origin TLS certificates (anyone on the path can then feed the cache); warned on start",
    ),
    Option("upstream", Kind.STR_LIST, "upstream proxy URL[,WEIGHT] to leave through (repeatable)"),
    Option(
        "balance",
        Kind.STR,
        "how the --upstream proxies share requests",
        choices=tuple(a.value for a in Algorithm),
    ),
    Option("allow", Kind.STR_LIST, "client network allowed to use the proxy, as CIDR (repeatable)"),
    Option(
        "auth", Kind.OPT_STR, "require proxy authentication USER:PASS (Basic); also guards the admin pages"
    ),
    Option(
        "max_connections",
        Kind.INT,
        "open client connections allowed at once per process; more are closed at once (0: no limit)",
    ),
    Option("set", Kind.STR_LIST, "any mitmproxy option NAME=VALUE (repeatable)"),
    Option("quiet", Kind.BOOL, "log only warnings and errors", short="-q"),
    Option(
        "verbose",
        Kind.COUNT,
        "-v: a line per request and per tunnel decision; -vv: also connections and HTTP/2 frames",
        short="-v",
    ),
    Option("connect_timeout", Kind.DURATION, "how long an origin may take to accept a connection (then 504)"),
    Option(
        "read_timeout",
        Kind.DURATION,
        "how long an origin may send nothing: 504 before its response, the transfer cut mid-body; 0: off",
    ),
    Option(
        "dns_ttl", Kind.DURATION, "how long a DNS answer is reused (failures: 5s); 0: resolve every connect"
    ),
    Option(
        "origin_idle_timeout",
        Kind.DURATION,
        "how long an idle plain-HTTP origin connection waits in the shared pool; 0: no sharing",
    ),
    Option("origin_max_connections", Kind.INT, "shared plain-HTTP connections per origin at most; more wait"),
    Option(
        "header_timeout",
        Kind.DURATION,
        "how long a client may take to send a complete request head (then 408 and close); 0: off",
    ),
    Option(
        "shutdown_grace",
        Kind.DURATION,
        "on SIGTERM/SIGINT, how long requests in flight may take to finish (no new connections meanwhile)",
    ),
    Option("memory_cache_size", Kind.SIZE, "bytes the memory tier may hold"),
    Option("disk_cache_size", Kind.SIZE, "bytes the disk tier may hold"),
    Option("max_object_size", Kind.SIZE, "bigger responses pass through unstored"),
    Option("memory_object_max", Kind.SIZE, "bigger objects stay on disk only"),
    Option("negative_ttl", Kind.DURATION, "cap on the heuristic freshness of a 404/410"),
    Option("preset", Kind.STR_LIST, "a bundle of cache rules, e.g. ci (repeatable)"),
    Option("stream_threshold", Kind.SIZE, "bigger bodies stream to the client while they are stored"),
    Option(
        "range_fetch_whole_below", Kind.SIZE, "on a miss, fetch objects this small whole to answer a range"
    ),
    Option(
        "serve_stale_on_error",
        Kind.DURATION,
        "serve any stored entry up to this stale when the origin cannot be reached; set, also on 5xx; 0: off",
    ),
    Option("offline", Kind.BOOL, "answer only from the cache (504 on a miss); never contact an origin"),
    Option(
        "no_fast_hits",
        Kind.BOOL,
        "answer every request through mitmproxy's HTTP layer (turns off the fast hit layer for HTTP/1.1 clients)",
    ),
    Option(
        "allow_purge",
        Kind.STR_LIST,
        "client network whose PURGE requests remove entries, as CIDR (repeatable)",
    ),
    Option(
        "admin_port", Kind.INT, "port of the status page, /stats.json and /metrics on the listen host; 0: off"
    ),
    Option("access_log", Kind.OPT_STR, "write one line per request to this file (- for stderr)"),
    Option("log_format", Kind.STR, "access log format: squid or json", choices=("squid", "json")),
    Option(
        "anonymize",
        Kind.STR,
        "off, standard (drop client addresses and proxy-chain headers) or strict (also one User-Agent)",
        toml="anonymize.level",
        choices=tuple(lv.value for lv in anonymize.Level),
    ),
)
_BY_NAME = {o.name: o for o in OPTIONS}


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "fwdproxy")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `fwdproxy run` was asked to do, after flags, file and defaults were merged."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    workers: int = 1
    """One process unless asked: the memory tier and collapsing are per process (see fwdproxy.workers)."""
    cache_dir: str = field(default_factory=_default_cache_dir)
    confdir: str = "~/.mitmproxy"
    config: str | None = None
    passthrough: tuple[str, ...] = ()
    intercept: tuple[str, ...] = ()
    connect_port: tuple[int, ...] = (443,)
    """443 only by default, like Squid's SSL_ports: CONNECT to anything else is how proxies get abused."""
    upstream_ca: str | None = None
    upstream: tuple[str, ...] = ()
    """No upstream proxy by default: traffic leaves directly unless [upstreams.*]/[[routes]] say otherwise."""
    balance: str = "round-robin"
    """Members in turn: predictable, and fair when the proxies are alike (issue 6)."""
    allow: tuple[str, ...] = access.LOOPBACK
    auth: str | None = None
    max_connections: int = 1024
    """Per process: two descriptors each (client and origin side) against the usual soft limit of 1024 files;
    ample for a team, and a ceiling for a request that loops back through the proxy (issue 16)."""
    set: tuple[str, ...] = ()
    quiet: bool = False
    verbose: int = 0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    dns_ttl: float = 60.0
    """The OS resolver does not say a record's TTL; a minute follows a moved origin soon enough while a burst
    of requests to one name makes one lookup (issue 17)."""
    origin_idle_timeout: float = 60.0
    """nginx closes idle client connections after 75 s and most origins sooner: a minute keeps the warm set."""
    origin_max_connections: int = 16
    """Browsers use 6 per host; a cache serving many clients needs more, but one proxy should not open hundreds."""
    header_timeout: float = 30.0
    """Apache's RequestReadTimeout allows 20-40 s for a head, nginx's client_header_timeout 60 s: half a
    minute is far more than any real client needs, and bounds what a slowloris client can hold."""
    shutdown_grace: float = 10.0
    """Long enough for most downloads in flight to end, short enough for a service manager's stop timeout
    (systemd's default is 90 s; Kubernetes' terminationGracePeriodSeconds is 30 s)."""
    upstream_insecure: bool = False
    """Squid's read_timeout default is 15 minutes, nginx's proxy_read_timeout 60 s: a minute of silence is
    already far past any healthy origin, yet long enough for slow generated pages and big uploads."""
    memory_cache_size: int = 256 * 1024**2
    disk_cache_size: int = 10 * 1024**3
    max_object_size: int = 1024**3
    memory_object_max: int = 1024**2
    negative_ttl: float = 60.0
    """A 404 cached heuristically for at most a minute, so a package published a minute later is seen."""
    preset: tuple[str, ...] = ()
    stream_threshold: int = 1024**2
    """Above 1 MiB a body is not held in memory: it streams to the client and to disk as it arrives."""
    range_fetch_whole_below: int = 0
    serve_stale_on_error: float = 86400.0
    """A day: when the origin cannot be reached at all, an entry up to a day stale beats an error (RFC 9111
    §4.2.4). Left at the default it does not cover 5xx answers (those need the response's stale-if-error);
    set explicitly, it does; 0 turns it off."""
    offline: bool = False
    no_fast_hits: bool = False
    """Memory hits of HTTP/1.1 clients are answered below mitmproxy's HTTP layer unless this is set (issue 21)."""
    allow_purge: tuple[str, ...] = access.LOOPBACK
    """PURGE empties entries for everyone, so like Squid only the local machine may send it by default."""
    admin_port: int = 8081
    """Next to the usual 8080; bound to the listen host, so loopback-only unless the proxy is exposed."""
    access_log: str | None = None
    log_format: str = "squid"
    """Squid's native format, so existing log tools (calamaris, goaccess --log-format=SQUID) read it."""
    anonymize: str = "standard"
    """A forward proxy that tells every origin its clients' addresses is not doing its job (issue 5)."""
    sections: Mapping[str, Any] = field(default_factory=dict)
    """The TOML file's own tables ([cache], [anonymize], [upstreams.*], [[routes]]), as read."""
    explicit: frozenset[str] = frozenset()
    """Names of the options that a flag or the file set (the rest are defaults)."""
    worker: int = 0
    """Which of the --workers processes this one is (1-based); 0 in a single process. Set by the
    supervisor (fwdproxy.workers), never by a flag or the file."""
    worker_run: str = ""
    """Names the --workers run this worker belongs to (the supervisor's pid): where the workers' counters
    meet (fwdproxy.workerstats)."""


def _convert(opt: Option, value: Any, where: str) -> Any:
    """Check and convert one value; ValueError names where it came from."""

    def fail(expect: str) -> ValueError:
        return ValueError(f"{where}: {value!r} is not {expect}")

    match opt.kind:
        case Kind.STR:
            if not isinstance(value, str):
                raise fail("a string")
            if opt.choices and value not in opt.choices:
                raise fail(f"one of {', '.join(opt.choices)}")
            return value
        case Kind.OPT_STR:
            if value is not None and not isinstance(value, str):
                raise fail("a string")
            return value or None
        case Kind.INT:
            if isinstance(value, bool):
                raise fail("an integer")
            try:
                n = int(value)
            except (TypeError, ValueError):
                raise fail("an integer") from None
            if n < 0:
                raise fail("a non-negative integer")
            return n
        case Kind.BOOL:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise fail("true or false")
        case Kind.SIZE:
            try:
                return parse_size(value)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        case Kind.DURATION:
            try:
                return parse_duration(value)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        case Kind.COUNT:
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, int) and value >= 0:
                return value
            raise fail("true, false or a number of -v")
        case Kind.STR_LIST:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise fail("a list of strings")
            return tuple(items)
        case Kind.WORKERS:
            from fwdproxy.workers import worker_count

            try:
                return worker_count(value, os.cpu_count())
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        case Kind.INT_LIST:
            items = [value] if isinstance(value, int | str) else value
            if not isinstance(items, list | tuple):
                raise fail("a list of integers")
            try:
                ports = tuple(int(i) for i in items if not isinstance(i, bool))
            except (TypeError, ValueError):
                raise fail("a list of integers") from None
            if len(ports) != len(items) or any(not 0 < p < 65536 for p in ports):
                raise fail("a list of port numbers (1-65535)")
            return ports


def read_toml(path: str) -> dict[str, Any]:
    """The config file as a dict; ValueError says what is wrong and where."""
    try:
        with open(os.path.expanduser(path), "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--config {path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ValueError(f"--config {path}: cannot read it: {e.strerror}") from None


def from_file_and_flags(
    flags: Mapping[str, Any], validators: Sequence[Callable[[Settings], None]] = ()
) -> Settings:
    """Merge defaults < TOML file < flags. ``flags`` holds only the options given on the command line."""
    values: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    config_path = flags.get("config")
    if config_path:
        for key, value in read_toml(config_path).items():
            name = key.replace("-", "_")
            if name in SECTIONS:
                sections[name] = value
                continue
            opt = _BY_NAME.get(name)
            if opt is None or opt.flag_only or opt.toml:
                known = ", ".join(sorted([o.name for o in OPTIONS if not o.flag_only] + list(SECTIONS)))
                raise ValueError(f"{config_path}: unknown key {key!r}; known keys: {known}")
            values[name] = _convert(opt, value, f"{config_path}: {key}")
    for opt in OPTIONS:
        section, dot, key = opt.key.partition(".")
        if dot and isinstance(sections.get(section), dict) and key in sections[section]:
            values[opt.name] = _convert(opt, sections[section][key], f"{config_path}: {opt.key}")
    for name, value in flags.items():
        opt = _BY_NAME[name]
        values[name] = _convert(opt, value, "--" + name.replace("_", "-"))
    settings = Settings(**values, sections=sections, explicit=frozenset(values))
    check(settings)
    for validate in validators:
        validate(settings)
    return settings


def check(s: Settings) -> None:
    """Cross-field checks that no single value shows."""
    access.parse_networks(s.allow)
    access.parse_networks(s.allow_purge)
    if s.admin_port > 65535:
        raise ValueError(f"--admin-port {s.admin_port} is not a port; use 1-65535, or 0 to turn it off")
    if s.auth:
        access.Credentials.parse(s.auth)
    access.check_exposure(s.listen_host, "allow" in s.explicit, bool(s.auth))
    for item in s.set:
        if "=" not in item:
            raise ValueError(f"--set {item!r} is not NAME=VALUE; try e.g. --set http2=false")
    # The anonymize addon parses this table again; checking it here stops a bad rule before the start.
    if "anonymize" in s.sections:
        table = s.sections["anonymize"]
        if not isinstance(table, dict):
            raise ValueError(
                f'{s.config}: anonymize: {table!r} is not a table; write [anonymize] level = "strict"'
            )
        try:
            anonymize.parse_anonymize(table)
        except ValueError as e:
            raise ValueError(f"{s.config}: {e}") from None
    # The egress addon builds these again; a bad member or route must stop the start, naming its key.
    try:
        cli = parse_cli_upstreams(s.upstream, s.balance)
    except ValueError as e:
        raise ValueError(f"--upstream {e}") from None
    if "upstreams" in s.sections or "routes" in s.sections:
        try:
            parse_upstreams(
                s.sections.get("upstreams", {}), s.sections.get("routes", []), extra_groups=cli.groups
            )
        except ValueError as e:
            raise ValueError(f"{s.config}: {e}") from None


def default_text(opt: Option, defaults: Settings) -> str:
    """An option's default as a user writes it (``256MiB``, ``10s``, ``127.0.0.1/32, ::1/128``); "" for none."""
    value = getattr(defaults, opt.name)
    if value is None or value is False or value == () or value == "":
        return ""
    match opt.kind:
        case Kind.SIZE:
            return size_text(value)
        case Kind.DURATION:
            return duration_text(value)
        case Kind.BOOL | Kind.COUNT:
            return "" if not value else str(value)
        case _:
            return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare one flag per option; defaults are left out so we can tell what was given."""
    defaults = Settings()
    for opt in OPTIONS:
        names = ["--" + opt.name.replace("_", "-")] + ([opt.short] if opt.short else [])
        help_text = f"{opt.help} (default: {shown})" if (shown := default_text(opt, defaults)) else opt.help
        kwargs: dict[str, Any] = {"dest": opt.name, "default": argparse.SUPPRESS, "help": help_text}
        if opt.kind is Kind.BOOL:
            parser.add_argument(*names, action="store_true", **kwargs)
        elif opt.kind is Kind.COUNT:
            parser.add_argument(*names, action="count", **kwargs)
        elif opt.kind in (Kind.STR_LIST, Kind.INT_LIST):
            parser.add_argument(*names, action="append", metavar=opt.name.upper(), **kwargs)
        else:
            parser.add_argument(*names, metavar=opt.name.upper(), **kwargs)


def settings_from_args(ns: argparse.Namespace) -> Settings:
    """Settings from parsed flags (only those present) plus the file they name."""
    given = {o.name: getattr(ns, o.name) for o in OPTIONS if hasattr(ns, o.name)}
    return from_file_and_flags(given)


def as_dict(s: Settings) -> dict[str, Any]:
    """A plain dict of every option's value (for logs and tests)."""
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
