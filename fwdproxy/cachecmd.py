"""`fwdproxy cache stats|ls|show|purge|verify|warm`: look into and steer a cache directory, proxy running or not."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from fwdproxy import cache, cacheview, config, hits, metrics, runtime
from fwdproxy.cache import CacheConfig
from fwdproxy.store import BodyFile, TieredStore, Verification, backend, partial_key
from fwdproxy.store.handle import ERRORS
from fwdproxy.store.verify import ORPHAN_AGE, _remove_orphans
from fwdproxy.units import format_duration, format_size

Command = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A problem the user can fix; main prints it and exits with status 2."""


def _settings(ns: argparse.Namespace) -> config.Settings:
    flags: dict[str, Any] = {}
    for name in ("config", "cache_dir", "preset", "shared_cache"):
        if getattr(ns, name, None):
            flags[name] = ns.preset if name == "preset" else getattr(ns, name)
    try:
        settings = config.from_file_and_flags(flags)
    except ValueError as e:
        raise CommandError(str(e)) from None
    if "cache_dir" not in settings.explicit and (found := runtime.find()):
        # No directory named: the running proxy's (the newest, when several run), not the default.
        print(f"fwdproxy cache: {found[0].cache_dir} (the cache of {found[0].proxy_url})", file=sys.stderr)
        settings = dataclasses.replace(settings, cache_dir=found[0].cache_dir)
    return settings


def cache_config(settings: config.Settings) -> CacheConfig:
    """The freshness settings the proxy would use with these settings (negative TTL, rules, presets)."""
    try:
        rules = config.resolved(settings).rules
    except ValueError as e:
        raise CommandError(str(e)) from None
    # What the proxy recorded with an entry wins over these flags: it explains what the proxy did.
    return CacheConfig(negative_ttl=settings.negative_ttl, rules=rules, recorded_lifetimes=True)


def _open(settings: config.Settings) -> TieredStore:
    directory = Path(os.path.expanduser(settings.cache_dir))
    if not (directory / "store").is_dir():
        raise CommandError(
            f"--cache-dir {settings.cache_dir}: no cache there yet (start `fwdproxy run --cache-dir "
            f"{settings.cache_dir}` first, or pass the directory the proxy uses)"
        )
    return TieredStore.open(directory, disk_size=settings.disk_cache_size)


def _shared(settings: config.Settings) -> Any:
    """A blocking client of the shared tier (issue 20), or None when --shared-cache is not set."""
    if not settings.shared_cache:
        return None
    from fwdproxy.store import shared_admin
    from fwdproxy.store.shared_client import password_from
    from fwdproxy.store.shared_layout import parse_url

    try:
        url = password_from(
            parse_url(settings.shared_cache), settings.shared_cache_password_file, dict(os.environ)
        )
        return shared_admin.connect(url, ca=settings.shared_cache_ca)
    except ValueError as e:
        raise CommandError(str(e)) from None
    except Exception as e:  # redis.RedisError and OSError: a message, not a traceback
        raise CommandError(
            f"--shared-cache: cannot reach the shared tier ({type(e).__name__}: {e})"
        ) from None


def _console() -> Console:
    # Piped output keeps whole URLs on one line instead of wrapping them at 80 columns.
    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=not sys.stdout.isatty())


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def cmd_stats(ns: argparse.Namespace) -> int:
    settings = _settings(ns)
    if ns.shared:
        return _shared_stats(ns, settings)
    store = _open(settings)
    stats = store.stats()
    oldest = newest = None
    body_bytes = 0
    for _, meta in store.iterate():
        body_bytes += meta.body_length
        oldest = meta.response_time if oldest is None else min(oldest, meta.response_time)
        newest = meta.response_time if newest is None else max(newest, meta.response_time)
    counts = hits.load(hits.path_for(settings.cache_dir))
    result = {
        "cache_dir": os.path.expanduser(settings.cache_dir),
        **metrics.store_dict(stats),
        "memory": None,  # the memory tier lives inside each proxy process: see its /stats.json
        "body_bytes": body_bytes,
        "oldest": oldest,
        "newest": newest,
        "hits": sum(counts.values()),
    }
    if ns.json:
        _print_json(result)
        return 0
    now = time.time()
    table = Table(title=f"cache in {result['cache_dir']}")
    for col in ("tier", "entries", "bytes", "limit", "used", "evictions"):
        table.add_column(col, justify="left" if col == "tier" else "right")
    d = stats.disk
    table.add_row(
        "disk",
        str(d.entries),
        format_size(d.bytes),
        format_size(d.limit),
        f"{d.bytes / d.limit:.1%}" if d.limit else "-",
        str(d.evictions),
    )
    table.add_row("memory", "-", "-", "-", "-", "-", style="dim")
    console = _console()
    console.print(table)
    console.print(f"bodies: {format_size(body_bytes)}; hits counted: {result['hits']}")
    if oldest is not None and newest is not None:
        console.print(
            f"oldest stored {format_duration(now - oldest)} ago, newest {format_duration(now - newest)} ago"
        )
    console.print("[dim]the memory tier and evictions live in the running proxy: see its /stats.json[/dim]")
    if stats.disk_full or stats.errors:
        console.print(
            f"[red]disk full: {stats.disk_full}; storage errors: {stats.errors} {stats.last_error}[/red]"
        )
    return 0


