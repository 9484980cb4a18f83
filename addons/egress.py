"""Egress through upstream proxies: route each request by host, pick a healthy member, fail over, keep score."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import Coroutine
from typing import Any

from mitmproxy import connection, http, tls
from mitmproxy import flow as mflow
from mitmproxy.net.http import url
from mitmproxy.proxy import layer, server_hooks

from fwdproxy import balance
from fwdproxy.cache.key import primary_key
from fwdproxy_addons import _check, _flowinfo, _mitm, _respond
from fwdproxy_addons._mitm import via as _via
from fwdproxy_addons._notes import notes, peek
from fwdproxy_addons._settings import SettingsSource

log = logging.getLogger("fwdproxy.egress")

PROBE_TIMEOUT = 3.0
"""Seconds a member may take to accept the pre-request probe before we count a failure and try the next
one. An upstream proxy is a nearby, always-on service: a LAN or cross-region round trip is far below a
second, so 3 s tolerates a loaded proxy while a blackholed one costs a client 3 s, not the OS's 2 minutes."""

GOOD_FOR = 5.0
"""Seconds a member counts as reachable after a response or probe, during which requests skip the probe.
A busy member is never probed; an idle one costs one probe connection per 5 s of use. A member that dies
inside the window fails the requests already on their way to it (see README, "Upstream proxies")."""

_CONNECT_REFUSED = re.compile(r"refused HTTP CONNECT request: (\d{3})")
_PROXY_STATUS_ERROR = re.compile(r";\s*error\s*=", re.IGNORECASE)


class Chosen:
    """The member a flow or a pass-through tunnel was given, until it is released.

    A plain class, not a dataclass: ``mitmdump -s`` runs this file as a module missing from sys.modules,
    where @dataclass cannot resolve string annotations.
    """

    __slots__ = ("balancer", "member", "started", "answered", "released", "client_id")

    def __init__(
        self, balancer: balance.Balancer, member: balance.Member, started: float, client_id: str = ""
    ) -> None:
        self.balancer = balancer
        """The balancer that chose it (kept: a config reload must not release into a new one)."""
        self.member = member
        self.started = started
        """time.monotonic() when the request left for the member."""
        self.answered = False
        """A first byte (or the failure) has been recorded."""
        self.released = False
        self.client_id = client_id
        """For tunnels: the client connection, to release the member if the client leaves first."""


def _chosen(flow: http.HTTPFlow) -> Chosen | None:
    """The upstream chosen for the flow, if any."""
    noted = peek(flow)
    return noted.egress if noted is not None else None


def proxy_error(response: http.Response) -> bool:
    """Whether a 502/503/504 is the upstream proxy's own, not an origin's answer it relays.

    RFC 9209 ``Proxy-Status`` with an ``error=`` parameter is how a proxy says it failed itself; Squid adds
    ``X-Squid-Error``. Without either we assume the origin answered: a sick origin must not eject a
    healthy proxy.
    """
    if response.status_code not in (502, 503, 504):
        return False
    if "X-Squid-Error" in response.headers:
        return True
    return any(_PROXY_STATUS_ERROR.search(v) for v in response.headers.get_all("Proxy-Status"))


def blames_member(message: str) -> bool:
    """Whether a flow error before any response byte counts against the upstream proxy."""
    if "Client disconnected" in message or message == mflow.Error.KILLED_MESSAGE:
        return False  # the client went away
    if m := _CONNECT_REFUSED.search(message):
        # The proxy's own answer to CONNECT. 502/503/504 say it cannot serve; 403/407 are policy or our
        # credentials, which another try will not fix either, but they say the proxy is alive.
        return int(m.group(1)) in (502, 503, 504)
    # TLS runs end to end with the origin through the tunnel: a certificate problem is the origin's.
    return "TLS" not in message and "certificate" not in message.lower()


