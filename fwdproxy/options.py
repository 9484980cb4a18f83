"""The options table: each setting once, with its flag, TOML key, mitmproxy option, type, default and help.

The argparse flags (fwdproxy.config), the addons' ``loader.add_option`` calls (addons/_settings.py) and the
README's two options tables (fwdproxy/optiondocs.py, checked by tests/unit/test_readme.py) are all derived from it.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fwdproxy import access, anonymize
from fwdproxy.balance import Algorithm
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


_SAME = "="
"""For ``toml``/``mitm``: derived from the name (the TOML key is the name, the mitmproxy option ``fwd_<name>``)."""


@dataclass(frozen=True, slots=True)
class Option:
    """One setting. Its flag is ``--name-with-dashes`` unless ``flag`` is false."""

    name: str
    """The Settings field (fwdproxy.config.Settings)."""
    kind: Kind
    default: Any
    """The typed default, in Settings' terms (seconds, bytes, tuples); a callable is called for each Settings."""
    help: str
    """One line for ``--help`` and mitmproxy's option list."""
    doc: str = ""
    """The README's longer wording ("" : the help)."""
    flag: bool = True
    """False for the few options only mitmproxy has (set by ``fwdproxy run`` itself, or by hand in mitmdump)."""
    short: str | None = None
    metavar: str = ""
    toml: str | None = _SAME
    """The TOML key: the name, a dotted key inside a section (``anonymize.level``), or None (flag only)."""
    mitm: str | None = _SAME
    """The mitmproxy option: ``fwd_<name>``, another name, mitmproxy's own (``listen_host``), or None."""
    choices: tuple[str, ...] = ()
    """The only values a STR option accepts (none: any)."""
    shown: str = ""
    """The README's default cell when the value alone says too little (``all``, ``none (direct)``)."""
    mitm_note: str = ""
    """The README's mitmdump-table cell, for an option without a flag or whose mapping needs a word."""

    @property
    def key(self) -> str:
        """The TOML key ("" when the file cannot set it)."""
        return "" if self.toml is None else self.name if self.toml == _SAME else self.toml

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-") if self.flag else ""

    @property
    def mitm_name(self) -> str:
        """The mitmproxy option's name ("" when there is none)."""
        return "" if self.mitm is None else "fwd_" + self.name if self.mitm == _SAME else self.mitm

    @property
    def ours(self) -> bool:
        """Whether our addons declare the mitmproxy option (``fwd_*``), rather than mitmproxy itself."""
        return self.mitm_name.startswith("fwd_")

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "fwdproxy")