def _shared_stats(ns: argparse.Namespace, settings: config.Settings) -> int:
    """`cache stats --shared`: the shared tier's entries, bodies and memory, as the server sees them."""
    from fwdproxy.store import shared_admin

    client = _shared(settings)
    if client is None:
        raise CommandError("--shared needs --shared-cache URL (or shared_cache in --config)")
    try:
        result = shared_admin.summary(client)
    except Exception as e:  # redis.RedisError: the server went away meanwhile
        raise CommandError(f"--shared-cache: {type(e).__name__}: {e}") from None
    if ns.json:
        _print_json({"shared": result})
        return 0
    table = Table(title="shared tier")
    for col in ("URLs", "entries", "chunks", "used memory", "maxmemory", "policy", "nodes"):
        table.add_column(col, justify="right")
    table.add_row(
        str(result["urls"]),
        str(result["entries"]),
        str(result["chunks"]),
        format_size(result["used_memory"]),
        format_size(result["maxmemory"]) if result["maxmemory"] else "no limit",
        result["maxmemory_policy"],
        str(result["nodes"]),
    )
    console = _console()
    console.print(table)
    console.print("[dim]hits, misses and errors per node: each proxy's /metrics (fwdproxy_shared_*)[/dim]")
    if "noeviction" in result["maxmemory_policy"]:
        console.print("[red]maxmemory-policy noeviction: once full, the server refuses new entries[/red]")
    return 0


def cmd_ls(ns: argparse.Namespace) -> int:
    settings = _settings(ns)
    store = _open(settings)
    counts = hits.load(hits.path_for(settings.cache_dir))
    found = cacheview.rows(store.iterate(), cache_config(settings), time.time(), counts, ns.host)
    if ns.json:
        _print_json([r.as_dict() for r in found])
        return 0
    table = Table(title=f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}", title_justify="left")
    table.add_column("URL", overflow="fold")
    for col in ("status", "size", "age", "fresh for", "hits", "lifetime from"):
        table.add_column(col, justify="left" if col == "lifetime from" else "right")
    for r in found:
        fresh = format_duration(r.ttl) if r.ttl > 0 else f"[yellow]stale {format_duration(-r.ttl)}[/yellow]"
        url = r.url + (f" [dim](vary {r.vary.replace(chr(10), '; ')})[/dim]" if r.vary else "")
        url += f" [dim](partial: {r.partial})[/dim]" if r.pieces else ""
        table.add_row(
            url, str(r.status), format_size(r.size), format_duration(r.age), fresh, str(r.hits), r.source
        )
    _console().print(table)
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    settings = _settings(ns)
    store = _open(settings)
    primary = cache.primary_key("GET", ns.url)
    variants = store.variants(primary)
    if (pieces := store.get(partial_key(primary))) is not None:
        if isinstance(pieces.body, BodyFile):
            pieces.body.close()
        variants.append((partial_key(primary), pieces.meta))  # RFC 9111 §3.3: shown as partial
    if not variants:
        if ns.json:
            _print_json([])
        else:
            print(f"{ns.url}: not in the cache (key {primary!r})", file=sys.stderr)
        return 1
    counts = hits.load(hits.path_for(settings.cache_dir))
    now, conf = time.time(), cache_config(settings)
    shown = [cacheview.show(key, meta, conf, now, counts) for key, meta in variants]
    if ns.json:
        _print_json(shown)
        return 0
    console = _console()
    console.print(f"[bold]{ns.url}[/bold]  key {primary!r}, {len(shown)} variant(s), {shown[0]['hits']} hits")
    for v in shown:
        part = v["partial"]
        title = (
            f"partial: bytes {', '.join(f'{a}-{b}' for a, b in part['pieces'])} of {part['length']}"
            if part
            else ""
        )
        console.rule(title or f"variant {v['vary'] or '(no Vary)'}")
        console.print(f"{v['status_text']}, {format_size(v['size'])} body, rule: {v['rule'] or 'none'}")
        headers = Table(show_header=False, box=None)
        headers.add_column(style="cyan")
        headers.add_column(overflow="fold")
        for name, value in v["headers"]:
            headers.add_row(name, value)
        console.print(headers)
        if v["vary_request"]:
            console.print(
                "selecting request headers: " + "; ".join(f"{k}: {x}" for k, x in v["vary_request"])
            )
        for line in v["explanation"]:
            console.print(f"  • {line}")
    return 0