class Egress:
    """Sends flows and pass-through tunnels through the upstream proxy group their host routes to."""

    def __init__(self, source: SettingsSource | None = None) -> None:
        self.source = source or SettingsSource()
        self.config = balance.EgressConfig()
        self.egress = balance.Egress(self.config)
        self.auth: dict[tuple[str, int], str | None] = {}
        """Proxy-Authorization per member address (the CONNECT hook knows only the address)."""
        self.good_until: dict[tuple[str, int], float] = {}
        self.tunnels: dict[str, Chosen] = {}
        """Pass-through tunnels chosen in tls_clienthello, by the id of their server connection."""
        self.open_tunnels: dict[str, Chosen] = {}
        """Established tunnels, by the id of the connection to the upstream proxy (released on close)."""
        self.wrapped: weakref.WeakSet[connection.Server] = weakref.WeakSet()
        self.checks: list[asyncio.Task[None]] = []
        self.is_running = False

    # -- options ---------------------------------------------------------------------------------------

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(loader, "fwd_upstreams", "fwd_balance", "fwd_config")
        _mitm.install()  # absolute-form requests to an upstream proxy (addons/_mitm/via.py)

    def configure(self, updated: set[str]) -> None:
        resolved = self.source.resolved()  # checked when the settings were made, with the file's name
        if resolved.egress == self.config:
            return  # unchanged: keep the members' health and counters
        self.config, self.auth = resolved.egress, dict(resolved.upstream_auth)
        self.egress = balance.Egress(self.config)
        if self.is_running:
            self._start_checks()

    def stats(self) -> tuple[balance.MemberStats, ...]:
        """Counters of every member of every group, for the stats and metrics endpoints."""
        return self.egress.stats(now=time.monotonic())

    # -- flows -----------------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        # A streamed request body leaves right after this hook, before `request` runs (mitmproxy-notes §3).
        return self._route(flow) if flow.request.stream else None

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        return self._route(flow)

    def _route(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """A coroutine choosing the flow's upstream, or None when it leaves directly or is not leaving at all
        (hooks are sync where they can be: a coroutine per hit costs more than the check)."""
        if flow.response is not None or flow.error is not None:
            return None  # answered (a cache hit, a refusal) or dead: no upstream is touched
        if (noted := peek(flow)) is not None and (noted.egress is not None or noted.sidecar):
            return None  # already routed, or pointed at the cache's sidecar (local)
        balancer = self.egress.route(flow.request.host)
        if balancer is None:
            return None
        return self._route_through(flow, balancer)

    async def _route_through(self, flow: http.HTTPFlow, balancer: balance.Balancer) -> None:
        key = primary_key(flow.request.method, _flowinfo.note_request(flow)[0])  # the cache's key
        choice = await self._choose(balancer, flow.client_conn, key, flow.request.pretty_url)
        if isinstance(choice, balance.NoMember):
            log.warning("%s %s: %s", flow.request.method, flow.request.pretty_url, choice.message)
            flow.response = _respond.text(502, choice.message)
            return
        # A fresh Server: the flow's own is shared with its client connection's other flows (mitmproxy-notes §5).
        flow.server_conn = connection.Server(address=(flow.request.host, flow.request.port))
        flow.server_conn.via = ("https" if choice.scheme == "https" else "http", choice.address)
        if flow.request.scheme == "http":
            # Absolute form for the proxy (see _via.AbsoluteForm); mitmproxy cleared it in regular mode.
            flow.request.authority = url.hostport("http", flow.request.host, flow.request.port)
            # RFC 9110 §11.7.2: Proxy-Authorization is for the next proxy only. A client's own (for us) is
            # never passed on; ours goes only on this request, which only this member's connection carries.
            flow.request.headers.pop("Proxy-Authorization", None)
            if (auth := choice.proxy_authorization) is not None:
                flow.request.headers["Proxy-Authorization"] = auth
        # https: the CONNECT to the member carries the credentials (http_connect_upstream); the request
        # itself travels inside TLS to the origin and must not.
        notes(flow).egress = Chosen(balancer, choice, time.monotonic())

    def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        # flow.server_conn is the connection to the upstream proxy (_upstream_proxy.start_handshake).
        address = flow.server_conn.address
        if address is not None and (auth := self.auth.get(address)) is not None:
            flow.request.headers["Proxy-Authorization"] = auth

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        chosen = _chosen(flow)
        if chosen is None or chosen.answered or flow.response is None:
            return
        now = time.monotonic()
        if proxy_error(flow.response):
            self._failed(chosen, now, f"answered {flow.response.status_code} itself")
        else:
            chosen.answered = True
            self._log(chosen.balancer.first_byte(chosen.member, now - chosen.started, now=now))
            self.good_until[chosen.member.address] = now + GOOD_FOR

    def response(self, flow: http.HTTPFlow) -> None:
        if (chosen := _chosen(flow)) is not None:
            self._release(chosen)

    def error(self, flow: http.HTTPFlow) -> None:
        chosen = _chosen(flow)
        if chosen is None:
            return
        message = flow.error.msg if flow.error else ""
        if not chosen.answered and blames_member(message):
            self._failed(chosen, time.monotonic(), message)
        self._release(chosen)

    # -- pass-through tunnels --------------------------------------------------------------------------

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if not self.egress.balancers:
            return  # nothing to route: leave mitmproxy's stack as it is
        if _via.wrap_tunnel(nextlayer, self._tunnel_result) is not None:
            self.wrapped.add(nextlayer.context.server)

    async def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        server = data.context.server
        if not data.ignore_connection or server.address is None or server.via is not None:
            return
        host, port = server.address
        balancer = self.egress.route(host)
        if balancer is None:
            return
        what = f"tunnel to {url.hostport('https', host, port)}"
        if server not in self.wrapped:
            # Relaying it directly would leave through the wrong door: refuse instead.
            server.error = f"{what} cannot be routed through group {balancer.group.name!r}"
            log.error("%s", server.error)
            return
        choice = await self._choose(balancer, data.context.client, f"CONNECT {host}:{port}", what)
        if isinstance(choice, balance.NoMember):
            server.error = choice.message
            log.warning("%s: %s", what, choice.message)
            return
        if choice.scheme != "http":
            balancer.release(choice)
            server.error = f"{what}: {choice.url} is an https:// proxy; pass-through tunnels need http://"
            log.error("%s", server.error)
            return
        server.via = ("http", choice.address)
        self.tunnels[server.id] = Chosen(balancer, choice, time.monotonic(), client_id=data.context.client.id)

    def _tunnel_result(self, conn: connection.Server, upstream: connection.Server, err: str | None) -> None:
        chosen = self.tunnels.pop(conn.id, None)
        if chosen is None:
            return
        now = time.monotonic()
        if err is None:
            chosen.answered = True
            self._log(chosen.balancer.first_byte(chosen.member, now - chosen.started, now=now))
            self.good_until[chosen.member.address] = now + GOOD_FOR
            self.open_tunnels[upstream.id] = chosen
            return
        if blames_member(err):
            self._failed(chosen, now, err)
        self._release(chosen)

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        if (chosen := self.open_tunnels.pop(data.server.id, None)) is not None:
            self._release(chosen)

    def client_disconnected(self, client: connection.Client) -> None:
        # A tunnel whose client left before its server connection was opened is never reported.
        for key, chosen in list(self.tunnels.items()):
            if chosen.client_id == client.id:
                self._release(self.tunnels.pop(key))

    # -- choosing, health --------------------------------------------------------------------------------

    async def _choose(
        self, balancer: balance.Balancer, client: connection.Client, key: str, what: str
    ) -> balance.Member | balance.NoMember:
        """The balancer's choice, after failing over (each member once) past members that refuse to connect."""
        client_ip = client.peername[0] if client.peername else ""
        tried: list[balance.Member] = []
        while True:
            now = time.monotonic()
            choice = balancer.choose(now=now, client_ip=client_ip, cache_key=key, tried=tried)
            if isinstance(choice, balance.NoMember) or self.good_until.get(choice.address, 0.0) > now:
                return choice
            err = await _check.connects(choice, PROBE_TIMEOUT)
            if err is None:
                self.good_until[choice.address] = time.monotonic() + GOOD_FOR
                return choice
            log.info("%s: upstream %s: %s; trying another member", what, choice.url, err)
            self._log(balancer.failed(choice, now=time.monotonic()))
            balancer.release(choice)
            tried.append(choice)

    def _failed(self, chosen: Chosen, now: float, why: str) -> None:
        chosen.answered = True
        self.good_until.pop(chosen.member.address, None)
        log.info("upstream %s of group %r failed: %s", chosen.member.url, chosen.balancer.group.name, why)
        self._log(chosen.balancer.failed(chosen.member, now=now))

    def _release(self, chosen: Chosen) -> None:
        if not chosen.released:
            chosen.released = True
            chosen.balancer.release(chosen.member)

    def _log(self, event: balance.Event | None) -> None:
        if event is None:
            return
        if event.change is balance.Change.EJECTED:
            log.warning("%s", event.message)
        else:
            log.info("%s", event.message)

    # -- active health checks ----------------------------------------------------------------------------

    def running(self) -> None:
        self.is_running = True
        self._start_checks()

    def done(self) -> None:
        self.is_running = False
        self._stop_checks()

    def _start_checks(self) -> None:
        self._stop_checks()
        for balancer in self.egress.balancers.values():
            if balancer.group.health_check is not None:
                self.checks.append(asyncio.create_task(self._check_loop(balancer)))

    def _stop_checks(self) -> None:
        for task in self.checks:
            task.cancel()
        self.checks = []

    async def _check_loop(self, balancer: balance.Balancer) -> None:
        check = balancer.group.health_check
        assert check is not None
        while True:
            await asyncio.sleep(check.interval)
            results = await asyncio.gather(
                *(
                    _check.fetch(m, check.url, min(check.interval, PROBE_TIMEOUT))
                    for m in balancer.group.members
                )
            )
            now = time.monotonic()
            for member, err in zip(balancer.group.members, results, strict=True):
                if err is not None:
                    log.debug("health check of %s via %s failed: %s", check.url, member.url, err)
                    self.good_until.pop(member.address, None)
                self._log(balancer.check_result(member, err is None, now=now))


addons = [Egress()]