# Defaults: each is written here once; Settings, the flags' help, mitmproxy's options and the README take it.
OPTIONS: tuple[Option, ...] = (
    Option(
        "listen_host",
        Kind.STR,
        "127.0.0.1",
        "address to listen on",
        "address to listen on; a non-loopback address needs `--allow` or `--auth`",
        metavar="HOST",
        mitm="listen_host",
    ),
    Option(
        "listen_port",
        Kind.INT,
        8080,
        "port to listen on; 0 picks a free port",
        "port; `0` picks a free one. Once listening, stdout gets `fwdproxy listening at HOST:PORT`",
        metavar="PORT",
        mitm="listen_port",
    ),
    # One process unless asked: the memory tier and collapsing are per process (see fwdproxy.workers).
    Option(
        "workers",
        Kind.WORKERS,
        1,
        "proxy processes sharing the port and the cache; auto: one per core",
        "proxy processes sharing the port and the cache; `auto` = one per core (see [Workers](#workers))",
        metavar="N",
        mitm=None,
    ),
    # uvloop when it is installed: the same asyncio API on libuv, a third less CPU per fast hit (fwdproxy.loops).
    Option(
        "event_loop",
        Kind.STR,
        "auto",
        "the event loop of `fwdproxy run`: uvloop, asyncio, or auto (uvloop when installed)",
        "the event loop of `fwdproxy run` and its workers: `uvloop`, `asyncio`, or `auto` (uvloop when it is "
        "installed; see [Event loop](#event-loop)); under `mitmdump -s` mitmdump's own loop runs",
        metavar="KIND",
        mitm=None,
        choices=("auto", "uvloop", "asyncio"),
    ),
    Option(
        "cache_dir",
        Kind.STR,
        _default_cache_dir,
        "where the disk cache lives (created if missing)",
        "the disk cache (created if missing)",
        metavar="DIR",
        shown="`~/.cache/fwdproxy`",
    ),
    Option(
        "confdir",
        Kind.STR,
        "~/.mitmproxy",
        "mitmproxy's confdir, where the CA lives (shared with mitmdump)",
        "mitmproxy's confdir, where the CA lives",
        metavar="DIR",
        mitm="confdir",
    ),
    Option(
        "config",
        Kind.OPT_STR,
        None,
        "TOML config file; flags override its values",
        "TOML config file",
        metavar="FILE",
        toml=None,
        mitm_note="`--config` (its `[[cache.rule]]`, `[upstreams.*]` and `[[routes]]` tables)",
    ),
    Option(
        "passthrough",
        Kind.STR_LIST,
        (),
        "host glob whose CONNECT tunnels are relayed blindly (repeatable)",
        "host whose CONNECT tunnels are relayed blindly (repeatable)",
        metavar="GLOB",
    ),
    Option(
        "intercept",
        Kind.STR_LIST,
        (),
        "when given, only these host globs are decrypted (repeatable)",
        "when given, only these hosts are decrypted; every other tunnel passes through (repeatable)",
        metavar="GLOB",
        shown="all",
    ),
    # 443 only by default, like Squid's SSL_ports: CONNECT to anything else is how proxies get abused.
    Option(
        "connect_port",
        Kind.INT_LIST,
        (443,),
        "a port CONNECT may reach; others get 403 (repeatable)",
        "the only ports CONNECT may reach; others get 403 (repeatable)",
        metavar="PORT",
        mitm="fwd_connect_ports",
    ),
    Option(
        "upstream_ca",
        Kind.OPT_STR,
        None,
        "extra CA bundle (PEM) trusted for origin certificates",
        "extra CA bundle trusted for origin certificates, beside the OS store",
        metavar="FILE",
    ),
    Option(
        "upstream_insecure",
        Kind.BOOL,
        False,
        "do NOT verify origin TLS certificates (anyone on the path can then feed the cache); warned on start",
        "do **not** verify origin certificates (anyone between the proxy and an origin can then feed the "
        "cache); a warning on every start",
    ),
    # No upstream proxy by default: traffic leaves directly unless [upstreams.*]/[[routes]] say otherwise.
    Option(
        "upstream",
        Kind.STR_LIST,
        (),
        "upstream proxy URL[,WEIGHT] to leave through (repeatable)",
        "leave through this proxy, e.g. `http://user:pw@10.0.0.5:3128,2` (repeatable; see "
        "[Upstream proxies](#upstream-proxies))",
        metavar="URL[,WEIGHT]",
        mitm="fwd_upstreams",
        shown="none (direct)",
    ),
    # Members in turn: predictable, and fair when the proxies are alike (issue 6).
    Option(
        "balance",
        Kind.STR,
        Algorithm.ROUND_ROBIN.value,
        "how the --upstream proxies share requests",
        "how the `--upstream` proxies share requests: " + ", ".join(f"`{a.value}`" for a in Algorithm),
        metavar="ALGORITHM",
        choices=tuple(a.value for a in Algorithm),
    ),
    Option(
        "allow",
        Kind.STR_LIST,
        access.LOOPBACK,
        "client network allowed to use the proxy, as CIDR (repeatable)",
        "client networks allowed to use the proxy; others get 403 (repeatable)",
        metavar="CIDR",
        shown="`127.0.0.0/8`, `::1`",
    ),
    Option(
        "auth",
        Kind.OPT_STR,
        None,
        "require proxy authentication USER:PASS (Basic); also guards the admin pages",
        "require proxy authentication (Basic); 407 otherwise. The admin port asks for the same user (401)",
        metavar="USER:PASS",
    ),
    # Per process: two descriptors each (client and origin side) against the usual soft limit of 1024
    # files; ample for a team, and a ceiling for a request that loops back through the proxy (issue 16).
    Option(
        "max_connections",
        Kind.INT,
        1024,
        "open client connections allowed at once per process; more are closed at once (0: no limit)",
        "open client connections allowed at once, per process; one more is closed as soon as it is accepted "
        "(logged, at most a line a second); `0`: no limit",
        metavar="N",
    ),
    Option(
        "connect_timeout",
        Kind.DURATION,
        10.0,
        "how long an origin may take to accept a connection (then 504)",
        "how long an origin may take to accept a connection; then 504",
    ),
    # Squid's read_timeout default is 15 minutes, nginx's proxy_read_timeout 60 s: a minute of silence is
    # already far past any healthy origin, yet long enough for slow generated pages and big uploads.
    Option(
        "read_timeout",
        Kind.DURATION,
        60.0,
        "how long an origin may send nothing: 504 before its response, the transfer cut mid-body; 0: off",
        "how long an origin may send nothing: a `504` if its response has not started, else the transfer is "
        "cut (the client sees it end early); `0` turns it off",
    ),
    # The OS resolver does not say a record's TTL; a minute follows a moved origin soon enough while a
    # burst of requests to one name makes one lookup (issue 17).
    Option(
        "dns_ttl",
        Kind.DURATION,
        60.0,
        "how long a DNS answer is reused (failures: 5s); 0: resolve every connect",
        "how long a DNS answer is reused (a failed lookup: `5s`); lookups of one name in flight at once "
        "share one resolver call; `0`: resolve for every connection",
    ),
    # nginx closes idle client connections after 75 s and most origins sooner: a minute keeps the warm set.
    Option(
        "origin_idle_timeout",
        Kind.DURATION,
        60.0,
        "how long an idle origin connection waits in the shared pool; 0: no sharing",
        "how long an idle origin connection (HTTP, HTTPS, via an upstream) waits in the pool shared by all "
        "clients; `0`: no sharing (see [Origin connections](#origin-connections))",
    ),
    # Browsers use 6 per host; a cache serving many clients needs more, but one proxy should not open hundreds.
    Option(
        "origin_max_connections",
        Kind.INT,
        16,
        "shared connections per origin at most; more wait",
        "pooled connections per origin at most (busy and idle); further requests wait for one",
        metavar="N",
    ),
    # Apache's RequestReadTimeout allows 20-40 s for a head, nginx's client_header_timeout 60 s: half a
    # minute is far more than any real client needs, and bounds what a slowloris client can hold.
    Option(
        "header_timeout",
        Kind.DURATION,
        30.0,
        "how long a client may take to send a complete request head (then 408 and close); 0: off",
        "how long a client may take to send a complete request head (from connecting, or from the first byte "
        "of a later request on a kept-alive connection): then `408` and close. A connection that sends "
        "nothing, or stays idle that long after a response, is closed silently; `0` turns it off",
    ),
    # Long enough for most downloads in flight to end, short enough for a service manager's stop timeout
    # (systemd's default is 90 s; Kubernetes' terminationGracePeriodSeconds is 30 s).
    Option(
        "shutdown_grace",
        Kind.DURATION,
        10.0,
        "on SIGTERM/SIGINT, how long requests in flight may take to finish (no new connections meanwhile)",
        "on SIGTERM/SIGINT: stop accepting connections, give requests in flight this long to finish, then "
        "exit (a second signal exits at once)",
    ),
    Option("memory_cache_size", Kind.SIZE, 256 * 1024**2, "bytes the memory tier may hold"),
    Option("disk_cache_size", Kind.SIZE, 10 * 1024**3, "bytes the disk tier may hold"),
    Option("max_object_size", Kind.SIZE, 1024**3, "bigger responses pass through unstored"),
    Option("memory_object_max", Kind.SIZE, 1024**2, "bigger objects stay on disk only"),
    # A 404 cached heuristically for at most a minute, so a package published a minute later is seen.
    Option("negative_ttl", Kind.DURATION, 60.0, "cap on the heuristic freshness of a 404/410"),
    Option(
        "preset",
        Kind.STR_LIST,
        (),
        "a bundle of cache rules, e.g. ci (repeatable)",
        "a bundle of cache rules, e.g. `ci` (repeatable)",
        metavar="NAME",
    ),
    # Above 1 MiB a body is not held in memory: it streams to the client and to disk as it arrives.
    Option(
        "stream_threshold",
        Kind.SIZE,
        1024**2,
        "bigger bodies stream to the client while they are stored",
        "bigger bodies stream to the client while they are written to disk",
    ),
    Option(
        "range_fetch_whole_below",
        Kind.SIZE,
        0,
        "on a miss, fetch objects this small whole to answer a range",
        "on a miss, fetch objects this small whole (and store them) to answer a range: one whole transfer "
        "however many ranges wait (uv asks 8 at once); bigger ones are asked in ranges",
        shown="`0` (off)",
    ),
    # A day: when the origin cannot be reached at all, an entry up to a day stale beats an error (RFC 9111
    # §4.2.4). Left at the default it does not cover 5xx answers (those need the response's
    # stale-if-error); set explicitly, it does; 0 turns it off.
    Option(
        "serve_stale_on_error",
        Kind.DURATION,
        86400.0,
        "serve any stored entry up to this stale when the origin cannot be reached; set, also on 5xx; 0: off",
        "when the origin cannot be reached, serve any stored entry up to this stale; set explicitly, also "
        "when it answers `5xx` (registry-outage mode); `0`: off",
    ),
    Option(
        "offline",
        Kind.BOOL,
        False,
        "answer only from the cache (504 on a miss); never contact an origin",
        "answer only from the cache, 504 on a miss; never contact an origin",
    ),
    # PURGE empties entries for everyone, so like Squid only the local machine may send it by default.
    Option(
        "no_fast_hits",
        Kind.BOOL,
        False,
        "answer every request through mitmproxy's HTTP layer (turns off the fast hit layer for HTTP/1.1 clients)",
        "answer every request through mitmproxy's HTTP layer: turns off the fast hit layer that answers "
        "memory hits of HTTP/1.1 clients in one send (see [Fast hits](#fast-hits))",
    ),
    Option(
        "allow_purge",
        Kind.STR_LIST,
        access.LOOPBACK,
        "client network whose PURGE requests remove entries, as CIDR (repeatable)",
        "clients whose `PURGE` requests remove entries; others get 403 (repeatable; see "
        "[Cache commands](#cache-commands))",
        metavar="CIDR",
        shown="`127.0.0.0/8`, `::1`",
    ),
    # Off: a single node behaves exactly as without the shared tier (issue 20).
    Option(
        "shared_cache",
        Kind.OPT_STR,
        None,
        "a shared cache tier for a fleet: redis://[user:pw@]host:port/db, rediss://… or redis+cluster://h:p,…",
        "a cache tier shared by a fleet of proxies: `redis://[user:password@]host:port/db`, `rediss://…` (TLS) "
        "or `redis+cluster://host:port[,host:port…]` (see [Running a fleet](#running-a-fleet))",
        metavar="URL",
        shown="none (off)",
    ),
    # 256 MiB: wheels, jars and most images fit; a multi-GiB body would take Redis's memory from many smaller,
    # more often shared ones.
    Option(
        "shared_object_max",
        Kind.SIZE,
        256 * 1024**2,
        "bigger bodies stay out of the shared tier (local tiers only)",
        "bigger bodies stay in the local tiers only",
    ),
    # 100 ms: a LAN round trip is well under a millisecond, so this only cuts off a server in trouble, and a
    # miss costs the client at most this long before it goes to the origin.
    Option(
        "shared_timeout",
        Kind.DURATION,
        0.1,
        "how long one shared-tier metadata operation may take (then a miss)",
        "how long one shared-tier metadata operation may take; past it the lookup is a miss and the node "
        "counts an error",
    ),
    Option(
        "shared_cache_password_file",
        Kind.OPT_STR,
        None,
        "file holding the shared tier's password",
        "the shared tier's password (first line), when the URL has none; else "
        "`FWDPROXY_SHARED_CACHE_PASSWORD`",
        metavar="FILE",
    ),
    Option(
        "shared_cache_ca",
        Kind.OPT_STR,
        None,
        "CA bundle (PEM) that signs the shared tier's rediss:// certificate",
        "CA bundle (PEM) that signs a `rediss://` server's certificate",
        metavar="FILE",
    ),
    # Next to the usual 8080; bound to the listen host, so loopback-only unless the proxy is exposed.
    Option(
        "admin_port",
        Kind.INT,
        8081,
        "port of the status page, /stats.json and /metrics on the listen host; 0: off",
        "the [status page and metrics](#status-page-and-metrics), on the listen host; `0` turns it off",
        metavar="PORT",
    ),
    Option(
        "access_log",
        Kind.OPT_STR,
        None,
        "write one line per request to this file (- for stderr)",
        "one line per request to FILE (`-`: stderr); see [Access log](#access-log)",
        metavar="FILE",
    ),
    # Squid's native format, so existing log tools (calamaris, goaccess --log-format=SQUID) read it.
    Option(
        "log_format",
        Kind.STR,
        "squid",
        "access log format: squid or json",
        "access log format: `squid` (Squid's native) or `json`",
        metavar="FORMAT",
        choices=("squid", "json"),  # accesslog.LogFormat (not imported: it pulls in the store)
    ),
    # A forward proxy that tells every origin its clients' addresses is not doing its job (issue 5).
    Option(
        "anonymize",
        Kind.STR,
        anonymize.Level.STANDARD.value,
        "off, standard (drop client addresses and proxy-chain headers) or strict (also one User-Agent)",
        "`off`, `standard` or `strict`: what a forwarded request may reveal (see [Anonymity](#anonymity))",
        metavar="LEVEL",
        toml="anonymize.level",
        choices=tuple(lv.value for lv in anonymize.Level),
        mitm_note="`--anonymize` (`off`, `standard`, `strict`; default `standard`)",
    ),
    Option(
        "set",
        Kind.STR_LIST,
        (),
        "any mitmproxy option NAME=VALUE (repeatable)",
        "any mitmproxy option (repeatable)",
        metavar="NAME=VALUE",
        mitm=None,
    ),
    Option("quiet", Kind.BOOL, False, "log only warnings and errors", short="-q", mitm=None),
    Option(
        "verbose",
        Kind.COUNT,
        0,
        "-v: a line per request and per tunnel decision; -vv: also connections and HTTP/2 frames",
        "`-v`: one line per request (`method URL status Cache-Status ms`) and each tunnel decision; `-vv`: "
        "also mitmproxy's connection log and HTTP/2 frame debugging (TOML: `verbose = 1` or `2`)",
        short="-v",
        mitm=None,
    ),
    # Only mitmproxy options from here on: `fwdproxy run` sets them itself, mitmdump users may.
    Option(
        "anonymize_config",
        Kind.OPT_STR,
        None,
        "TOML file whose [anonymize] table adds custom rules; the level is fwd_anonymize",
        flag=False,
        toml=None,
        mitm_note="`--config`, for its `[anonymize]` table only (the level still comes from `fwd_anonymize`)",
    ),
    # SQLite's quick_check reads every page of the index (milliseconds for a big cache): every five
    # minutes catches a damaged database soon without costing anything measurable.
    Option(
        "store_check_every",
        Kind.DURATION,
        300.0,
        "how often the cache database gets SQLite's quick_check (a damaged one is replaced by an empty one)",
        flag=False,
        toml=None,
        mitm_note="none: how often the cache database gets SQLite's `quick_check` (default `5m`; `0` off)",
    ),
    Option(
        "role",
        Kind.STR,
        "script",
        "script (under mitmdump), run (fwdproxy run: writes the runtime file) or worker (of --workers)",
        flag=False,
        toml=None,
        choices=("script", "run", "worker"),
        mitm_note="none: `script` under mitmdump (default); `fwdproxy run` sets `run` (runtime file, banner) "
        "or `worker`",
    ),
    Option(
        "worker",
        Kind.INT,
        0,
        "set by --workers: this process's index (1-based); 0 for a single process",
        flag=False,
        toml=None,
        mitm_note="none: set by `--workers` for each worker (its index); leave it alone",
    ),
    Option(
        "worker_run",
        Kind.STR,
        "",
        "set by --workers: names the run whose workers add up their counters in the cache directory",
        flag=False,
        toml=None,
        mitm_note="none: set by `--workers` for each worker (the run whose counters are added up); leave it "
        "alone",
    ),
)
BY_NAME: Mapping[str, Option] = {o.name: o for o in OPTIONS}
BY_MITM: Mapping[str, Option] = {o.mitm_name: o for o in OPTIONS if o.ours}


