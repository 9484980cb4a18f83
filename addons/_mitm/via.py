"""Two mitmproxy layers that make ``Server.via`` mean what a browser's proxy setting means, in regular mode.

- Plain HTTP through an upstream goes in absolute form (``GET http://host/path``), not ``CONNECT host:80``.
  mitmproxy's ``HttpLayer.get_connection`` (proxy/layers/http/__init__.py) builds
  ``HttpUpstreamProxy.make(context, send_connect)`` with ``send_connect = event.tls or mode != upstream``, so
  in regular mode every connection via a proxy starts with CONNECT. Squid and most corporate proxies allow
  CONNECT only to 443. :class:`AbsoluteForm` replaces ``_upstream_proxy.HttpUpstreamProxy`` and skips the
  CONNECT when the connection carries no TLS; the flow's request must then carry its authority (the Egress
  addon sets it), which ``http1.assemble_request`` turns into an absolute-form request line.
- A pass-through tunnel (``tls_clienthello`` → ``ignore_connection``) is relayed by a ``TCPLayer`` that opens
  ``context.server`` itself; nothing on that path looks at ``via`` (proxy/layers/tcp.py, proxy/server.py).
  :class:`TunnelVia` sits above the tunnel's TLS layers and, when the server connection is opened with
  ``via`` set, opens it through that proxy with CONNECT instead (and otherwise stays out of the way).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import connection
from mitmproxy.proxy import commands, events, layer, mode_specs
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import _upstream_proxy
from mitmproxy.proxy.layers.tls import ServerTLSLayer
from mitmproxy.proxy.tunnel import TunnelState

from fwdproxy_addons._mitm.mark import PATCHED

log = logging.getLogger("fwdproxy.egress")

_ORIGINAL = _upstream_proxy.HttpUpstreamProxy


class AbsoluteForm(_ORIGINAL):
    """mitmproxy's upstream-proxy layer, minus the CONNECT for plain HTTP in regular mode."""

    def start_handshake(self):  # type: ignore[no-untyped-def]
        # Only regular mode: in upstream mode mitmproxy already decides this itself, and its CONNECT layer
        # for a client's CONNECT (handle_connect_upstream) must keep the CONNECT. conn.tls is known here:
        # get_connection stacks the ServerTLSLayer (which sets it) before the connection is opened.
        if (
            self.send_connect
            and not self.conn.tls
            and isinstance(self.context.client.proxy_mode, mode_specs.RegularMode)
        ):
            self.send_connect = False
        return (yield from super().start_handshake())


setattr(AbsoluteForm, PATCHED, True)


def apply() -> None:
    """Make mitmproxy build :class:`AbsoluteForm` for every connection via an upstream proxy (once per process:
    addons/_mitm/__init__.py checks the target first; docs/mitmproxy-notes.md §18)."""
    # get_connection looks the class up on the module at call time, so replacing the attribute is enough.
    _upstream_proxy.HttpUpstreamProxy = AbsoluteForm  # type: ignore[misc]


TunnelResult = Callable[[connection.Server, connection.Server, str | None], None]
"""Called with (the tunnel's server connection, the connection to the upstream proxy, error or None) once the
upstream proxy answered the CONNECT (None) or the attempt failed."""


class TunnelVia(_ORIGINAL):
    """Opens a blind tunnel's server connection through ``conn.via`` with CONNECT; direct when via is None.

    The choice is read when the connection is opened (after ``tls_clienthello``), so the layer can be put
    into every tunnel's stack at ``next_layer`` time, before anyone knows whether it will pass through.
    """

    def __init__(self, context: Context, on_result: TunnelResult) -> None:
        super().__init__(context, connection.Server(address=None), send_connect=True)
        self.on_result = on_result
        self.routed = False

    def _handle_command(self, command: commands.Command):  # type: ignore[no-untyped-def]
        if (
            not self.routed
            and isinstance(command, commands.OpenConnection)
            and command.connection == self.conn
            and self.tunnel_state is TunnelState.INACTIVE
            and self.conn.via is not None
        ):
            self.routed = True
            self.tunnel_connection.address = self.conn.via[1]
        if not self.routed:
            yield command  # direct: we are a no-op layer
            return
        yield from super()._handle_command(command)

    def event_to_child(self, event: events.Event):  # type: ignore[no-untyped-def]
        # The one place both outcomes pass: a failed TCP connect to the proxy and the end of the CONNECT
        # handshake are each delivered to the child as the completion of its OpenConnection.
        if (
            self.routed
            and isinstance(event, events.OpenConnectionCompleted)
            and event.command.connection == self.conn
        ):
            self.on_result(self.conn, self.tunnel_connection, event.reply)
        return (yield from super().event_to_child(event))


def wrap_tunnel(nextlayer: layer.NextLayer, on_result: TunnelResult) -> TunnelVia | None:
    """Put a :class:`TunnelVia` above the TLS layers mitmproxy chose for a tunnel; None if it is not one."""
    chosen, ctx = nextlayer.layer, nextlayer.context
    if not isinstance(chosen, ServerTLSLayer) or chosen.conn is not ctx.server or chosen not in ctx.layers:
        return None
    via = TunnelVia(ctx, on_result)
    # Layer.__init__ appended it last; layers find their parent by position (ClientTLSLayer does), so
    # it goes right above the layer it wraps.
    ctx.layers.remove(via)
    ctx.layers.insert(ctx.layers.index(chosen), via)
    via.child_layer = chosen
    nextlayer.layer = via
    return via
