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
