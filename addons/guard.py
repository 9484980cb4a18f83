"""Hostile or broken input stopped at the door: oversized heads, too many fields, a Host that disagrees with
the target, targets and authorities that could be read two ways, requests addressed to the proxy itself, and
responses with bytes past their end."""

from __future__ import annotations

import logging
import time

from mitmproxy import ctx, http

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons import _http1, _respond
from fwdproxy import guard, target

log = logging.getLogger("fwdproxy.guard")

EXCESS = "fwd_excess"
"""Flow metadata: the origin sent bytes past the end its framing announced; the cache must not store it."""


class Guard:
    """Answers 431/400/421/508 before the cache or the origin see a request that should not go further."""

    def load(self, loader):  # type: ignore[no-untyped-def]
        _http1.install()  # request and response heads over guard.MAX_HEAD_BYTES: 431 / 502

    def __init__(self) -> None:
        self.addresses: tuple[tuple[str, int], ...] = ()
        self.addresses_until = 0.0

    def _own_addresses(self) -> tuple[tuple[str, int], ...]:
        # listen_addrs() asks the kernel (getsockname) for every listener: look again once a second at most.
        now = time.monotonic()
        if now >= self.addresses_until:
            proxyserver = ctx.master.addons.get("proxyserver")
            self.addresses = tuple((a[0], a[1]) for a in proxyserver.listen_addrs()) if proxyserver else ()
            self.addresses_until = now + 1.0 if self.addresses else now
        return self.addresses

    def _loops(self, flow: http.HTTPFlow) -> bool:
        reached = flow.client_conn.sockname
        reached_at = (reached[0], reached[1]) if reached else None
        if not guard.targets_self(flow.request.host, flow.request.port, self._own_addresses(), reached_at):
            return False
        message = guard.loop_message(flow.request.host, flow.request.port)
        log.warning("%s %s from %s: %s", flow.request.method, flow.request.pretty_url, _peer(flow), message)
        flow.response = _respond.text(508, message)
        return True

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and not self._refuses_authority(
            flow, flow.request.authority, "CONNECT target"
        ):
            self._loops(flow)

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

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.is_replay:
            return
        request = flow.request
        fields = request.headers.fields
        hosts = [value for name, value in fields if name.lower() == b"host"]
        verdict = guard.check_counts(len(fields), len(hosts))
        if verdict is not None:
            self._refuse(flow, verdict)
            return
        if self._refuses_target(flow, hosts):
            return
        if self._loops(flow):
            return
        # RFC 9112 §3.2.2: a proxy given an absolute URL ignores the Host field and sends the URL's authority.
        # Forwarding the client's Host would let it store one site's page under another site's URL.
        if not hosts:
            return
        scheme, host, port = request.scheme, request.host, request.port
        if not guard.host_agrees(hosts[0].decode("utf-8", "surrogateescape"), scheme, host, port):
            request.headers["Host"] = guard.authority(scheme, host, port)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "%s %s: Host %r replaced by the URL's authority", request.method, request.url, hosts[0]
                )

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
            flow.metadata[EXCESS] = True
            log.warning(
                "%s %s: the origin sent more bytes than its framing announced; served as framed, not cached",
                flow.request.method,
                flow.request.pretty_url,
            )


def _peer(flow: http.HTTPFlow) -> str:
    return flow.client_conn.peername[0] if flow.client_conn.peername else "?"


addons = [Guard()]
