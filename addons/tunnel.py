"""Tunnel policy: decrypt a CONNECT tunnel (so it can be cached) or relay it blindly, per host glob."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mitmproxy import ctx, tls
from mitmproxy.proxy import layer, layers

from fwdproxy import access

log = logging.getLogger("fwdproxy.tunnel")


class Tunnel:
    """Marks passthrough tunnels in ``tls_clienthello``, before any origin contact (lazy connections), and
    pins the origin TLS name of intercepted ones to the CONNECT host."""

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "fwd_passthrough", Sequence[str], [], "Host globs whose CONNECT tunnels are relayed blindly."
        )
        loader.add_option(
            "fwd_intercept",
            Sequence[str],
            [],
            "When set, only these host globs are decrypted; others pass through.",
        )

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        server = data.context.server.address
        # Both the SNI and the CONNECT host must allow decryption: a client naming an intercepted host in its
        # SNI does not get a --passthrough host decrypted (and cached) by it.
        names = [n for n in (data.client_hello.sni, server[0] if server else None) if n] or [""]
        modes = [access.tunnel_mode(n, ctx.options.fwd_passthrough, ctx.options.fwd_intercept) for n in names]
        if access.TunnelMode.PASSTHROUGH in modes:
            host = names[modes.index(access.TunnelMode.PASSTHROUGH)]
            data.ignore_connection = True
            log.info("passthrough tunnel to %s (not decrypted: not cached, not rewritten)", host)
        elif server:
            self._pin_sni(data, server[0])

    @staticmethod
    def _pin_sni(data: tls.ClientHelloData, connect_host: str) -> None:
        """The origin's TLS names and verifies the CONNECT host, the one the cache stores under (issue 16).

        mitmproxy sends the client's SNI upstream when it has one (HttpLayer.get_connection: ``server.sni or
        client.sni or address``) and verifies the certificate for that name, so a client could tunnel to
        a.test, say SNI b.test, and have b.test's answer stored as a.test's. A server SNI set here takes
        precedence there; the client's SNI only picks the certificate mitmproxy forges for it.
        """
        server = data.context.server
        sni = data.client_hello.sni
        if sni and sni.lower().rstrip(".") != connect_host.lower().rstrip("."):
            log.info(
                "tunnel to %s: client SNI %r ignored; the origin must prove %s",
                connect_host,
                sni,
                connect_host,
            )
        server.sni = connect_host

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        # Runs after mitmproxy's NextLayer has chosen. A raw TCP relay (a tunnel carrying neither TLS nor HTTP,
        # e.g. SSH, or mitmproxy's own ignore_hosts) is as blind as a --passthrough host: say so too.
        if isinstance(nextlayer.layer, layers.TCPLayer) and (address := nextlayer.context.server.address):
            log.info("passthrough tunnel to %s:%s (raw TCP: not cached, not rewritten)", *address[:2])


addons = [Tunnel()]
