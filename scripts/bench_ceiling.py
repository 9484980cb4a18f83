#!/usr/bin/env python3
"""The hit ceiling for scripts/bench: a bare embedded Master (Core, Proxyserver, NextLayer, TlsConfig) plus
one addon that answers every request from a dict, as fwdproxy's memory tier would at best.

    .venv/bin/python scripts/bench_ceiling.py --port 0            # flows: the full path's ceiling
    .venv/bin/python scripts/bench_ceiling.py --port 0 --layer    # a layer of its own: the fast path's

``--layer`` answers below mitmproxy's HTTP machinery instead (issue 21): its ``next_layer`` hook puts a layer
in place of the HttpLayer that finds each request head and answers it from the dict with one SendData, with
no parsing beyond the request target and no policy: the fastest a fast hit layer can be.

Prints ``listening at 127.0.0.1:PORT`` like fwdproxy run; SIGINT/SIGTERM stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import Generator
from typing import Any

from mitmproxy import http, options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers.http import HttpLayer


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


class DictLayer(layer.Layer):
    """Answers every complete request head on the connection from the table, one SendData per read."""

    def __init__(self, context: Any, table: dict[bytes, bytes], sizes: dict[str, int]) -> None:
        super().__init__(context)
        context.layers.remove(self)
        self.table, self.sizes, self.buf = table, sizes, b""

    def handle_event(self, event: events.Event) -> Generator[commands.Command, Any, None]:
        if type(event) is events.DataReceived:
            self.buf += event.data
            out = []
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                target = self.buf.split(b" ", 2)[1]
                self.buf = self.buf[end + 4 :]
                out.append(self.table.get(target) or self._entry(target))
            if out:
                yield commands.SendData(self.context.client, b"".join(out))
        elif type(event) is events.ConnectionClosed:
            yield commands.CloseConnection(self.context.client)

    def _handle_event(self, event: events.Event) -> Generator[commands.Command, Any, None]:
        yield from self.handle_event(event)

    def _entry(self, target: bytes) -> bytes:
        size = next((n for suffix, n in self.sizes.items() if target.endswith(suffix.encode())), 1024)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n" % size
        self.table[target] = response = head + b"Cache-Control: max-age=3600\r\n\r\n" + b"x" * size
        return response


class LayerHits:
    """Installs a DictLayer wherever mitmproxy chose its HTTP layer for an HTTP/1 client."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.table: dict[bytes, bytes] = {}

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if (
            type(nextlayer.layer) is HttpLayer
            and nextlayer.context.client.alpn in (None, b"", b"http/1.1")
            and not nextlayer.data_client().startswith(b"CONNECT ")  # tunnels: mitmproxy's layer opens them
        ):
            nextlayer.layer = DictLayer(nextlayer.context, self.table, self.sizes)


async def main(port: int, with_layer: bool, confdir: str | None) -> None:
    master = Master(options.Options())
    if confdir:
        master.options.update(confdir=confdir)
    sizes = {"1k.bin": 1024, "100k.bin": 100 * 1024}
    master.addons.add(
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        LayerHits(sizes) if with_layer else DictHits(sizes),
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
    p.add_argument("--layer", action="store_true", help="answer in a layer of its own (no flows)")
    p.add_argument("--confdir", help="mitmproxy confdir (its CA signs intercepted tunnels)")
    ns = p.parse_args()
    asyncio.run(main(ns.port, ns.layer, ns.confdir))
