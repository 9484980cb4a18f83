"""Operating the proxy: PURGE requests, metrics from Cache-Status, and the admin endpoint (/, /stats.json, /metrics)."""

# No `from __future__ import annotations`: mitmdump -s executes this file outside sys.modules.
import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions, http

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons import _flowinfo
from fwdproxy import __version__, access, cache, exposition, hits, metrics, statuspage

log = logging.getLogger("fwdproxy.admin")

ADMIN_HOST = "fwdproxy.local"
"""The status page through the proxy itself, as mitmproxy serves its CA at mitm.it."""
HITS_EVERY = 5.0
"""Seconds between writes of the per-URL hit counts that `fwdproxy cache ls` shows."""
READ_TIMEOUT = 10.0
"""A client of the admin port has this long to send its request head."""


class Admin:
    """PURGE, the status page and metrics. Sits after the cache so its ``response`` hook sees the final
    Cache-Status; it answers in ``requestheaders``, which runs before the cache's ``request`` lookup."""

    def __init__(self) -> None:
        self.stats = metrics.Stats(time.time())
        self.registry = exposition.registry(self.snapshot)
        self.purge_networks: tuple[access.IPNetwork, ...] = access.parse_networks(access.LOOPBACK)
        self.admin_networks: tuple[access.IPNetwork, ...] = access.parse_networks(access.LOOPBACK)
        self.port = 8081
        self.server: asyncio.Server | None = None
        self.master: Any = None
        self.hits_path: Path | None = None
        self.hit_deltas: Counter[str] = Counter()
        self.flusher: asyncio.Task[None] | None = None
        self.upstream_error_logged = False

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "fwd_allow_purge",
            Sequence[str],
            list(access.LOOPBACK),
            "Client networks (CIDR) whose PURGE requests remove cache entries; others get 403.",
        )
        loader.add_option(
            "fwd_admin_port",
            int,
            8081,
            "Port of the status page and /metrics, on the listen host; 0 turns it off.",
        )

    def configure(self, updated: set[str]) -> None:
        try:
            if "fwd_allow_purge" in updated:
                self.purge_networks = access.parse_networks(ctx.options.fwd_allow_purge)
            if "fwd_allow" in updated and "fwd_allow" in ctx.options:
                self.admin_networks = access.parse_networks(ctx.options.fwd_allow)
        except ValueError as e:
            raise exceptions.OptionsError(f"fwd_allow_purge: {e}") from e
        if "fwd_admin_port" in updated:
            if not 0 <= ctx.options.fwd_admin_port < 65536:
                raise exceptions.OptionsError(
                    f"fwd_admin_port: {ctx.options.fwd_admin_port} is not a port; use 1-65535, or 0 for off"
                )
            self.port = ctx.options.fwd_admin_port
            if self.master is not None:  # changed while running: move the endpoint
                asyncio.get_running_loop().create_task(self._restart())
        if "fwd_cache_dir" in updated and "fwd_cache_dir" in ctx.options:
            self.hits_path = hits.path_for(ctx.options.fwd_cache_dir)

    async def running(self) -> None:
        self.master = ctx.master
        await self._start()
        self.flusher = asyncio.get_running_loop().create_task(self._flush_hits_periodically())

    async def done(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
        await self._stop()
        self._flush_hits()

    # -- requests through the proxy -------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # requestheaders runs in every addon before any request hook, so an answer here precedes the cache.
        _, host = _flowinfo.note_request(flow)
        if flow.response is not None or flow.is_replay:
            return
        if flow.request.method.upper() == "PURGE":
            self._purge(flow)
        elif host == ADMIN_HOST:
            status, content_type, body = self.page(flow.request.method, flow.request.path)
            self._answer(flow, status, content_type, body)
            if flow.request.method.upper() == "HEAD" and flow.response is not None:
                flow.response.raw_content = b""  # Content-Length stays that of the GET (RFC 9110 §9.3.2)

    def _answer(self, flow: http.HTTPFlow, status: int, content_type: str, body: bytes) -> None:
        headers = {"Content-Type": content_type, "Cache-Control": "no-store"}
        flow.response = http.Response.make(status, body, headers)
        flow.metadata[_flowinfo.ADMIN] = True

    def _purge(self, flow: http.HTTPFlow) -> None:
        client = _flowinfo.client_ip(flow)
        url = _flowinfo.asked_url(flow)  # the cache's key URL, noted in requestheaders
        if not access.client_allowed(client, self.purge_networks):
            log.warning("refused PURGE of %s from %s: not in --allow-purge", url, client)
            text = f"fwdproxy: PURGE from {client} is not allowed (see --allow-purge)\n"
            self._answer(flow, 403, "text/plain; charset=utf-8", text.encode())
            return
        store = getattr(ctx.master.addons.get("cache"), "store", None)
        if store is None:
            self._answer(flow, 503, "text/plain; charset=utf-8", b"fwdproxy: the cache is not loaded\n")
            return
        primary = cache.primary_key("GET", url)
        removed = store.purge(primary)  # every Vary variant; HEAD shares the GET key
        self.stats.purges += removed
        self.hit_deltas.pop(primary, None)
        if self.hits_path is not None and removed:
            try:
                hits.remove(self.hits_path, [primary])
            except OSError as e:
                log.warning("could not update %s: %s", self.hits_path, e.strerror)
        log.info("PURGE %s from %s: %d entries removed", url, client, removed)
        if removed:
            text = f"fwdproxy: purged {removed} entr{'y' if removed == 1 else 'ies'} for {url}\n"
            self._answer(flow, 200, "text/plain; charset=utf-8", text.encode())
        else:
            self._answer(
                flow, 404, "text/plain; charset=utf-8", f"fwdproxy: {url} is not in the cache\n".encode()
            )

    def request(self, flow: http.HTTPFlow) -> None:
        _flowinfo.note_local(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        _flowinfo.count_streamed(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.is_replay or flow.metadata.get(_flowinfo.ADMIN):
            return  # our own background revalidations and admin answers are not client traffic
        result = _flowinfo.outcome(flow)
        host = _flowinfo.asked_host(flow)  # a big hit's request was re-pointed at the cache's sidecar
        served = metrics.Served(result, host, _flowinfo.body_bytes(flow), _flowinfo.ttfb(flow, result))
        self.stats.record(served, time.time())
        if result in metrics.FROM_CACHE and flow.request.method in ("GET", "HEAD"):
            self.hit_deltas[cache.primary_key("GET", _flowinfo.asked_url(flow))] += 1

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.is_replay or flow.metadata.get(_flowinfo.ADMIN) or flow.response is not None:
            return
        self.stats.record(metrics.Served(metrics.Outcome.NONE, _flowinfo.asked_host(flow), 0), time.time())

    def client_connected(self, client) -> None:  # type: ignore[no-untyped-def]
        self.stats.open_connections += 1

    def client_disconnected(self, client) -> None:  # type: ignore[no-untyped-def]
        self.stats.open_connections = max(0, self.stats.open_connections - 1)

    # -- what the endpoint serves ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The stats with the cache's tier sizes and the balancer's members, read now."""
        master = self.master or ctx.master
        store = getattr(master.addons.get("cache"), "store", None)
        return self.stats.snapshot(
            time.time(),
            store=store.stats() if store is not None else None,
            upstreams=self._upstreams(master.addons.get("egress")),
        )

    def _upstreams(self, egress: Any) -> list[Mapping[str, Any]] | None:
        if egress is None or not hasattr(egress, "stats"):
            return None
        try:
            try:
                members = egress.stats()
            except TypeError:  # the balancer's own stats() wants the time
                members = egress.stats(now=time.time())
            return [_member_dict(m) for m in members]
        except (TypeError, ValueError, AttributeError) as e:
            if not self.upstream_error_logged:
                log.warning("cannot read the egress addon's stats (%s); upstreams are left out", e)
                self.upstream_error_logged = True
            return None

    def page(self, method: str, target: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for an admin request (HEAD too: the caller drops the body)."""
        if method.upper() not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"fwdproxy admin: only GET and HEAD\n"
        path = urlsplit(target).path or "/"
        if path in ("/", "/index.html"):
            body = statuspage.render(self.snapshot(), version=__version__).encode()
            result = (200, statuspage.CONTENT_TYPE, body)
        elif path == "/stats.json":
            result = (200, "application/json", json.dumps(self.snapshot(), indent=1).encode())
        elif path == "/metrics":
            result = (200, exposition.CONTENT_TYPE, exposition.render(self.registry))
        else:
            result = (404, "text/plain; charset=utf-8", b"fwdproxy admin: try /, /stats.json or /metrics\n")
        return result

    # -- the admin port -------------------------------------------------------------------------------

    async def _start(self) -> None:
        if not self.port:
            return
        host = ctx.options.listen_host or None  # "" listens everywhere, like the proxy
        try:
            self.server = await asyncio.start_server(self._handle, host, self.port, reuse_address=True)
        except OSError as e:
            log.warning(
                "admin endpoint: cannot listen on %s:%s (%s); the status page is off (see --admin-port)",
                host or "*",
                self.port,
                e.strerror,
            )
            return
        shown = "127.0.0.1" if host in (None, "0.0.0.0", "::") else host
        log.info("status page at http://%s:%s/ (also /stats.json and /metrics)", shown, self.port)

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    async def _restart(self) -> None:
        await self._stop()
        await self._start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = writer.get_extra_info("peername")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ") + ["", ""]
            if not access.client_allowed(peer[0] if peer else "", self.admin_networks):
                status, content_type, body = (
                    403,
                    "text/plain; charset=utf-8",
                    b"fwdproxy admin: not allowed\n",
                )
            else:
                status, content_type, body = self.page(method, target)
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                + (b"" if method.upper() == "HEAD" else body)
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # a client that went away or never finished its request head gets nothing
        finally:
            writer.close()

    # -- hit counts for `fwdproxy cache ls` -----------------------------------------------------------

    def _flush_hits(self) -> None:
        if self.hits_path is None or not self.hit_deltas:
            return
        deltas, self.hit_deltas = self.hit_deltas, Counter()
        try:
            hits.add(self.hits_path, deltas)
        except OSError as e:
            log.warning("could not write hit counts to %s: %s", self.hits_path, e.strerror)

    async def _flush_hits_periodically(self) -> None:
        while True:
            await asyncio.sleep(HITS_EVERY)
            if self.hits_path is not None and self.hit_deltas:
                deltas, self.hit_deltas = self.hit_deltas, Counter()
                try:
                    await asyncio.to_thread(hits.add, self.hits_path, deltas)
                except OSError as e:
                    log.warning("could not write hit counts to %s: %s", self.hits_path, e.strerror)


_REASONS = {200: "OK", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}


def _member_dict(member: Any) -> Mapping[str, Any]:
    if isinstance(member, Mapping):
        return member
    if hasattr(member, "as_dict"):
        return dict(member.as_dict())
    return dataclasses.asdict(member)


addons = [Admin()]
