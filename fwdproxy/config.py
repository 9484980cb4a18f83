"""Flags, the TOML file and mitmproxy options merged into one frozen Settings record; errors name the key.

The options themselves (flag, TOML key, mitmproxy name, type, default, help) are declared once, in
fwdproxy/options.py. The file is read once; its tables are checked and turned into typed records
(``Resolved``) before the proxy listens.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fwdproxy import access
from fwdproxy.anonymize import AnonymizeConfig, Level, parse_anonymize
from fwdproxy.balance import EgressConfig, parse_cli_upstreams, parse_upstreams
from fwdproxy.cache.rules import PRESETS, Rule, parse_rules
from fwdproxy.options import BY_NAME, OPTIONS, Kind, Option, convert, default_text, metavar, parse_mitm

__all__ = ["OPTIONS", "SECTIONS", "Kind", "Option", "Resolved", "Settings"]

SECTIONS = ("cache", "anonymize", "upstreams", "routes")
"""Tables of the TOML file that are not options: read with the file, checked into ``Resolved``."""


def _d(name: str) -> Any:
    """A Settings field whose default is the options table's."""
    default = BY_NAME[name].default
    return field(default_factory=default) if callable(default) else default


@dataclass(frozen=True, slots=True)
class Resolved:
    """The typed records made from the file's tables and the options, every one checked before listening."""

    rules: tuple[Rule, ...] = ()
    """``[[cache.rule]]`` tables, then the ``--preset`` bundles, in order."""
    egress: EgressConfig = field(default_factory=EgressConfig)
    """``--upstream``/``--balance`` (the ``default`` group), ``[upstreams.*]`` groups and ``[[routes]]``."""
    upstream_auth: Mapping[tuple[str, int], str | None] = field(default_factory=dict)
    """Proxy-Authorization per member address (a CONNECT hook knows only the address)."""
    anonymize: AnonymizeConfig = field(default_factory=AnonymizeConfig)
    """``[anonymize]`` with the ``--anonymize`` level."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the proxy was asked to do, after flags, file and defaults were merged (options.py)."""

    listen_host: str = _d("listen_host")
    listen_port: int = _d("listen_port")
    workers: int = _d("workers")
    event_loop: str = _d("event_loop")
    cache_dir: str = _d("cache_dir")
    confdir: str = _d("confdir")
    config: str | None = _d("config")
    passthrough: tuple[str, ...] = _d("passthrough")
    intercept: tuple[str, ...] = _d("intercept")
    connect_port: tuple[int, ...] = _d("connect_port")
    upstream_ca: str | None = _d("upstream_ca")
    upstream_insecure: bool = _d("upstream_insecure")
    upstream: tuple[str, ...] = _d("upstream")
    balance: str = _d("balance")
    allow: tuple[str, ...] = _d("allow")
    auth: str | None = _d("auth")
    max_connections: int = _d("max_connections")
    connect_timeout: float = _d("connect_timeout")
    read_timeout: float = _d("read_timeout")
    dns_ttl: float = _d("dns_ttl")
    origin_idle_timeout: float = _d("origin_idle_timeout")
    origin_max_connections: int = _d("origin_max_connections")
    header_timeout: float = _d("header_timeout")
    shutdown_grace: float = _d("shutdown_grace")
    memory_cache_size: int = _d("memory_cache_size")
    disk_cache_size: int = _d("disk_cache_size")
    max_object_size: int = _d("max_object_size")
    memory_object_max: int = _d("memory_object_max")
    negative_ttl: float = _d("negative_ttl")
    preset: tuple[str, ...] = _d("preset")
    stream_threshold: int = _d("stream_threshold")
    range_fetch_whole_below: int = _d("range_fetch_whole_below")
    serve_stale_on_error: float = _d("serve_stale_on_error")
    offline: bool = _d("offline")
    no_fast_hits: bool = _d("no_fast_hits")
    allow_purge: tuple[str, ...] = _d("allow_purge")
    shared_cache: str | None = _d("shared_cache")
    shared_object_max: int = _d("shared_object_max")
    shared_timeout: float = _d("shared_timeout")
    shared_cache_password_file: str | None = _d("shared_cache_password_file")
    shared_cache_ca: str | None = _d("shared_cache_ca")
    admin_port: int = _d("admin_port")
    access_log: str | None = _d("access_log")
    log_format: str = _d("log_format")
    anonymize: str = _d("anonymize")
    set: tuple[str, ...] = _d("set")
    quiet: bool = _d("quiet")
    verbose: int = _d("verbose")
    anonymize_config: str | None = _d("anonymize_config")
    store_check_every: float = _d("store_check_every")
    role: str = _d("role")
    worker: int = _d("worker")
    """Which of the --workers processes this one is (1-based); 0 in a single process. Set by the
    supervisor (fwdproxy.workers), never by a flag or the file."""
    worker_run: str = _d("worker_run")
    """Names the --workers run this worker belongs to (the supervisor's pid): where the workers' counters
    meet (fwdproxy.workerstats)."""
    sections: Mapping[str, Any] = field(default_factory=dict)
    """The TOML file's own tables ([cache], [anonymize], [upstreams.*], [[routes]]), as read."""
    explicit: frozenset[str] = frozenset()
    """Names of the options that a flag, the file or a mitmproxy option set (the rest are defaults)."""
    resolved: Resolved | None = None
    """The tables as typed records; set by the functions below (``resolved(s)`` builds it for a hand-made
    Settings)."""


