"""Hostile or broken input stopped at the door: oversized heads, too many fields, a Host that disagrees with
the target, requests addressed to the proxy itself, and responses with bytes past their end."""

from __future__ import annotations

import logging
import time

from mitmproxy import ctx, http

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons import _http1, _respond
from fwdproxy import guard

log = logging.getLogger("fwdproxy.guard")

EXCESS = "fwd_excess"
"""Flow metadata: the origin sent bytes past the end its framing announced (the framed message was kept and
the origin connection closed, addons/_http1.py)."""


class Guard:
    """Answers 431/400/508 before the cache or the origin see a request that should not go further."""

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
        if flow.response is None:
            self._loops(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.is_replay:
            return
        request = flow.request
        fields = request.headers.fields
        hosts = [value for name, value in fields if name.lower() == b"host"]
        verdict = guard.check_counts(len(fields), len(hosts))
        if verdict is not None:
            log.warning("%s %s from %s: %s", request.method, request.url, _peer(flow), verdict.message)
            flow.response = _respond.text(verdict.status, verdict.message, {"Connection": "close"})
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

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response in _http1.EXCESS:
            flow.metadata[EXCESS] = True
            log.warning(
                "%s %s: the origin sent more bytes than its framing announced; served as framed, extra bytes "
                "dropped with the connection",
                flow.request.method,
                flow.request.pretty_url,
            )


def _peer(flow: http.HTTPFlow) -> str:
    return flow.client_conn.peername[0] if flow.client_conn.peername else "?"


addons = [Guard()]
