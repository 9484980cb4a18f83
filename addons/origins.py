"""Origin connections shared by all clients and DNS answers cached: the options of addons/_mitm/pool.py."""

from __future__ import annotations

import logging
import time

from fwdproxy.dnscache import NEGATIVE_TTL, DnsCache
from fwdproxy_addons import _mitm
from fwdproxy_addons._mitm import pool as _origins
from fwdproxy_addons._settings import SettingsSource

log = logging.getLogger("fwdproxy.origins")


class Origins:
    """Configures the process-wide pool and DNS cache; the patch in addons/_mitm/pool.py does the work."""

    def __init__(self, source: SettingsSource | None = None) -> None:
        self.source = source or SettingsSource()

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(loader, "fwd_dns_ttl", "fwd_origin_idle_timeout", "fwd_origin_max_connections")
        _mitm.install()

    def configure(self, updated: set[str]) -> None:
        s = self.source.current()
        shared = _origins.SHARED
        if s.dns_ttl != shared.dns.ttl:
            # Failures are kept 5 s at most, and never longer than answers (a TTL of 0 keeps nothing).
            negative = min(s.dns_ttl, NEGATIVE_TTL)
            shared.dns = DnsCache(shared.dns.resolver, time.monotonic, ttl=s.dns_ttl, negative_ttl=negative)
        shared.idle_timeout = s.origin_idle_timeout
        shared.pool.max_per_origin = s.origin_max_connections

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
