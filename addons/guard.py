"""Hostile or broken input stopped at the door: oversized heads, too many fields, a Host that disagrees with
the target, targets and authorities that could be read two ways, requests addressed to the proxy itself, and
responses with bytes past their end."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Coroutine
from typing import Any

from mitmproxy import ctx, http

from fwdproxy import guard, target
from fwdproxy_addons import _mitm, _respond
from fwdproxy_addons._mitm import http1 as _http1
from fwdproxy_addons._neighbours import HasPort, Server
from fwdproxy_addons._notes import notes

log = logging.getLogger("fwdproxy.guard")

RESOLVE_TIMEOUT = 5.0
"""Seconds the loop check waits for the resolver; a name that does not resolve by then is let through (the
connect resolves it again, and mitmproxy's own check still refuses 127.0.0.1, ::1 and localhost)."""


class Guard:
    """Answers 431/400/421/508 before the cache or the origin see a request that should not go further."""

    def load(self, loader):  # type: ignore[no-untyped-def]
        _mitm.install()  # request and response heads over guard.MAX_HEAD_BYTES: 431 / 502 (addons/_mitm/http1.py)

    def __init__(self, admin: HasPort | None = None, server: Server | None = None) -> None:
        self.admin_addon = admin
        self.proxyserver = server or Server()
        """mitmproxy's Proxyserver, shared through chain() (addons/_neighbours.py)."""
        """The admin addon, whose port is ours too (a request to it through the proxy loops); None: none."""
        self.addresses: tuple[tuple[str, int], ...] = ()
        self.admin: tuple[tuple[str, int], ...] = ()
        self.ports: frozenset[int] = frozenset()
        self.addresses_until = 0.0
        self.local: dict[str, bool] = {}
        """Address -> it belongs to one of this machine's interfaces (asked of the kernel once)."""

    def _refresh(self) -> None:
        # listen_addrs() asks the kernel (getsockname) for every listener: look again once a second at most.
        now = time.monotonic()
        if now < self.addresses_until:
            return
        proxyserver = self.proxyserver.get()
        self.addresses = tuple((a[0], a[1]) for a in proxyserver.listen_addrs()) if proxyserver else ()
        admin_port = self.admin_addon.port if self.admin_addon is not None else 0
        host = ctx.options.listen_host
        # addons/admin.py listens on the listen host, or everywhere (both families) when it is empty.
        self.admin = ((host, admin_port),) if host else (("0.0.0.0", admin_port), ("::", admin_port))
        self.admin = self.admin if admin_port else ()
        self.ports = frozenset(port for _, port in self.addresses + self.admin)
        self.addresses_until = now + 1.0 if self.addresses else now

    def _is_local(self, address: str) -> bool:
        """Whether ``address`` is one of this machine's: the kernel lets a socket bind only to those."""
        known = self.local.get(address)
        if known is None:
            family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
            known = True
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.bind((address, 0))
            except OSError:
                known = False
            if len(self.local) > 1024:
                self.local.clear()  # addresses come and go; the set of asked ones stays small anyway
            self.local[address] = known
        return known

    def _loop_check(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """A coroutine that answers 508 if the target is this proxy, or None when its port is none of ours
        (the cheap check: requests to other ports never wait for a resolver)."""
        reached = flow.client_conn.sockname
        if not self.may_target_self(flow.request.port, reached):
            return None
        return self._refuse_loop(flow, (reached[0], reached[1]) if reached else None)

    def may_target_self(self, port: int, reached: tuple[str, int] | None) -> bool:
        """Whether a request to ``port`` on a connection that reached us at ``reached`` needs the loop check
        (the cheap part: one of our ports). The fast hit layer leaves such requests to the full path."""
        self._refresh()
        return port in self.ports or bool(reached and reached[1] == port)

    async def _refuse_loop(self, flow: http.HTTPFlow, reached_at: tuple[str, int] | None) -> None:
        host, port = flow.request.host, flow.request.port
        resolved: tuple[str, ...] = ()
        if guard.literal_address(host) is None:
            # Compare after resolution, as the connect would: a name may point at us (RFC 5842 §7.2).
            with contextlib.suppress(OSError, TimeoutError, UnicodeError):
                infos = await asyncio.wait_for(
                    asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                    RESOLVE_TIMEOUT,
                )
                resolved = tuple(str(info[4][0]) for info in infos)
        targets = guard.candidates(host, resolved)
        local = frozenset(t for t in targets if self._is_local(t))
        admin = guard.targets_self(host, port, self.admin, None, resolved, local)
        if not admin and not guard.targets_self(host, port, self.addresses, reached_at, resolved, local):
            return
        message = guard.loop_message(host, port, admin=admin)
        log.warning("%s %s from %s: %s", flow.request.method, flow.request.pretty_url, _peer(flow), message)
        flow.response = _respond.text(508, message)

    def http_connect(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if flow.response is not None or self._refuses_authority(
            flow, flow.request.authority, "CONNECT target"
        ):
            return None
        return self._loop_check(flow)

    def _refuse(self, flow: http.HTTPFlow, refusal: target.Refusal | guard.Verdict) -> bool:
        request = flow.request
        log.warning(
            "%s %r from %s: %s",
            request.method,
            request.path or request.authority,
            _peer(flow),
            refusal.message,
        )
        # HTTP/1: the next request on this connection may be as broken; HTTP/2 has no Connection field.
        close = {} if request.is_http2 or request.is_http3 else {"Connection": "close"}
        flow.response = _respond.text(refusal.status, refusal.message, close)
        return True

    def _refuses_authority(self, flow: http.HTTPFlow, value: str, where: str) -> bool:
        refusal = target.check_authority(value, where)
        return refusal is not None and self._refuse(flow, refusal)

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if flow.response is not None or flow.is_replay:
            return None
        request = flow.request
        fields = request.headers.fields
        hosts = [value for name, value in fields if name.lower() == b"host"]
        verdict = guard.check_counts(len(fields), len(hosts))
        if verdict is not None:
            self._refuse(flow, verdict)
            return None
        if self._refuses_target(flow, hosts):
            return None
        # RFC 9112 §3.2.2: a proxy given an absolute URL ignores the Host field and sends the URL's authority.
        # Forwarding the client's Host would let it store one site's page under another site's URL.
        if hosts:
            scheme, host, port = request.scheme, request.host, request.port
            if not guard.host_agrees(hosts[0].decode("utf-8", "surrogateescape"), scheme, host, port):
                request.headers["Host"] = guard.authority(scheme, host, port)
                if log.isEnabledFor(logging.INFO):
                    log.info(
                        "%s %s: Host %r replaced by the URL's authority",
                        request.method,
                        request.url,
                        hosts[0],
                    )
        return self._loop_check(flow)

    def _refuses_target(self, flow: http.HTTPFlow, hosts: list[bytes]) -> bool:
        """Issue 16: the target that is forwarded is the one the cache keys on, read one way only."""
        request = flow.request
        refusal = target.check_path(request.method, request.path)
        if refusal is not None:
            return self._refuse(flow, refusal)
        if "#" in request.path:
            request.path = target.without_fragment(request.path)
        named = [("Host", h.decode("utf-8", "surrogateescape")) for h in hosts]
        # :authority, or an absolute-form target inside a tunnel (outside one, mitmproxy has already parsed
        # it into host and port, refusing userinfo, and blanked it to send origin-form).
        if request.authority:
            named.insert(0, (":authority" if request.is_http2 else "target authority", request.authority))
        for where, value in named:
            if value and self._refuses_authority(flow, value, where):
                return True
        # Only a tunnel's requests reach this hook with a server address: the CONNECT target. mitmproxy
        # connects there (and the cache keys on it) whatever the request names, while an origin serving
        # several sites answers for the name it is sent.
        tunnel = flow.server_conn.address
        if tunnel is not None:
            for _, value in named:
                refusal = target.check_tunnel(value, request.scheme, tunnel[0], tunnel[1]) if value else None
                if refusal is not None:
                    return self._refuse(flow, refusal)
        return False

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response in _http1.EXCESS:
            notes(flow).excess = True
            log.warning(
                "%s %s: the origin sent more bytes than its framing announced; served as framed, extra bytes "
                "dropped with the connection",
                flow.request.method,
                flow.request.pretty_url,
            )


def _peer(flow: http.HTTPFlow) -> str:
    return flow.client_conn.peername[0] if flow.client_conn.peername else "?"


addons = [Guard()]
