"""Operating the proxy: PURGE requests, metrics from Cache-Status, and the admin endpoint (/, /stats.json, /metrics)."""

# No `from __future__ import annotations`: mitmdump -s executes this file outside sys.modules.
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import ctx, http

from fwdproxy import __version__, access, cache, exposition, hits, metrics, pac, statuspage, workerstats
from fwdproxy.store import TierStats
from fwdproxy_addons import _flowinfo, _respond
from fwdproxy_addons._neighbours import HasMembers, HasStore, Server
from fwdproxy_addons._notes import notes, peek
from fwdproxy_addons._settings import SettingsSource

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

    def __init__(
        self,
        source: SettingsSource | None = None,
        cache: HasStore | None = None,
        egress: HasMembers | None = None,
        server: Server | None = None,
    ) -> None:
        self.source = source or SettingsSource()
        self.proxyserver = server or Server()
        """mitmproxy's Proxyserver, shared through chain() (addons/_neighbours.py)."""
        self.cache = cache
        """The cache addon (PURGE, tier sizes); None when Admin runs without it."""
        self.egress = egress
        """The egress addon (the upstream members' counters); None when Admin runs without it."""
        self.stats = metrics.Stats(time.time())
        self.registry = exposition.registry(self.snapshot)
        self.purge_networks: tuple[access.IPNetwork, ...] = access.parse_networks(
            self.source.given.allow_purge
        )
        self.admin_networks: tuple[access.IPNetwork, ...] = access.parse_networks(self.source.given.allow)
        self.credentials: access.Credentials | None = None
        """--auth: the admin port asks for the same user (Basic, 401); through the proxy Access asks (407)."""
        self.port = self.source.given.admin_port
        self.server: asyncio.Server | None = None
        self.master: Any = None
        self.hits_path: Path | None = None
        self.hit_deltas: Counter[str] = Counter()
        self.flusher: asyncio.Task[None] | None = None
        self.worker = 0
        """Which of --workers N this process is (0: the only one)."""
        self.stats_dir: Path | None = None
        """Where the workers of this run leave their counters (workerstats); None in a single process."""
        self.stats_writer: asyncio.Task[None] | None = None
        self.stats_error_logged = False

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(loader, "fwd_allow_purge", "fwd_admin_port", "fwd_worker", "fwd_worker_run")

    def configure(self, updated: set[str]) -> None:
        s = self.source.current()
        self.purge_networks = access.parse_networks(s.allow_purge)  # checked by the source already
        self.admin_networks = access.parse_networks(s.allow)
        self.credentials = access.Credentials.parse(s.auth) if s.auth else None
        if s.admin_port != self.port:
            self.port = s.admin_port
            if self.master is not None:  # changed while running: move the endpoint
                asyncio.get_running_loop().create_task(self._restart())
        if self.cache is not None:  # hit counts and worker counters live in the cache directory
            self.hits_path = hits.path_for(s.cache_dir)
            self.worker = s.worker
            self.stats_dir = (
                workerstats.run_dir(s.cache_dir, s.worker_run) if s.worker > 0 and s.worker_run else None
            )

    async def running(self) -> None:
        proxyserver = self.proxyserver.get()
        if proxyserver is not None and not proxyserver.listen_addrs():
            return  # the proxy could not listen and is stopping (Lifecycle said why): no status page
        self.master = ctx.master
        self._resume_predecessor()
        await self._start()
        loop = asyncio.get_running_loop()
        self.flusher = loop.create_task(self._flush_hits_periodically())
        if self.stats_dir is not None:
            self.stats_writer = loop.create_task(self._write_stats_periodically())

    async def done(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
        if self.stats_writer is not None:
            self.stats_writer.cancel()
        await self._stop()
        self._flush_hits()
        self._write_stats()

    # -- requests through the proxy -------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # requestheaders runs in every addon before any request hook, so an answer here precedes the cache.
        _, host = _flowinfo.note_request(flow)
        if flow.response is not None or flow.is_replay:
            return
        if flow.request.method.upper() == "PURGE":
            self._purge(flow)
        elif host == ADMIN_HOST:
            reached = flow.client_conn.sockname[0] if flow.client_conn.sockname else ""
            status, content_type, body = self.page(flow.request.method, flow.request.path, reached)
            self._answer(flow, status, content_type, body)
            if flow.request.method.upper() == "HEAD" and flow.response is not None:
                flow.response.raw_content = b""  # Content-Length stays that of the GET (RFC 9110 §9.3.2)

    def _answer(self, flow: http.HTTPFlow, status: int, content_type: str, body: bytes) -> None:
        headers = {"Content-Type": content_type, "Cache-Control": "no-store"}
        flow.response = http.Response.make(status, body, headers)
        notes(flow).admin = True

    def _purge(self, flow: http.HTTPFlow) -> None:
        client = _flowinfo.client_ip(flow)
        url = _flowinfo.asked_url(flow)  # the cache's key URL, noted in requestheaders
        if not access.client_allowed(client, self.purge_networks):
            log.warning("refused PURGE of %s from %s: not in --allow-purge", url, client)
            text = f"fwdproxy: PURGE from {client} is not allowed (see --allow-purge)\n"
            self._answer(flow, 403, "text/plain; charset=utf-8", text.encode())
            return
        store = self.cache.store if self.cache is not None else None
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
        if flow.is_replay or ((noted := peek(flow)) is not None and noted.admin):
            return  # our own background revalidations and admin answers are not client traffic
        result = _flowinfo.outcome(flow)
        host = _flowinfo.asked_host(flow)  # a big hit's request was re-pointed at the cache's sidecar
        served = metrics.Served(result, host, _flowinfo.body_bytes(flow), _flowinfo.ttfb(flow, result))
        hit = result in metrics.FROM_CACHE and flow.request.method in ("GET", "HEAD")
        self.record(served, cache.primary_key("GET", _flowinfo.asked_url(flow)) if hit else "")

    def record(
        self, served: metrics.Served, hit_key: str, *, fast: bool = False, sendfile: bool = False
    ) -> None:
        """Count one answered client request; ``hit_key``: the primary key of the entry it was served from.
        (The fast hit layer, addons/fasthit.py, calls this with ``fast`` for the hits it answers, and
        ``sendfile`` for those whose body it wrote from its file with sendfile.)"""
        self.stats.record(served, time.time())
        self.stats.fast_hits += fast
        self.stats.fast_sendfile_hits += sendfile
        if hit_key:
            self.hit_deltas[hit_key] += 1

    @staticmethod
    def owns(host: str) -> bool:
        """Whether requests for ``host`` are for this addon (the status page), not for an origin."""
        return host.lower() == ADMIN_HOST

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.is_replay or ((noted := peek(flow)) is not None and noted.admin) or flow.response is not None:
            return
        self.stats.record(metrics.Served(metrics.Outcome.NONE, _flowinfo.asked_host(flow), 0), time.time())

    def client_connected(self, client) -> None:  # type: ignore[no-untyped-def]
        self.stats.open_connections += 1

    def client_disconnected(self, client) -> None:  # type: ignore[no-untyped-def]
        self.stats.open_connections = max(0, self.stats.open_connections - 1)

    # -- what the endpoint serves ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The stats of every worker added up, with the cache's tier sizes and the balancer's members."""
        store = self.cache.store if self.cache is not None else None
        now = time.time()
        stats, workers, memories = self._all_workers(now)
        store_stats = store.stats() if store is not None else None
        if store_stats is not None and store_stats.memory is not None and memories:
            # Each worker has its own memory tier: show them added up, like the counters.
            store_stats = dataclasses.replace(
                store_stats, memory=metrics.sum_tiers([store_stats.memory, *memories])
            )
        snap = stats.snapshot(
            now,
            store=store_stats,
            upstreams=self._upstreams(),
            workers=workers,
        )
        # Issue 20: this process's view of the shared tier (each worker has its own connection).
        shared = getattr(store, "shared", None)
        snap["shared"] = shared.snapshot() if shared is not None else {"state": "off"}
        return snap

    def _all_workers(self, now: float) -> tuple[metrics.Stats, list[dict[str, Any]], list[TierStats]]:
        """This process's live counters plus the other workers' last files, one row per worker, and the
        other workers' memory tiers."""
        own = self.stats.state()
        rows = [metrics.worker_summary(self.worker, os.getpid(), own, now)]
        memories: list[TierStats] = []
        if self.stats_dir is None:
            return self.stats, rows, memories
        total = metrics.merge([own], self.stats.started)
        for index, got in sorted(workerstats.read_all(self.stats_dir).items()):
            if index == self.worker:
                continue
            try:
                total.add(got.state)
                rows.append(metrics.worker_summary(index, got.pid, got.state, got.updated))
                if got.memory is not None:
                    memories.append(got.memory)
            except ValueError as e:
                log.warning(
                    "worker %d's counters in %s are unreadable (%s); left out", index, self.stats_dir, e
                )
        return total, sorted(rows, key=lambda r: int(r["worker"])), memories

    def _upstreams(self) -> list[Mapping[str, Any]] | None:
        if self.egress is None:
            return None
        return [dict(m.as_dict()) for m in self.egress.stats()]

    def page(self, method: str, target: str, reached: str = "") -> tuple[int, str, bytes]:
        """(status, content type, body) for an admin request (HEAD too: the caller drops the body).

        ``reached`` is the local address the request came in at, for /proxy.pac when the proxy listens on
        every interface (the client can reach the proxy at that address)."""
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
        elif path == "/proxy.pac":
            result = (200, pac.CONTENT_TYPE, self._pac(reached).encode())
        else:
            result = (
                404,
                "text/plain; charset=utf-8",
                b"fwdproxy admin: try /, /stats.json, /metrics or /proxy.pac\n",
            )
        return result

    def _pac(self, reached: str) -> str:
        """The PAC file for the proxy's own listening address (the one reached, for a wildcard listener)."""
        proxyserver = self.proxyserver.get()
        addrs = proxyserver.listen_addrs() if proxyserver else []
        host, port = (
            (addrs[0][0], addrs[0][1]) if addrs else (ctx.options.listen_host, ctx.options.listen_port)
        )
        if host in ("", "0.0.0.0", "::"):
            host = reached or "127.0.0.1"
        return pac.render(host, port)

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
            start, *lines = head.decode("latin-1").split("\r\n")
            method, target, *_ = start.split(" ") + ["", ""]
            extra = ""
            if not access.client_allowed(peer[0] if peer else "", self.admin_networks):
                status, content_type, body = (
                    403,
                    "text/plain; charset=utf-8",
                    b"fwdproxy admin: not allowed\n",
                )
            elif (
                self.credentials is not None
                and urlsplit(target).path != "/proxy.pac"  # browsers fetch a PAC file without credentials;
                # it tells only the proxy's address, which every client already has to know
                and not self.credentials.check(_authorization(lines))
            ):
                # RFC 9110 §11.6.1: the same user as --auth, in constant time (access.Credentials.check).
                status, content_type, body = (
                    401,
                    "text/plain; charset=utf-8",
                    b"fwdproxy admin: authentication required (the --auth user)\n",
                )
                extra = 'WWW-Authenticate: Basic realm="fwdproxy"\r\n'
            else:
                local = writer.get_extra_info("sockname")
                status, content_type, body = self.page(method, target, local[0] if local else "")
            writer.write(
                f"HTTP/1.1 {status} {_respond.REASONS.get(status, '')}\r\nContent-Type: {content_type}\r\n{extra}"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                + (b"" if method.upper() == "HEAD" else body)
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # a client that went away or never finished its request head gets nothing
        finally:
            writer.close()

    # -- counters shared with the other workers (workerstats) -----------------------------------------

    def _resume_predecessor(self) -> None:
        """A replacement worker carries on from the counters its predecessor last wrote."""
        if self.stats_dir is None:
            return
        got = workerstats.read(workerstats.path_for(self.stats_dir, self.worker))
        if got is None or got.pid == os.getpid():
            return
        try:
            self.stats.add(got.state, connections=False)  # its connections died with it
        except ValueError as e:
            log.warning("cannot carry on from %s (%s); this worker counts from zero", self.stats_dir, e)

    def _stats_file(self) -> tuple[Path, int, int, float, dict[str, Any], TierStats | None] | None:
        if self.stats_dir is None:
            return None
        path = workerstats.path_for(self.stats_dir, self.worker)
        store = self.cache.store if self.cache is not None else None
        memory = store.memory if store is not None else None
        tier = memory.stats() if memory is not None else None  # a lock and two lengths: cheap
        return path, self.worker, os.getpid(), time.time(), self.stats.state(), tier

    def _write_stats(self) -> None:
        if (args := self._stats_file()) is not None:
            try:
                workerstats.write(*args)
            except OSError as e:
                self._stats_write_failed(e)

    def _stats_write_failed(self, e: OSError) -> None:
        if not self.stats_error_logged:
            log.warning("cannot write this worker's counters to %s: %s", self.stats_dir, e.strerror)
            self.stats_error_logged = True

    async def _write_stats_periodically(self) -> None:
        while True:
            await asyncio.sleep(workerstats.STATS_EVERY)
            if (args := self._stats_file()) is not None:  # the state is copied here, on the event loop
                try:
                    await asyncio.to_thread(workerstats.write, *args)
                except OSError as e:
                    self._stats_write_failed(e)

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


def _authorization(lines: list[str]) -> str | None:
    """The Authorization field of a request head's field lines (the first one), or None."""
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "authorization":
            return value.strip()
    return None


addons = [Admin()]
