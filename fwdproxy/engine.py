"""Builds and runs the embedded mitmproxy Master: only the built-in addons we use, plus our chain."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks, options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master
from mitmproxy.proxy import mode_servers

from fwdproxy.config import Settings

log = logging.getLogger("fwdproxy")

BUILTIN_ADDONS = (core.Core, proxyserver.Proxyserver, next_layer.NextLayer, tlsconfig.TlsConfig)
"""mitmproxy's own addons that fwdproxy needs. The other ~27 default addons would each be called on every hook
of every flow; leaving them out roughly doubles throughput (mitmproxy-notes §12)."""


GC_THRESHOLDS = (5000, 10, 10)
"""gc.set_threshold for the proxy process. mitmproxy's flows and layers are reference cycles, so every request
leaves some 80 objects that only the collector frees, and Python's default first threshold (2000) makes it
run every 20 or so cache hits. Measured on memory hits (1 KiB, 16 connections): collections cost about
28 µs of each hit's 450 µs at the defaults; a first threshold of 5000 and a frozen start-up heap (tune_gc)
took about 3 % off the CPU per hit, while 10000 and more were no better (the young generation outgrows the
CPU caches). The garbage waiting between collections stays a few MiB at most."""


def tune_gc() -> None:
    """Collect the start-up garbage, then move everything alive into the permanent generation (gc.freeze):
    modules, options and addons live as long as the process, and full collections no longer walk them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class HookTable(addonmanager.AddonManager):
    """mitmproxy's AddonManager, but each event's hooks are looked up once per chain, not once per call.

    The stock manager walks every addon (and its children) for every event of every flow, through a
    generator, a ``getattr`` and a ``contextlib`` wrapper each, then does it all again for an ``update``
    event nobody here listens to: about a sixth of a cache hit's CPU with our dozen addons. This one keeps
    the same order, error handling (an addon's exception is logged and the next addon still runs;
    AddonHalt stops the event) and sync/async support. The table is rebuilt when the chain changes;
    an addon must not swap its hook methods or child addons while running (none of ours does).
    """

    def __init__(self, master: Master) -> None:
        super().__init__(master)
        self._hooks: dict[str, tuple[Callable[..., Any], ...]] = {}

    def hooks_for(self, name: str) -> tuple[Callable[..., Any], ...]:
        """Every callable hook named ``name``, in chain order (children after their parent)."""
        found = self._hooks.get(name)
        if found is None:
            found = self._hooks[name] = tuple(
                func
                for addon in addonmanager.traverse(self.chain)
                if callable(func := getattr(addon, name, None)) and not inspect.ismodule(func)
            )
        return found

    def register(self, addon: Any) -> Any:
        self._hooks.clear()
        return super().register(addon)

    def add(self, *addons: Any) -> None:
        super().add(*addons)
        self._hooks.clear()

    def remove(self, addon: Any) -> None:
        super().remove(addon)
        self._hooks.clear()

    def clear(self) -> None:
        super().clear()
        self._hooks.clear()

    async def trigger_event(self, event: hooks.Hook) -> None:
        await self._call(self.hooks_for(event.name), event.args())

    async def _call(self, funcs: tuple[Callable[..., Any], ...], args: list[Any]) -> None:
        for func in funcs:
            try:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as e:  # as mitmproxy's safecall: one addon's bug never stops the others
                log.error("Addon error: %s", e, exc_info=sys.exc_info())

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        args = event.args()  # a dataclasses.fields() walk: once per event, not once per use
        await self._call(self.hooks_for(event.name), args)
        if isinstance(args[0], flow.Flow) and (update := self.hooks_for("update")):
            await self._call(update, [[args[0]]])


class SharedPort:
    """Makes the regular-mode listener join a SO_REUSEPORT group, so worker processes share one port.

    mitmproxy binds its listener itself (``AsyncioServerInstance.listen`` in proxy/mode_servers.py calls
    ``asyncio.start_server(handle_stream, host, port)``). ``Servers.update`` (addons/proxyserver.py) sends
    its ``changed`` signal after making the server instances and before starting them; there we give each
    regular-mode instance a ``listen`` that passes ``reuse_port=True``. The kernel then spreads incoming
    connections over the workers' sockets by a hash of the client address and port.
    """

    def __init__(self, servers: proxyserver.Servers) -> None:
        self.servers = servers
        servers.changed.connect(self.patch)  # a weak reference: the Master keeps us alive (see build)

    def patch(self) -> None:
        for instance in self.servers:
            if isinstance(instance, mode_servers.RegularInstance) and not instance.is_running:
                instance.listen = _shared_listener(instance)  # type: ignore[method-assign,assignment]


