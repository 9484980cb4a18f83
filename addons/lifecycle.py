"""Engine defaults every fwdproxy chain relies on, the ``fwdproxy listening at HOST:PORT`` line, startup
safety checks (CA key mode, unverified origins), the cache's periodic health check, and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http

from fwdproxy import __version__, runtime, trust
from fwdproxy.units import parse_duration

log = logging.getLogger("fwdproxy")


FULL_COLLECTION_EVERY = 5.0
"""Seconds between full garbage collections (see Lifecycle._collect_periodically)."""


class Lifecycle:
    """Lazy origin connections, origin trust from the OS store, and the startup announcement.

    On SIGTERM or SIGINT the proxy stops accepting connections, lets the requests in flight finish for up to
    ``fwd_shutdown_grace``, then shuts down (a second signal: at once). A transfer still running then is cut,
    and the cache never commits a cut body, so the cache directory is consistent whenever the process ends.
    """

    def __init__(self) -> None:
        self.listening: tuple[str, int] | None = None
        self.grace = 10.0
        self.check_every = 300.0
        self.in_flight: set[str] = set()
        """Ids of the flows between their request head and their response or error."""
        self.master: Any = None
        self.stopping: asyncio.Task[None] | None = None
        self.checker: asyncio.Task[None] | None = None
        self.collector: asyncio.Task[None] | None = None
        self.runtime: runtime.Running | None = None
        """What this process wrote to its runtime file (``fwd_role=run``), removed at a clean stop."""

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "fwd_upstream_ca",
            str,
            "",
            "Extra CA bundle (PEM) trusted for origin certificates, beside the OS store.",
        )
        loader.add_option(
            "fwd_upstream_insecure",
            bool,
            False,
            "Do not verify origin TLS certificates (sets ssl_insecure; warned about on every start).",
        )
        loader.add_option(
            "fwd_shutdown_grace",
            str,
            "10s",
            "On SIGTERM/SIGINT, how long requests in flight may take to finish before the proxy exits.",
        )
        loader.add_option(
            "fwd_role",
            str,
            "script",
            "script (under mitmdump), run (`fwdproxy run`: writes the runtime file) or worker (of --workers: "
            "no banner; the supervisor prints it once).",
            choices=["script", "run", "worker"],
        )
        loader.add_option(
            "fwd_store_check_every",
            str,
            "5m",
            "How often the cache database gets SQLite's quick_check (a damaged one is replaced by an empty one).",
        )

    def configure(self, updated: set[str]) -> None:
        try:
            if "fwd_shutdown_grace" in updated:
                self.grace = parse_duration(ctx.options.fwd_shutdown_grace)
            if "fwd_store_check_every" in updated:
                self.check_every = parse_duration(ctx.options.fwd_store_check_every)
        except ValueError as e:
            name = "fwd_shutdown_grace" if "fwd_shutdown_grace" in updated else "fwd_store_check_every"
            raise exceptions.OptionsError(f"{name}: {e}") from e
        if "fwd_upstream_insecure" in updated and ctx.options.fwd_upstream_insecure:
            ctx.options.ssl_insecure = True
        # Hits, passthrough decisions and per-flow upstreams all need the origin connection to open only when a
        # request needs it (mitmproxy-notes §1, §5, §6).
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            ctx.options.connection_strategy = "lazy"
        if "fwd_upstream_ca" in updated or "confdir" in updated:
            if ctx.options.ssl_verify_upstream_trusted_ca and "fwd_upstream_ca" not in updated:
                return  # the user set mitmproxy's own option explicitly: leave it alone
            try:
                bundle = trust.origin_trust(
                    ctx.options.fwd_upstream_ca or None, Path(os.path.expanduser(ctx.options.confdir))
                )
            except ValueError as e:
                raise exceptions.OptionsError(f"fwd_upstream_ca: {e}") from e
            if bundle and bundle != ctx.options.ssl_verify_upstream_trusted_ca:
                ctx.options.ssl_verify_upstream_trusted_ca = bundle

    def running(self) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        addrs = proxyserver.listen_addrs() if proxyserver else []
        if not addrs:
            message = runtime.listen_failure(ctx.options.listen_host, ctx.options.listen_port)
            if ctx.options.fwd_role == "script":
                log.error("%s", message)
            else:  # fwdproxy run: one plain line (mitmproxy's own, with its --mode hint, is filtered out)
                print(f"fwdproxy: {message}", file=sys.stderr, flush=True)
            ctx.master.shutdown()
            return
        host, port = addrs[0][:2]
        self.listening = (host, port)
        self._check_startup_safety()  # before the listening line, so whoever waits for it sees the warnings
        role = ctx.options.fwd_role
        me = describe_running(host, port, os.getpid())
        if role == "run":  # before the listening line: whoever waits for it may run `fwdproxy env` at once
            self.runtime = me
            runtime.write(me)
        print(f"fwdproxy listening at {host}:{port}", file=sys.stdout, flush=True)
        if role != "worker":  # with --workers the supervisor announces the proxy once, not each worker
            for line in runtime.banner(me):
                log.info("%s", line)
        self.master = ctx.master
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
                loop.add_signal_handler(sig, self.stop)
        if self.check_every > 0:
            self.checker = loop.create_task(self._check_store_periodically())
        self.collector = loop.create_task(self._collect_periodically())

    async def done(self) -> None:
        if self.checker is not None:
            self.checker.cancel()
        if self.collector is not None:
            self.collector.cancel()
        if self.runtime is not None:
            runtime.remove(self.runtime)
            self.runtime = None

    def _check_startup_safety(self) -> None:
        confdir = Path(os.path.expanduser(ctx.options.confdir))
        try:
            for path in trust.secure_ca_keys(confdir):
                log.warning(
                    "%s (the CA's private key) was readable by others; made it private (mode 0600)", path
                )
        except OSError as e:
            log.error("the CA key in %s is readable by others and cannot be made private: %s", confdir, e)
        cache_dir = getattr(ctx.options, "fwd_cache_dir", None)
        directory = Path(os.path.expanduser(cache_dir)) if cache_dir else None
        if directory is not None and trust.open_to_others(directory):
            if trust.tighten_if_world_readable(directory):
                # Made with a usual umask (0755, 0775): ours to tighten, said once, no warning.
                log.info(
                    "made the cache directory %s private (mode 0700): it holds intercepted HTTPS responses",
                    cache_dir,
                )
            else:  # shared with a group on purpose, or not ours to change
                log.warning(
                    "the cache directory %s is readable by other users, and it holds the responses of "
                    "intercepted HTTPS in the clear: chmod 700 it unless that is meant",
                    cache_dir,
                )
        if ctx.options.ssl_insecure:
            # Loud on every start: an unverified origin can be impersonated by anyone on the path, and what the
            # impostor sends is cached and served to every client of this proxy.
            log.warning(
                "WARNING: origin TLS certificates are NOT verified (--upstream-insecure / ssl_insecure): anyone "
                "between this proxy and an origin can impersonate it, and the cache will serve what they send "
                "to every client"
            )

    # -- garbage ---------------------------------------------------------------------------------------

    async def _collect_periodically(self) -> None:
        """A full garbage collection every FULL_COLLECTION_EVERY seconds.

        mitmproxy's flows and layers are reference cycles, freed only by the collector. A flow that lives a
        while (a download streaming for seconds) is promoted to the oldest generation, which Python collects
        only once it has grown by a quarter since the last full collection: on a busy proxy its body chunks
        and buffers then wait for minutes. Measured with scripts/soak (50 connections, 40 s): RSS ended at
        274 MiB without this, 158-174 MiB with a full collection every 3-5 s. The start-up heap is frozen
        (engine.tune_gc), so a full collection walks only what came since: 20-90 ms under that load, under
        2 % of the CPU at one every 5 s."""
        while True:
            await asyncio.sleep(FULL_COLLECTION_EVERY)
            gc.collect()

    # -- the cache's health ---------------------------------------------------------------------------

    async def _check_store_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.check_every)
            store = getattr(self.master.addons.get("cache"), "store", None)
            if store is None:
                continue
            # TieredStore.check() is quick_check plus following a reopened database with the memory tier. The
            # quick_check reads the whole file, so it runs in a thread; the memory tier is not thread-safe and
            # follows by itself at its next lookup (tiered.FOLLOW_INTERVAL), so only the disk part runs there.
            started = time.monotonic()
            sound = await asyncio.to_thread(store.disk.check)
            log.debug(
                "cache database check: %s in %.2f s",
                "sound" if sound else "damaged",
                time.monotonic() - started,
            )

    # -- graceful stop --------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.in_flight.add(flow.id)

    def request(self, flow: http.HTTPFlow) -> None:
        self.in_flight.add(flow.id)  # background flows of our own start here

    def response(self, flow: http.HTTPFlow) -> None:
        self.in_flight.discard(flow.id)

    def error(self, flow: http.HTTPFlow) -> None:
        self.in_flight.discard(flow.id)

    def stop(self) -> None:
        """Begin a graceful stop; called a second time, stop now."""
        if self.stopping is not None or self.master is None:
            log.info("stopping now")
            (self.master or ctx.master).shutdown()
            return
        self.stopping = asyncio.get_running_loop().create_task(self._stop_gracefully())

    async def _stop_gracefully(self) -> None:
        proxyserver = self.master.addons.get("proxyserver")
        for instance in list(proxyserver.servers) if proxyserver else []:
            if instance.is_running:
                try:
                    await instance.stop()
                except OSError as e:
                    log.warning("stopping: could not close a listener (%s); going on", e)
        deadline = time.monotonic() + self.grace
        if self.in_flight:
            log.info(
                "stopping: no new connections; %d request(s) in flight get up to %g s to finish",
                len(self.in_flight),
                self.grace,
            )
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning(
                "stopping: %d request(s) still in flight after %g s are cut", len(self.in_flight), self.grace
            )
        self.master.shutdown()


def describe_running(host: str, port: int, pid: int) -> runtime.Running:
    """This proxy as its runtime file and banner describe it (options as currently set)."""
    confdir = os.path.expanduser(ctx.options.confdir)
    return runtime.Running(
        host=runtime.client_host(host),
        port=port,
        admin_port=int(getattr(ctx.options, "fwd_admin_port", 0) or 0),
        confdir=confdir,
        ca=str(Path(confdir) / "mitmproxy-ca-cert.pem"),
        cache_dir=os.path.expanduser(getattr(ctx.options, "fwd_cache_dir", "") or ""),
        pid=pid,
        version=__version__,
        started=time.time(),
    )


addons = [Lifecycle()]
