"""The cache service: the store, fleet, sidecar and in-flight tables an exchange's request-side actions need.

The cache addon (addons/cache.py) turns a flow into an Exchange and the actions into flow changes; what an
action does to anything but the flow happens here, without mitmproxy: opening and reconfiguring the store
from Settings, reading and checking entries, joining and leading flights, the whole fetch for ranges, the
fleet's shared tier, and offering bodies to the sidecar. The response side (tee, store, freshen after a 304,
resume for followers, landing) is in filling.py, the readers (checked reads, following a leader, the shared
tier, sidecar offers) in following.py: both are bases of the one CacheService.
"""

from __future__ import annotations

import asyncio
import logging
import os

from fwdproxy import store
from fwdproxy.cache.answer import Answer, close
from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.exchange import Exchange
from fwdproxy.cache.filling import Filling, Held, Noted, held
from fwdproxy.cache.following import COLLAPSE_WAIT, Following
from fwdproxy.cache.rules import Rule
from fwdproxy.cache.states import Action, Fleet, Found, Joined, Limits
from fwdproxy.config import Settings
from fwdproxy.http_model import Headers
from fwdproxy.inflight import Flight, Flights, KeyLocks
from fwdproxy.sidecar import Sidecar
from fwdproxy.store.fleet import FleetStore
from fwdproxy.store.shared import SharedTier
from fwdproxy.store.shared_client import password_from
from fwdproxy.store.shared_layout import parse_url

log = logging.getLogger("fwdproxy.cache")
__all__ = ["COLLAPSE_WAIT", "CacheService", "Held", "held", "whole_content"]


def cache_config(s: Settings, rules: tuple[Rule, ...]) -> CacheConfig:
    """The policy's configuration: ``--serve-stale-on-error``'s default covers unreachable origins only (RFC
    9111 §4.2.4); a value set on purpose extends to 5xx too (registry outage mode), and 0 turns both off."""
    seconds = s.serve_stale_on_error
    on_error = seconds if "serve_stale_on_error" in s.explicit else 0.0
    return CacheConfig(
        negative_ttl=s.negative_ttl,
        stale_if_disconnected=seconds,
        serve_stale_on_error=on_error,
        offline=s.offline,
        rules=rules,
    )


def limits(s: Settings) -> Limits:
    return Limits(s.max_object_size, s.stream_threshold, s.range_fetch_whole_below)


def shared_tier(s: Settings, environ: dict[str, str]) -> SharedTier | None:
    """--shared-cache and its companions (issue 20); None when off."""
    if not s.shared_cache:
        return None
    url = password_from(parse_url(s.shared_cache), s.shared_cache_password_file or None, environ)
    ca = s.shared_cache_ca or None
    if ca is not None and not os.path.isfile(os.path.expanduser(ca)):
        raise ValueError(f"--shared-cache-ca {ca}: no such file")
    return SharedTier(
        url,
        timeout=s.shared_timeout,
        object_max=s.shared_object_max,
        ca=os.path.expanduser(ca) if ca else None,
    )


def _opening(s: Settings) -> tuple[object, ...]:
    """What the open store was made from: a change of any of these reopens it."""
    return (
        os.path.expanduser(s.cache_dir),
        s.memory_cache_size,
        s.memory_object_max,
        s.disk_cache_size,
        s.shared_cache,
        s.shared_object_max,
        s.shared_timeout,
        s.shared_cache_password_file,
        s.shared_cache_ca,
    )


def whole_content(ans: Answer) -> bytes:
    """The bytes of an answer read into memory (its file read once and closed; ranges cut out of it)."""
    if ans.file is None:
        content = ans.content
    else:
        with ans.file:
            content = ans.file.file.read()
    if ans.parts is not None:
        content = b"".join(p if isinstance(p, bytes) else content[p.start : p.end + 1] for p in ans.parts)
    return content