def cmd_purge(ns: argparse.Namespace) -> int:
    if sum(bool(x) for x in (ns.url, ns.host, ns.all)) != 1:
        raise CommandError("purge takes one of: a URL, --host GLOB, or --all")
    settings = _settings(ns)
    store = _open(settings)
    path = hits.path_for(settings.cache_dir)
    shared = _shared(settings)
    if ns.url:
        primaries = [cache.primary_key("GET", ns.url)]
        removed = store.purge(primaries[0])
    else:
        doomed = [k for k, m in store.iterate() if ns.all or cacheview.host_matches(m.url, ns.host)]
        removed = sum(store.delete(k) for k in doomed)
        primaries = sorted({cacheview.split_key(k)[0] for k in doomed})
    if shared is not None:  # issue 20: the shared tier too, and every node hears of it
        from fwdproxy.store import shared_admin

        try:
            if ns.url:
                shared_removed = shared_admin.purge(shared, primaries)
            else:
                shared_removed = shared_admin.purge_matching(
                    shared,
                    lambda url: bool(ns.all or cacheview.host_matches(url, ns.host)),
                    lambda url: cache.primary_key("GET", url),
                )
        except Exception as e:  # redis.RedisError: the local purge stands; say the shared one failed
            raise CommandError(f"purged locally, but not the shared tier: {type(e).__name__}: {e}") from None
        print(f"shared tier: purged {shared_removed} URL(s)", file=sys.stderr)
    try:
        hits.remove(path, None if ns.all else primaries)
    except OSError as e:
        print(f"fwdproxy: could not update {path}: {e.strerror}", file=sys.stderr)
    if ns.json:
        _print_json({"removed": removed})
    else:
        what = ns.url or (f"host {ns.host}" if ns.host else "the whole cache")
        print(f"purged {removed} entr{'y' if removed == 1 else 'ies'} for {what}")
    return 0