def _shared_listener(instance: mode_servers.RegularInstance) -> Callable[[str, int], Any]:
    async def listen(host: str, port: int) -> list[asyncio.Server]:
        return [await asyncio.start_server(instance.handle_stream, host or None, port, reuse_port=True)]

    return listen


def mitm_options(s: Settings) -> dict[str, Any]:
    """mitmproxy option values (built-in and our ``fwd_*``) for these settings."""
    return {
        "listen_host": s.listen_host,
        "listen_port": s.listen_port,
        "confdir": s.confdir,
        "connection_strategy": "lazy",
        "fwd_allow": list(s.allow),
        "fwd_auth": s.auth or "",
        "fwd_max_connections": s.max_connections,
        "fwd_connect_ports": [str(p) for p in s.connect_port],
        "fwd_passthrough": list(s.passthrough),
        "fwd_intercept": list(s.intercept),
        "fwd_upstream_ca": s.upstream_ca or "",
        "fwd_connect_timeout": f"{s.connect_timeout:g}s",
        "fwd_read_timeout": f"{s.read_timeout:g}s",
        "fwd_dns_ttl": f"{s.dns_ttl:g}s",
        "fwd_origin_idle_timeout": f"{s.origin_idle_timeout:g}s",
        "fwd_origin_max_connections": s.origin_max_connections,
        "fwd_header_timeout": f"{s.header_timeout:g}s",
        "fwd_shutdown_grace": f"{s.shutdown_grace:g}s",
        "fwd_upstream_insecure": s.upstream_insecure,
        "fwd_anonymize": s.anonymize,
        "fwd_anonymize_config": s.config or "",  # the addon reads the file's [anonymize] table itself
        "fwd_cache_dir": s.cache_dir,
        "fwd_memory_cache_size": str(s.memory_cache_size),
        "fwd_disk_cache_size": str(s.disk_cache_size),
        "fwd_max_object_size": str(s.max_object_size),
        "fwd_memory_object_max": str(s.memory_object_max),
        "fwd_negative_ttl": f"{s.negative_ttl:g}s",
        "fwd_preset": list(s.preset),
        "fwd_stream_threshold": str(s.stream_threshold),
        "fwd_range_fetch_whole_below": str(s.range_fetch_whole_below),
        # Left unset, the addon's default ("1d") stands, which covers unreachable origins only (not 5xx).
        "fwd_serve_stale_on_error": (
            f"{s.serve_stale_on_error:g}s" if "serve_stale_on_error" in s.explicit else "1d"
        ),
        "fwd_offline": s.offline,
        "fwd_fast_hits": not s.no_fast_hits,
        "fwd_config": s.config or "",
        "fwd_upstreams": list(s.upstream),
        "fwd_balance": s.balance,
        "fwd_allow_purge": list(s.allow_purge),
        "fwd_admin_port": s.admin_port,
        "fwd_worker": s.worker,
        "fwd_worker_run": s.worker_run,
        "fwd_access_log": s.access_log or "",
        "fwd_log_format": s.log_format,
    }


def build(s: Settings, *, shared_port: bool = False) -> tuple[Master, Any]:
    """A configured Master (call inside a running event loop) and our Lifecycle addon.

    With ``shared_port`` the listener joins a SO_REUSEPORT group (one of ``--workers N`` processes).
    """
    from addons.fwdproxy import chain  # imported here: addons/ may import mitmproxy, fwdproxy/ stays pure

    master = Master(options.Options())
    master.addons = HookTable(master)
    ours = chain()
    master.addons.add(*(cls() for cls in BUILTIN_ADDONS), *ours)
    if shared_port:
        master.fwd_shared_port = SharedPort(master.addons.get("proxyserver").servers)  # type: ignore[attr-defined]
    master.options.update(**mitm_options(s), fwd_role="worker" if shared_port else "run")
    if s.set:
        master.options.set(*s.set)
    return master, ours[0]


async def serve(s: Settings, *, shared_port: bool = False) -> int:
    """Run the proxy until SIGINT/SIGTERM; the exit status is 0, or 1 when it could not start.

    With ``s.workers`` > 1 this process supervises that many proxy processes on one port (workers.py).
    """
    if s.workers > 1:
        from fwdproxy import workers

        return await workers.supervise(s, s.workers)
    try:
        master, lifecycle = build(s, shared_port=shared_port)
    except (exceptions.OptionsError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        log.error("cannot start: %s", msg)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    tune_gc()
    await master.run()
    return 0 if lifecycle.listening else 1