def read_toml(path: str, where: str = "") -> dict[str, Any]:
    """The config file as a dict; ValueError says what is wrong and where (``--config PATH`` by default)."""
    where = where or f"--config {path}"
    try:
        with open(os.path.expanduser(path), "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where}: not valid TOML: {e}") from None
    except OSError as e:
        raise ValueError(f"{where}: cannot read it: {e.strerror}") from None


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
            opt = BY_NAME.get(name)
            if opt is None or opt.key != name:
                known = ", ".join(
                    sorted([o.key for o in OPTIONS if o.key and "." not in o.key] + list(SECTIONS))
                )
                raise ValueError(f"{config_path}: unknown key {key!r}; known keys: {known}")
            values[name] = convert(opt, value, f"{config_path}: {key}")
    for opt in OPTIONS:
        section, dot, key = opt.key.partition(".")
        if dot and isinstance(sections.get(section), dict) and key in sections[section]:
            values[opt.name] = convert(opt, sections[section][key], f"{config_path}: {opt.key}")
    for name, value in flags.items():
        opt = BY_NAME[name]
        values[name] = convert(opt, value, opt.flag_name)
    settings = Settings(**values, sections=sections, explicit=frozenset(values))
    check(settings)
    for validate in validators:
        validate(settings)
    return dataclasses.replace(settings, resolved=resolve(settings))


def from_mitm(
    base: Settings, values: Mapping[str, Any], read: Callable[[str, str], dict[str, Any]] | None = None
) -> Settings:
    """``base`` with the ``fwd_*`` mitmproxy options in ``values`` (those that differ from their defaults).

    This is how ``mitmdump -s addons/fwdproxy.py --set fwd_...`` (and a ``--set fwd_...`` given to ``fwdproxy
    run``) reaches the typed settings: parsed with the same table, errors named after the mitmproxy option.
    The files ``fwd_config`` and ``fwd_anonymize_config`` name are read with ``read`` (default:
    ``read_toml``; the addons pass one that keeps a file's tables while its option stays the same).
    """
    read = read or read_toml
    typed = parse_mitm(values)
    sections = dict(base.sections)
    where = {}
    if "config" in typed:
        path = typed["config"]
        doc = read(path, f"fwd_config: {path}")
        for name in ("cache", "upstreams", "routes"):  # [anonymize] comes from fwd_anonymize_config
            sections.pop(name, None)
            if name in doc:
                sections[name] = doc[name]
            where[name] = f"fwd_config: {path}"
    if "anonymize_config" in typed:
        path = typed["anonymize_config"]
        doc = read(path, f"fwd_anonymize_config: {path}")
        sections.pop("anonymize", None)
        if "anonymize" in doc:
            sections["anonymize"] = doc["anonymize"]
        where["anonymize"] = f"fwd_anonymize_config: {path}"
    settings = dataclasses.replace(base, **typed, sections=sections, explicit=base.explicit | set(typed))
    check(settings, _mitm_label, cli=False)
    return dataclasses.replace(settings, resolved=resolve(settings, where, _mitm_label))


def _flag_label(name: str) -> str:
    return BY_NAME[name].flag_name


def _mitm_label(name: str) -> str:
    return BY_NAME[name].mitm_name


def check(s: Settings, label: Callable[[str], str] = _flag_label, *, cli: bool = True) -> None:
    """Cross-field checks that no single value shows; ``label`` names an option as the user wrote it."""
    for name in ("allow", "allow_purge"):
        try:
            access.parse_networks(getattr(s, name))
        except ValueError as e:
            raise ValueError(f"{label(name)}: {e}") from None
    if s.shared_cache:
        from fwdproxy.store.shared_layout import parse_url

        try:
            parse_url(s.shared_cache)
        except ValueError as e:
            raise ValueError(f"{label('shared_cache')} {e}") from None
    if s.admin_port > 65535:
        raise ValueError(
            f"{label('admin_port')} {s.admin_port} is not a port; use 1-65535, or 0 to turn it off"
        )
    if s.origin_max_connections < 1:
        raise ValueError(
            f"{label('origin_max_connections')}: {s.origin_max_connections} is not a positive number of "
            "connections; try e.g. 16"
        )
    if s.auth:
        try:
            access.Credentials.parse(s.auth)
        except ValueError as e:
            raise ValueError(f"{label('auth')}: {e}") from None
    if cli:  # mitmdump users choose mitmproxy's listen_host themselves
        access.check_exposure(s.listen_host, "allow" in s.explicit, bool(s.auth))
    for item in s.set:
        if "=" not in item:
            raise ValueError(f"--set {item!r} is not NAME=VALUE; try e.g. --set http2=false")


