"""Builds and runs the embedded mitmproxy Master: only the built-in addons we use, plus our chain."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
from typing import Any

from mitmproxy import exceptions, options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from fwdproxy import loops
from fwdproxy.config import Settings
from fwdproxy.options import OPTIONS

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


def mitm_options(s: Settings) -> dict[str, Any]:
    """mitmproxy's own option values for these settings (``listen_host``, ``confdir`` …).

    Our ``fwd_*`` options are not among them: the addons get the typed Settings from ``chain()``, and the
    ``fwd_*`` options stay at their defaults unless ``--set fwd_...`` changes one (then it is parsed with
    the same table, fwdproxy/options.py)."""
    values = {o.mitm_name: getattr(s, o.name) for o in OPTIONS if o.mitm_name and not o.ours}
    return {**values, "connection_strategy": "lazy"}


def build(s: Settings, *, shared_port: bool = False) -> tuple[Master, Any]:
    """A configured Master (call inside a running event loop) and our Lifecycle addon.

    With ``shared_port`` the listener joins a SO_REUSEPORT group (one of ``--workers N`` processes).
    """
    # Imported here: addons/ may import mitmproxy, fwdproxy/ stays pure.
    from fwdproxy_addons._mitm.dispatch import HookTable
    from fwdproxy_addons._mitm.sharedport import SharedPort
    from fwdproxy_addons._neighbours import Server
    from fwdproxy_addons.fwdproxy import chain

    master = Master(options.Options())
    master.addons = HookTable(master)
    builtins = [cls() for cls in BUILTIN_ADDONS]
    # mitmproxy's Proxyserver is made here: handed to the addons that need it, never looked up by name.
    servers = next(a for a in builtins if isinstance(a, proxyserver.Proxyserver))
    ours = chain(dataclasses.replace(s, role="worker" if shared_port else "run"), Server(servers))
    master.addons.add(*builtins, *ours)
    if shared_port:
        master.fwd_shared_port = SharedPort(servers.servers)  # type: ignore[attr-defined]
    master.options.update(**mitm_options(s))
    if s.set:
        master.options.set(*s.set)
    return master, ours[0]


async def serve(s: Settings, *, shared_port: bool = False) -> int:
    """Run the proxy until SIGINT/SIGTERM; the exit status is 0, or 1 when it could not start.

    One process: ``fwdproxy run --workers N`` (cli.py) supervises N of these instead (workers.py).
    """
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
    log.info("event loop: %s (--event-loop %s)", loops.running(), s.event_loop)
    await master.run()
    return 0 if lifecycle.listening else 1
