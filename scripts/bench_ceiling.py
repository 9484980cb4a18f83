#!/usr/bin/env python3
"""The hit ceiling for scripts/bench: a bare embedded Master (Core, Proxyserver, NextLayer, TlsConfig) plus
one addon that answers every request from a dict, as fwdproxy's memory tier would at best.

    .venv/bin/python scripts/bench_ceiling.py --port 0 --body-size 1024

Prints ``listening at 127.0.0.1:PORT`` like fwdproxy run; SIGINT/SIGTERM stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from mitmproxy import http, options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master


class DictHits:
    """Answers each request from a dict keyed by URL (filled on first sight), never asking an origin."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.table: dict[str, tuple[tuple[tuple[bytes, bytes], ...], bytes]] = {}

    def request(self, flow: http.HTTPFlow) -> None:
        url = flow.request.url
        entry = self.table.get(url)
        if entry is None:
            size = next((n for suffix, n in self.sizes.items() if url.endswith(suffix)), 1024)
            body = b"x" * size
            fields = (
                (b"Content-Type", b"application/octet-stream"),
                (b"Content-Length", str(size).encode()),
                (b"Cache-Control", b"max-age=3600"),
            )
            entry = self.table[url] = (fields, body)
        now = time.time()
        fields, body = entry
        flow.response = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(fields), body, None, now, now)


async def main(port: int) -> None:
    master = Master(options.Options())
    master.addons.add(
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        DictHits({"1k.bin": 1024, "100k.bin": 100 * 1024}),
    )
    master.options.update(listen_host="127.0.0.1", listen_port=port, connection_strategy="lazy")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    task = asyncio.create_task(master.run())
    while not (addrs := master.addons.get("proxyserver").listen_addrs()):
        if task.done():
            raise SystemExit(f"cannot listen on port {port}")
        await asyncio.sleep(0.05)
    host, bound = addrs[0][:2]
    print(f"listening at {host}:{bound}", flush=True)
    await task


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    asyncio.run(main(p.parse_args().port))