def convert(opt: Option, value: Any, where: str) -> Any:
    """Check and convert one value, as a flag, the TOML file or mitmproxy gives it; ValueError names ``where``."""

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


def worker_count(value: str | int, cores: int | None) -> int:
    """``auto`` is the number of cores; otherwise a positive integer.

    Raises:
        ValueError: neither.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return max(1, cores or 1)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{value!r} is not a number of workers; try e.g. 2, or auto for one per core"
        ) from None
    if n < 1:
        raise ValueError(f"{value!r} is not a number of workers; use 1 or more, or auto")
    return n


def default_text(opt: Option) -> str:
    """An option's default as a user writes it (``256MiB``, ``10s``, ``127.0.0.1/32, ::1/128``); "" for none."""
    value = opt.default_value()
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


# -- the mitmproxy side: what `mitmdump -s addons/fwdproxy.py --set fwd_...=...` accepts --------------------


def mitm_type(opt: Option) -> Any:
    """The type mitmproxy checks a ``--set`` value against: the text a user writes, parsed by ``convert``."""
    match opt.kind:
        case Kind.INT:
            return int
        case Kind.BOOL:
            return bool
        case Kind.STR_LIST | Kind.INT_LIST:
            return Sequence[str]
        case _:
            return str


def mitm_default(opt: Option) -> Any:
    """The mitmproxy option's default: the table's default as mitmproxy holds it (text, number or list)."""
    value = opt.default_value()
    match opt.kind:
        case Kind.INT | Kind.BOOL:
            return value
        case Kind.STR_LIST | Kind.INT_LIST:
            return [str(v) for v in value]
        case Kind.SIZE:
            return size_text(value)
        case Kind.DURATION:
            return duration_text(value)
        case _:
            return value or ""


def mitm_help(opt: Option) -> str:
    text = opt.help[0].upper() + opt.help[1:]
    return text if text.endswith(".") else text + "."


def metavar(opt: Option) -> str:
    """The flag's placeholder in --help and the README ("" for a switch)."""
    if opt.kind in (Kind.BOOL, Kind.COUNT):
        return ""
    return opt.metavar or {Kind.SIZE: "SIZE", Kind.DURATION: "DURATION"}.get(opt.kind) or opt.name.upper()


def parse_mitm(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings field -> typed value for mitmproxy option values (``fwd_*`` name -> value as mitmproxy holds it)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        opt = BY_MITM[name]
        out[opt.name] = convert(opt, list(value) if isinstance(value, tuple) else value, name)
    return out
