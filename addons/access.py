"""Access control: client networks (--allow), proxy authentication (--auth) and CONNECT ports."""

from __future__ import annotations

import logging
import time

from mitmproxy import connection, http

from fwdproxy import access
from fwdproxy_addons import _respond
from fwdproxy_addons._settings import SettingsSource

log = logging.getLogger("fwdproxy.access")


class Access:
    """Answers 403/407 before anything else sees a request from a client that may not use the proxy."""

    def __init__(self, source: SettingsSource | None = None) -> None:
        self.source = source or SettingsSource()
        self.networks: tuple[access.IPNetwork, ...] = access.parse_networks(self.source.given.allow)
        self.credentials: access.Credentials | None = None
        self.ports: frozenset[int] = frozenset(self.source.given.connect_port)
        self.authenticated: set[str] = set()
        """Client connections that passed authentication in their CONNECT (requests inside need none)."""
        self.allowed: dict[str, bool] = {}
        """Client connection id → its address is in --allow (asked once per connection, not per request)."""
        self.max_connections = self.source.given.max_connections
        self.open: set[str] = set()
        """Ids of the client connections accepted and not yet closed (refused ones are not counted)."""
        self.refused = 0
        self.refused_logged = 0.0

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(loader, "fwd_allow", "fwd_auth", "fwd_connect_ports", "fwd_max_connections")

    def configure(self, updated: set[str]) -> None:
        s = self.source.current()
        networks = access.parse_networks(s.allow)  # checked by the source; a tuple of a few networks
        if networks != self.networks:
            self.networks = networks
            self.allowed.clear()
        self.credentials = access.Credentials.parse(s.auth) if s.auth else None
        self.ports = frozenset(s.connect_port)
        self.max_connections = s.max_connections

    def _refuse(self, flow: http.HTTPFlow) -> bool:
        """Set a 403/407 on flows that may not pass; True when refused."""
        conn = flow.client_conn
        allowed = self.allowed.get(conn.id)
        if allowed is None:
            client_ip = conn.peername[0] if conn.peername else ""
            allowed = self.allowed[conn.id] = access.client_allowed(client_ip, self.networks)
        if not allowed:
            client_ip = conn.peername[0] if conn.peername else ""
            log.warning("refused client %s: not in --allow", client_ip)
            flow.response = _respond.text(403, f"{client_ip} is not allowed to use this proxy (see --allow)")
            return True
        if self.credentials and flow.client_conn.id not in self.authenticated:
            if not self.credentials.check(flow.request.headers.get("Proxy-Authorization")):
                flow.response = _respond.text(
                    407,
                    "proxy authentication required",
                    {"Proxy-Authenticate": 'Basic realm="fwdproxy"'},
                )
                return True
        return False

    def admits(self, client: connection.Client, authorization: str | None) -> bool:
        """Whether a request on ``client`` carrying this Proxy-Authorization passes --allow and --auth, as
        requestheaders would let it (for the fast hit layer, which leaves refusals to the full path)."""
        allowed = self.allowed.get(client.id)
        if allowed is None:
            client_ip = client.peername[0] if client.peername else ""
            allowed = self.allowed[client.id] = access.client_allowed(client_ip, self.networks)
        if not allowed:
            return False
        return (
            not self.credentials or client.id in self.authenticated or self.credentials.check(authorization)
        )

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self._refuse(flow):
            return
        if flow.request.port not in self.ports:
            flow.response = _respond.text(
                403, f"CONNECT to port {flow.request.port} is not allowed (see --connect-port)"
            )
            return
        if self.credentials:
            self.authenticated.add(flow.client_conn.id)
        # RFC 9110 §11.7.1: proxy credentials are consumed by the proxy they are meant for.
        flow.request.headers.pop("Proxy-Authorization", None)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.is_replay:
            return  # made inside the proxy (the cache's background revalidation), not by a client
        if flow.response is None and not self._refuse(flow):
            headers = flow.request.headers
            if any(name.lower() == b"proxy-authorization" for name, _ in headers.fields):  # rare: look first
                headers.pop("Proxy-Authorization", None)

    def client_connected(self, client) -> None:  # type: ignore[no-untyped-def]
        if not self.max_connections or len(self.open) < self.max_connections:
            self.open.add(client.id)
            return
        # mitmproxy closes a connection whose client_connected hook set an error, before reading a byte: the
        # client sees the connection end at once. An answer (a 503) would need its request first, and a client
        # that never sends one would keep its socket, which is what the limit is for.
        client.error = "too many open connections (fwd_max_connections)"
        self.refused += 1
        now = time.monotonic()
        if now - self.refused_logged >= 1.0:  # one line a second, not one per refused connection
            log.warning(
                "refused %d connection(s), the last from %s: %d are open (--max-connections %d)",
                self.refused,
                client.peername[0] if client.peername else "?",
                len(self.open),
                self.max_connections,
            )
            self.refused, self.refused_logged = 0, now

    def client_disconnected(self, client) -> None:  # type: ignore[no-untyped-def]
        self.open.discard(client.id)
        self.authenticated.discard(client.id)
        self.allowed.pop(client.id, None)


addons = [Access()]