class CacheService(Following, Filling):
    """The store and everything shared between the flows of one cache (one per Cache addon)."""

    def __init__(self, given: Settings | None = None) -> None:
        given = given if given is not None else Settings()
        self.opened: tuple[object, ...] | None = None
        """(directory, memory size, memory object max, disk size, the shared tier's options) of the open store."""
        self.store: store.TieredStore | None = None
        self.fleet: FleetStore | None = None
        """The store again when it is a fleet node's (--shared-cache, issue 20); None: no shared tier."""
        self.config = CacheConfig()
        self.limits = limits(given)
        self.revalidating: set[str] = set()
        """Primary keys with a background revalidation in flight (once per key, RFC 5861 §3)."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.flights = Flights()
        self.locks: KeyLocks | None = None
        self.sidecar: Sidecar | None = None
        self.checks: dict[tuple[str, tuple[bytes, int, int, int, int]], asyncio.Future[None]] = {}
        """Checksum checks of big body files under way, per (key, file identity): a crowd waits for one."""

    # -- life: open, reconfigure, start, check, close ------------------------------------------------

    def configure(self, s: Settings, rules: tuple[Rule, ...], environ: dict[str, str]) -> None:
        """Take new settings: the policy's and the limits at once; the store reopened only when one of the
        values it was opened with changed. Raises ValueError or OSError (the store could not be opened)."""
        self.config = cache_config(s, rules)
        self.limits = limits(s)
        wanted = _opening(s)
        if wanted != self.opened or self.store is None:
            directory = os.path.expanduser(s.cache_dir)
            os.makedirs(directory, mode=0o700, exist_ok=True)  # it holds decrypted HTTPS responses
            shared = shared_tier(s, environ)
            if self.store is not None:
                self.fleet = None
                self._close_store(self.store)
            self.locks = KeyLocks(directory)
            kind = store.TieredStore if shared is None else FleetStore
            self.store = kind.open(
                directory,
                memory_size=s.memory_cache_size,
                memory_object_max=s.memory_object_max,
                disk_size=s.disk_cache_size,
            )
            if isinstance(self.store, FleetStore) and shared is not None:
                self.fleet = self.store
                self.fleet.attach(shared)
                if self.sidecar is not None:  # changed while running: connect now
                    asyncio.get_running_loop().create_task(self.fleet.start())
            self.opened = wanted
        if self.fleet is not None:
            self.fleet.stream_above = (
                self.limits.stream_threshold
            )  # a big shared entry streams while copied in

    def _close_store(self, old: store.TieredStore) -> None:
        old.close()
        if isinstance(old, FleetStore):
            try:
                asyncio.get_running_loop().create_task(old.close_shared())
            except RuntimeError:
                pass  # configured before the loop runs: nothing was connected yet

    async def start(self) -> Sidecar:
        """The proxy runs: start the sidecar (big bodies from disk) and connect the shared tier."""
        self.sidecar = Sidecar()
        await self.sidecar.start()
        if self.fleet is not None:
            await self.fleet.start()
            assert self.fleet.shared is not None
            log.info("shared cache tier: %s", self.fleet.shared.url.redacted())
        return self.sidecar

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.sidecar is not None:
            await self.sidecar.close()
        if self.fleet is not None:
            await self.fleet.close_shared()
        if self.store is not None:
            self.store.close()

    async def check_store(self) -> bool | None:
        """Check the store's database (SQLite's quick_check); None when no store is open."""
        if self.store is None:
            return None
        # TieredStore.check() is quick_check plus following a reopened database with the memory tier. The
        # quick_check reads the whole file, so it runs in a thread; the memory tier is not thread-safe and
        # follows by itself at its next lookup (tiered.FOLLOW_INTERVAL), so only the disk part runs there.
        return await asyncio.to_thread(self.store.disk.check)

    def look(
        self,
        ex: Exchange,
        noted: Noted,
        *,
        bypass: str | None,
        replay: bool,
        collapse: bool,
        may_check: bool,
        now: float,
    ) -> tuple[Action, store.Entry | None]:
        """§4: drive a new exchange as far as it goes without waiting or touching the flow. Returns the
        action for the addon (SERVE*, REJECT, FETCH_WHOLE, FORWARD_VALIDATING, FORWARD, or one that waits:
        AWAIT_CHECK with ``held.pending``, FOLLOW with ``held.leader``, WAIT_REMOTE, LOOKUP_SHARED) and the
        entry a SERVE answers from."""
        assert self.store is not None
        action = ex.begin(bypass=bypass, offline=self.config.offline)
        if action is Action.LOOKUP:
            whole = False
            if (lead := noted.whole) is not None:
                noted.whole = None  # our whole fetch for ranges: it leads, whatever happens next
                noted.held, whole = Held(flight=lead[0], lock_fd=lead[1]), True
            action = ex.looked_up(
                self.store.variants(ex.primary),
                now=now,
                config=self.config,
                in_flight=ex.primary in self.flights.table,
                background=noted.background,
                replay=replay,
                whole=whole,
                may_check=may_check,
                collapse=collapse,
                fetch_whole_below=self.limits.fetch_whole_below,
                fleet=Fleet.OFF if self.fleet is None else _fleet(noted),
            )
        entry = None
        while True:
            if action is Action.READ:
                got = self.checked_get(ex.selected, may_check=ex.may_check)
                if isinstance(got, asyncio.Future):
                    held(noted).pending = got
                    action = ex.read(Found.PENDING)
                elif got is None:
                    action = ex.read(Found.NONE)
                else:
                    if ex.verified:  # only checked before validating: read again when the origin answers
                        close(got.body)
                    else:
                        entry = got
                    action = ex.read(Found.ENTRY)
            elif action is Action.JOIN:
                action = ex.joined(self._join(ex, noted))
            else:
                if action is Action.LOOKUP_SHARED:
                    noted.shared_tried = True  # once per flow: then a new exchange looks again
                return action, entry

    def _join(self, ex: Exchange, noted: Noted) -> Joined:
        """Join the key's flight: lead it (taking the cross-process lock first), or follow its leader."""
        fd = None
        if self.locks is not None and ex.primary not in self.flights.table:
            fd = self.locks.try_lock(ex.primary)
            if fd is None:
                return Joined.REMOTE
        flight, leader = self.flights.join(ex.primary)
        if not leader:
            held(noted).leader = flight
            return Joined.FOLLOW
        mine = held(noted)
        mine.flight, mine.lock_fd = flight, fd
        return Joined.LEAD

    def validators(self, ex: Exchange, noted: Noted) -> Headers | None:
        """FORWARD_VALIDATING (§4.3.1): hold the selected entry's body (a 304 or an error is answered from
        it) and give the validators to ask with; None when it is gone or its body file changed since it
        was checked (the origin sends it whole)."""
        entry = self.checked_get(ex.selected, may_check=False) if ex.selected else None
        if entry is None or isinstance(entry, asyncio.Future):
            return None
        held(noted).body = entry.body
        return ex.hold(entry.meta)

    def lead_whole(self, ex: Exchange, noted: Noted) -> tuple[Flight, int | None] | None:
        """FETCH_WHOLE (Squid's range_offset_limit, collapsed): lead the key's flight for a whole fetch of our
        own, which this request follows (``held.leader``). None when another process fetches the key (the
        request then waits for its lock)."""
        fd: int | None = None
        if self.locks is not None:
            fd = self.locks.try_lock(ex.primary)
            if fd is None:
                return None
        flight, _ = self.flights.join(
            ex.primary
        )  # nobody is in flight (fetches_whole): the whole fetch leads
        flight.followers += 1  # and this request follows it
        held(noted).leader = flight
        return flight, fd

    def whole_ended(self, primary: str, lead: tuple[Flight, int | None], noted: Noted) -> None:
        """The whole fetch ended: when the cache never took the lead (an addon answered it first), land it."""
        if noted.whole is None:
            return
        noted.whole = None
        flight, fd = lead
        if fd is not None and self.locks is not None:
            self.locks.unlock(primary, fd)
        self.flights.land(primary, flight, False, body_complete=False)

    def revalidation(self, primary: str) -> bool:
        """SERVE_AND_REVALIDATE (RFC 5861 §3): whether to start one (one per key at a time); the caller says
        ``revalidated`` when it ends."""
        if primary in self.revalidating:
            return False
        self.revalidating.add(primary)
        return True

    def revalidated(self, primary: str) -> None:
        self.revalidating.discard(primary)


def _fleet(noted: Noted) -> Fleet:
    """Where the flow stands with the shared tier (only asked when there is one)."""
    if not noted.shared_tried:
        return Fleet.TRY
    return Fleet.COPIED if noted.shared_hit else Fleet.TRIED
