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
from fwdproxy_addons._neighbours import HasPort, Server, StoreCheck
from fwdproxy_addons._settings import SettingsSource

log = logging.getLogger("fwdproxy")


FULL_COLLECTION_EVERY = 5.0
"""Seconds between full garbage collections (see Lifecycle._collect_periodically)."""


class Lifecycle:
    """Lazy origin connections, origin trust from the OS store, and the startup announcement.

    On SIGTERM or SIGINT the proxy stops accepting connections, lets the requests in flight finish for up to
    ``fwd_shutdown_grace``, then shuts down (a second signal: at once). A transfer still running then is cut,
    and the cache never commits a cut body, so the cache directory is consistent whenever the process ends.
    """

    def __init__(
        self,
        source: SettingsSource | None = None,
        cache: StoreCheck | None = None,
        admin: HasPort | None = None,
        server: Server | None = None,
    ) -> None:
        self.source = source or SettingsSource()
        self.proxyserver = server or Server()
        """mitmproxy's Proxyserver, shared through chain() (addons/_neighbours.py)."""
        self.cache = cache
        """The cache addon: its store gets a periodic check; None when Lifecycle runs without it."""
        self.admin = admin
        """The admin addon, for the port the runtime file names; None when Lifecycle runs without it."""
        self.settings = self.source.given
        self.listening: tuple[str, int] | None = None
        self.insecure_applied = False
        self.trust_inputs: tuple[str | None, str] | None = None
        self.trust_bundle: str | None = None
        """The ssl_verify_upstream_trusted_ca value we set (a different one is the user's own)."""
        self.in_flight: set[str] = set()
        """Ids of the flows between their request head and their response or error."""
        self.master: Any = None
        self.stopping: asyncio.Task[None] | None = None
        self.checker: asyncio.Task[None] | None = None
        self.collector: asyncio.Task[None] | None = None
        self.runtime: runtime.Running | None = None
        """What this process wrote to its runtime file (``fwd_role=run``), removed at a clean stop."""

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(
            loader,
            "fwd_upstream_ca",
            "fwd_upstream_insecure",
            "fwd_shutdown_grace",
            "fwd_role",
            "fwd_store_check_every",
        )

    def configure(self, updated: set[str]) -> None:
        self.settings = s = self.source.current()
        if s.upstream_insecure and not self.insecure_applied:
            self.insecure_applied = True
            ctx.options.ssl_insecure = True
        # Hits, passthrough decisions and per-flow upstreams all need the origin connection to open only when a
        # request needs it (mitmproxy-notes §1, §5, §6).
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            ctx.options.connection_strategy = "lazy"
        inputs = (s.upstream_ca, ctx.options.confdir)
        if inputs != self.trust_inputs:
            current = ctx.options.ssl_verify_upstream_trusted_ca
            if current and current != self.trust_bundle and not s.upstream_ca:
                return  # the user set mitmproxy's own option explicitly: leave it alone
            try:
                bundle = trust.origin_trust(s.upstream_ca, Path(os.path.expanduser(ctx.options.confdir)))
            except ValueError as e:
                raise exceptions.OptionsError(f"fwd_upstream_ca: {e}") from e
            self.trust_inputs = inputs
            if bundle and bundle != current:
                self.trust_bundle = bundle
                ctx.options.ssl_verify_upstream_trusted_ca = bundle

    def running(self) -> None:
        proxyserver = self.proxyserver.get()
        addrs = proxyserver.listen_addrs() if proxyserver else []
        if not addrs:
            message = runtime.listen_failure(ctx.options.listen_host, ctx.options.listen_port)
            if self.settings.role == "script":
                log.error("%s", message)
            else:  # fwdproxy run: one plain line (mitmproxy's own, with its --mode hint, is filtered out)
                print(f"fwdproxy: {message}", file=sys.stderr, flush=True)
            ctx.master.shutdown()
            return
        host, port = addrs[0][:2]
        self.listening = (host, port)
        self._check_startup_safety()  # before the listening line, so whoever waits for it sees the warnings
        role = self.settings.role
        me = describe_running(
            host,
            port,
            os.getpid(),
            admin_port=self.admin.port if self.admin is not None else 0,
            cache_dir=self.settings.cache_dir if self.cache is not None else "",
        )
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
        if self.settings.store_check_every > 0:
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
        cache_dir = self.settings.cache_dir if self.cache is not None else None
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
            await asyncio.sleep(self.settings.store_check_every)
            if self.cache is None:
                return
            started = time.monotonic()
            sound = await self.cache.check_store()
            if sound is None:
                continue  # no store open (yet)
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
        proxyserver = self.proxyserver.get()
        for instance in list(proxyserver.servers) if proxyserver else []:
            if instance.is_running:
                try:
                    await instance.stop()
                except OSError as e:
                    log.warning("stopping: could not close a listener (%s); going on", e)
        deadline = time.monotonic() + self.settings.shutdown_grace
        if self.in_flight:
            log.info(
                "stopping: no new connections; %d request(s) in flight get up to %g s to finish",
                len(self.in_flight),
                self.settings.shutdown_grace,
            )
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning(
                "stopping: %d request(s) still in flight after %g s are cut",
                len(self.in_flight),
                self.settings.shutdown_grace,
            )
        self.master.shutdown()


def describe_running(host: str, port: int, pid: int, *, admin_port: int, cache_dir: str) -> runtime.Running:
    """This proxy as its runtime file and banner describe it."""
    confdir = os.path.expanduser(ctx.options.confdir)
    return runtime.Running(
        host=runtime.client_host(host),
        port=port,
        admin_port=admin_port,
        confdir=confdir,
        ca=str(Path(confdir) / "mitmproxy-ca-cert.pem"),
        cache_dir=os.path.expanduser(cache_dir),
        pid=pid,
        version=__version__,
        started=time.time(),
    )


addons = [Lifecycle()]