def cmd_verify(ns: argparse.Namespace) -> int:
    settings = _settings(ns)
    store = _open(settings)
    total = store.stats().disk.entries
    results = dict.fromkeys(Verification, 0)
    damaged: list[str] = []
    columns = (TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(
        *columns, console=Console(stderr=True), disable=ns.json or not sys.stderr.isatty()
    ) as progress:
        task = progress.add_task("verify", total=total)
        for key, meta in store.iterate():
            result = store.verify(key)
            results[result] += 1
            if result is Verification.BAD:
                damaged.append(meta.url)
            progress.advance(task)
    orphans = remove_orphans(store)
    summary = {
        "checked": sum(results.values()),
        "ok": results[Verification.OK],
        "bad": results[Verification.BAD],
        "missing": results[Verification.MISSING],
        "orphans": orphans,
        "damaged": damaged,
    }
    if ns.json:
        _print_json(summary)
    else:
        print(
            f"checked {summary['checked']} entries: {summary['ok']} ok, {summary['bad']} damaged (dropped), "
            f"{summary['missing']} gone meanwhile; {orphans} orphaned body files removed"
        )
        for url in damaged:
            print(f"  dropped {url}")
    return 0


def remove_orphans(store: TieredStore) -> int:
    """Body files no entry owns (a crash between linking and committing), as verify_all removes them."""
    db = store.disk.db
    if (live := db.live()) is None:
        return 0
    try:
        owned = backend.filenames(live)
    except ERRORS as e:
        db.fault(e, "listing body files")
        return 0
    return _remove_orphans(store.disk, owned, min_age=ORPHAN_AGE)


def cmd_warm(ns: argparse.Namespace) -> int:
    from fwdproxy import warm  # httpx is needed by this command only

    try:
        text = sys.stdin.read() if ns.file == "-" else Path(ns.file).read_text(encoding="utf-8")
    except OSError as e:
        raise CommandError(f"{ns.file}: cannot read it: {e.strerror}") from None
    urls = warm.read_urls(text.splitlines())
    try:
        warm.check_urls(urls)
    except ValueError as e:
        raise CommandError(f"{ns.file}: {e}") from None
    cacert = ns.cacert
    if cacert is None:
        default = Path(os.path.expanduser(ns.confdir)) / "mitmproxy-ca-cert.pem"
        cacert = str(default) if default.is_file() else None
    columns = (TextColumn("warming"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(
        *columns, console=Console(stderr=True), disable=ns.json or not sys.stderr.isatty()
    ) as progress:
        task = progress.add_task("warm", total=len(urls))
        results = warm.warm(
            urls,
            proxy=ns.proxy,
            cacert=cacert,
            concurrency=ns.concurrency,
            progress=lambda _: progress.advance(task),
        )
    summary = warm.summarize(results)
    if ns.json:
        _print_json(summary)
    else:
        print(
            f"warmed {summary['urls']} URLs through {ns.proxy}: {summary['stored']} stored, "
            f"{summary['cached']} already cached, {summary['not_stored']} not cacheable, "
            f"{summary['failed']} failed; {format_size(summary['bytes'])} fetched"
        )
        for f in summary["failures"]:
            why = f["error"] or f"status {f['status']}"
            print(f"  failed {f['url']}: {why}")
    return 1 if summary["failed"] else 0


def add_parser(sub: Any) -> None:
    """Register ``cache`` and its subcommands on the ``fwdproxy`` subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    default_dir = config.Settings().cache_dir
    common.add_argument(
        "--cache-dir",
        help=f"the proxy's cache directory (default: the running fwdproxy's, else {default_dir})",
    )
    common.add_argument("--config", help="fwdproxy TOML file: its cache_dir, sizes and [[cache.rule]] apply")
    common.add_argument("--preset", action="append", help="cache rule preset the proxy runs with, e.g. ci")
    common.add_argument(
        "--shared-cache", metavar="URL", help="the fleet's shared tier: purge it too; stats --shared reads it"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = sub.add_parser("cache", help="inspect and manage the cache", description=__doc__)
    cmds = p.add_subparsers(dest="cache_command", metavar="SUBCOMMAND", required=True)
    parents = [common, as_json]
    c = cmds.add_parser("stats", parents=parents, help="entries and bytes per tier, oldest and newest")
    c.add_argument("--shared", action="store_true", help="the shared tier (--shared-cache) instead")
    c.set_defaults(func=run(cmd_stats))
    c = cmds.add_parser("ls", parents=parents, help="list entries: URL, status, size, age, freshness, hits")
    c.add_argument("--host", help="only entries of hosts matching this glob (host or host:port)")
    c.set_defaults(func=run(cmd_ls))
    c = cmds.add_parser("show", parents=parents, help="one URL's stored headers, variants and freshness")
    c.add_argument("url")
    c.set_defaults(func=run(cmd_show))
    c = cmds.add_parser(
        "purge", parents=parents, help="remove a URL (all its variants), a host's entries, or all"
    )
    c.add_argument("url", nargs="?")
    c.add_argument("--host", help="every entry of hosts matching this glob")
    c.add_argument("--all", action="store_true", help="empty the cache")
    c.set_defaults(func=run(cmd_purge))
    c = cmds.add_parser("verify", parents=parents, help="check every stored body; drop the damaged ones")
    c.set_defaults(func=run(cmd_verify))
    c = cmds.add_parser(
        "warm", parents=[as_json], help="fetch each URL in FILE through a running proxy to fill its cache"
    )
    c.add_argument("file", metavar="FILE", help="one URL per line (# comments allowed); - reads stdin")
    c.add_argument(
        "--proxy", default="http://127.0.0.1:8080", help="the proxy (default: http://127.0.0.1:8080)"
    )
    c.add_argument("--cacert", help="CA that signs intercepted HTTPS (default: the one in --confdir, if any)")
    c.add_argument("--confdir", default="~/.mitmproxy", help="the proxy's confdir (default: ~/.mitmproxy)")
    c.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default: 4)")
    c.set_defaults(func=run(cmd_warm))


def run(cmd: Command) -> Command:
    """Wrap a command so a CommandError becomes a one-line message and exit status 2."""

    def wrapped(ns: argparse.Namespace) -> int:
        try:
            return cmd(ns)
        except CommandError as e:
            print(f"fwdproxy cache: {e}", file=sys.stderr)
            return 2

    return wrapped
