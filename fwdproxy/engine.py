"""Builds and runs the embedded mitmproxy Master: only the built-in addons we use, plus our chain."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from mitmproxy import exceptions, options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from fwdproxy.config import Settings

log = logging.getLogger("fwdproxy")

BUILTIN_ADDONS = (core.Core, proxyserver.Proxyserver, next_layer.NextLayer, tlsconfig.TlsConfig)
"""mitmproxy's own addons that fwdproxy needs. The other ~27 default addons would each be called on every hook
of every flow; leaving them out roughly doubles throughput (mitmproxy-notes §12)."""


def mitm_options(s: Settings) -> dict[str, Any]:
    """mitmproxy option values (built-in and our ``fwd_*``) for these settings."""
    return {
        "listen_host": s.listen_host,
        "listen_port": s.listen_port,
        "confdir": s.confdir,
        "connection_strategy": "lazy",
        "fwd_allow": list(s.allow),
        "fwd_auth": s.auth or "",
        "fwd_connect_ports": [str(p) for p in s.connect_port],
        "fwd_passthrough": list(s.passthrough),
        "fwd_intercept": list(s.intercept),
        "fwd_upstream_ca": s.upstream_ca or "",
        "fwd_connect_timeout": f"{s.connect_timeout:g}s",
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
        "fwd_serve_stale_on_error": f"{s.serve_stale_on_error:g}s",
        "fwd_offline": s.offline,
        "fwd_config": s.config or "",
        "fwd_upstreams": list(s.upstream),
        "fwd_balance": s.balance,
    }


def build(s: Settings) -> tuple[Master, Any]:
    """A configured Master (call inside a running event loop) and our Lifecycle addon."""
    from addons.fwdproxy import chain  # imported here: addons/ may import mitmproxy, fwdproxy/ stays pure

    master = Master(options.Options())
    ours = chain()
    master.addons.add(*(cls() for cls in BUILTIN_ADDONS), *ours)
    master.options.update(**mitm_options(s))
    if s.set:
        master.options.set(*s.set)
    return master, ours[0]


async def serve(s: Settings) -> int:
    """Run the proxy until SIGINT/SIGTERM; the exit status is 0, or 1 when it could not start."""
    try:
        master, lifecycle = build(s)
    except (exceptions.OptionsError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        log.error("cannot start: %s", msg)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()
    return 0 if lifecycle.listening else 1