def resolve(
    s: Settings, where: Mapping[str, str] | None = None, label: Callable[[str], str] = _flag_label
) -> Resolved:
    """The file's tables and the options as typed records; ValueError names the table's file and key.

    ``where`` says which file each table came from (default: ``--config``'s).
    """

    def origin(section: str) -> str:
        return (where or {}).get(section) or str(s.config)

    sections = s.sections
    rules: list[Rule] = []
    if "cache" in sections:
        table = sections["cache"]
        if not isinstance(table, dict) or set(table) - {"rule"}:
            raise ValueError(f"{origin('cache')}: [cache] holds only [[cache.rule]] tables")
        try:
            rules += parse_rules(table.get("rule", []))
        except ValueError as e:
            raise ValueError(f"{origin('cache')}: {e}") from None
    for name in s.preset:
        if name not in PRESETS:
            raise ValueError(
                f"{label('preset')}: preset {name!r} is unknown; known presets: {', '.join(PRESETS)}"
            )
        rules += PRESETS[name]
    try:
        cli = parse_cli_upstreams(s.upstream, s.balance)
    except ValueError as e:
        named = label("upstream")  # "--upstream 'URL': ..." as before; "fwd_upstreams: 'URL': ..."
        raise ValueError(f"{named} {e}" if named.startswith("--") else f"{named}: {e}") from None
    try:
        egress = parse_upstreams(
            sections.get("upstreams", {}), sections.get("routes", []), extra_groups=cli.groups
        )
        auth = _upstream_auth(egress)
    except ValueError as e:
        raise ValueError(f"{origin('upstreams')}: {e}") from None
    table = sections.get("anonymize", {})
    if not isinstance(table, dict):
        raise ValueError(
            f'{origin("anonymize")}: anonymize: {table!r} is not a table; write [anonymize] and level = "strict" '
            "under it"
        )
    try:
        anonymize = parse_anonymize(table)
    except ValueError as e:
        raise ValueError(f"{origin('anonymize')}: {e}") from None
    anonymize = dataclasses.replace(anonymize, level=Level(s.anonymize))
    return Resolved(tuple(rules), egress, auth, anonymize)


def _upstream_auth(egress: EgressConfig) -> dict[tuple[str, int], str | None]:
    auth: dict[tuple[str, int], str | None] = {}
    owner: dict[tuple[str, int], str] = {}
    for group in egress.groups:
        for m in group.members:
            if m.address in auth and auth[m.address] != m.proxy_authorization:
                # The CONNECT hook sees only the proxy's address, so it could not tell which to send.
                raise ValueError(
                    f"{m.name} is in groups {owner[m.address]!r} and {group.name!r} with different "
                    "credentials; use the same URL in both"
                )
            auth[m.address], owner[m.address] = m.proxy_authorization, group.name
    return auth


def resolved(s: Settings) -> Resolved:
    """``s.resolved``, built (and checked) now for a Settings made by hand."""
    return s.resolved if s.resolved is not None else resolve(s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare one flag per option; defaults are left out so we can tell what was given."""
    for opt in OPTIONS:
        if not opt.flag:
            continue
        names = [opt.flag_name] + ([opt.short] if opt.short else [])
        help_text = f"{opt.help} (default: {shown})" if (shown := default_text(opt)) else opt.help
        kwargs: dict[str, Any] = {"dest": opt.name, "default": argparse.SUPPRESS, "help": help_text}
        if opt.kind is Kind.BOOL:
            parser.add_argument(*names, action="store_true", **kwargs)
        elif opt.kind is Kind.COUNT:
            parser.add_argument(*names, action="count", **kwargs)
        elif opt.kind in (Kind.STR_LIST, Kind.INT_LIST):
            parser.add_argument(*names, action="append", metavar=metavar(opt), **kwargs)
        else:
            parser.add_argument(*names, metavar=metavar(opt), **kwargs)


def settings_from_args(ns: argparse.Namespace) -> Settings:
    """Settings from parsed flags (only those present) plus the file they name."""
    given = {o.name: getattr(ns, o.name) for o in OPTIONS if o.flag and hasattr(ns, o.name)}
    return from_file_and_flags(given)


def as_dict(s: Settings) -> dict[str, Any]:
    """A plain dict of every option's value (for logs and tests)."""
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
