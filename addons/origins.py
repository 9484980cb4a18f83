"""Origin connections shared by all clients and DNS answers cached: the options of addons/_mitm/pool.py."""

from __future__ import annotations

import logging
import time

from mitmproxy import ctx, exceptions

from fwdproxy.dnscache import NEGATIVE_TTL, DnsCache
from fwdproxy.units import parse_duration
from fwdproxy_addons import _mitm
from fwdproxy_addons._mitm import pool as _origins

log = logging.getLogger("fwdproxy.origins")


class Origins:
    """Configures the process-wide pool and DNS cache; the patch in addons/_mitm/pool.py does the work."""

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "fwd_dns_ttl",
            str,
            "60s",
            "How long a DNS answer is reused (failures: 5s at most); 0: every connection resolves.",
        )
        loader.add_option(
            "fwd_origin_idle_timeout",
            str,
            "60s",
            "How long an idle plain-HTTP origin connection waits in the shared pool; 0: no sharing.",
        )
        loader.add_option(
            "fwd_origin_max_connections",
            int,
            16,
            "Shared plain-HTTP connections per origin at most (busy and idle); more requests wait for one.",
        )
        _mitm.install()

    def configure(self, updated: set[str]) -> None:
        shared = _origins.SHARED
        if "fwd_dns_ttl" in updated:
            try:
                ttl = parse_duration(ctx.options.fwd_dns_ttl)
            except ValueError as e:
                raise exceptions.OptionsError(f"fwd_dns_ttl: {e}") from e
            # Failures are kept 5 s at most, and never longer than answers (a TTL of 0 keeps nothing).
            negative = min(ttl, NEGATIVE_TTL)
            shared.dns = DnsCache(shared.dns.resolver, time.monotonic, ttl=ttl, negative_ttl=negative)
        if "fwd_origin_idle_timeout" in updated:
            try:
                shared.idle_timeout = parse_duration(ctx.options.fwd_origin_idle_timeout)
            except ValueError as e:
                raise exceptions.OptionsError(f"fwd_origin_idle_timeout: {e}") from e
        if "fwd_origin_max_connections" in updated:
            limit = ctx.options.fwd_origin_max_connections
            if limit < 1:
                raise exceptions.OptionsError(
                    f"fwd_origin_max_connections: {limit} is not a positive number of connections; try e.g. 16"
                )
            shared.pool.max_per_origin = limit

    def done(self) -> None:
        shared = _origins.SHARED
        log.debug(
            "origin connections opened %d, reused %d, replayed %d; DNS lookups %d, answered from cache %d",
            shared.pool.opened,
            shared.pool.reused,
            shared.replays,
            shared.dns.stats.lookups,
            shared.dns.stats.hits,
        )


addons = [Origins()]
