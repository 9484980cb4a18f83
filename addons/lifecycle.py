"""Engine defaults every fwdproxy chain relies on, and the ``fwdproxy listening at HOST:PORT`` line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from mitmproxy import ctx, exceptions

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from fwdproxy import trust

log = logging.getLogger("fwdproxy")


class Lifecycle:
    """Lazy origin connections, origin trust from the OS store, and the startup announcement."""

    def __init__(self) -> None:
        self.listening: tuple[str, int] | None = None

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "fwd_upstream_ca",
            str,
            "",
            "Extra CA bundle (PEM) trusted for origin certificates, beside the OS store.",
        )

    def configure(self, updated: set[str]) -> None:
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
            log.error(
                "could not listen on %s:%s (is the port in use?)",
                ctx.options.listen_host,
                ctx.options.listen_port,
            )
            ctx.master.shutdown()
            return
        host, port = addrs[0][:2]
        self.listening = (host, port)
        print(f"fwdproxy listening at {host}:{port}", file=sys.stdout, flush=True)
        ca = Path(os.path.expanduser(ctx.options.confdir)) / "mitmproxy-ca-cert.pem"
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        log.info("CA certificate (trust it to cache HTTPS): %s", ca)
        log.info("try: curl -x http://%s:%s --cacert %s https://example.org/", shown, port, ca)
        log.info("or:  export HTTP_PROXY=http://%s:%s HTTPS_PROXY=http://%s:%s", shown, port, shown, port)


addons = [Lifecycle()]
