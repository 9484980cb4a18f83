"""Egress records: upstream groups, their members, and the route table that picks a group per host."""

from __future__ import annotations

import base64
import enum
import fnmatch
from dataclasses import dataclass, field

DIRECT = "direct"
"""Route target meaning "no upstream": the request leaves from this host."""

DEFAULT_GROUP = "default"
"""Traffic no route matches uses the group of this name, if there is one (the CLI shortcut builds it)."""


class Algorithm(enum.StrEnum):
    """How a group picks one of its members for a request."""

    ROUND_ROBIN = "round-robin"
    WEIGHTED_ROUND_ROBIN = "weighted-round-robin"
    IP_HASH = "ip-hash"
    LEAST_CONNECTIONS = "least-connections"
    LEAST_RESPONSE_TIME = "least-response-time"
    URL_HASH = "url-hash"


@dataclass(frozen=True, slots=True)
class Member:
    """One upstream proxy of a group."""

    host: str
    """Host name or IP address, without brackets for IPv6."""
    port: int
    weight: int = 1
    """Relative share of traffic; a member of weight 2 gets twice what one of weight 1 gets."""
    scheme: str = "http"
    """How we talk to the proxy itself: "http" is plain TCP, "https" wraps the proxy connection in TLS."""
    username: str | None = field(default=None, repr=False)
    """Percent-decoded user from the member URL; kept out of repr so it never reaches a log line."""
    password: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """``host:port``, unique within a group: the key for logs, stats, hashing and failover."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` as socket APIs (and mitmproxy's ``Server.via``) take it."""
        return (self.host, self.port)

    @property
    def url(self) -> str:
        """The proxy URL without credentials, safe to log."""
        return f"{self.scheme}://{self.name}"

    @property
    def proxy_authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value for this member only, or None when its URL had no user."""
        if self.username is None:
            return None
        # RFC 7617 §2: user-id ":" password, base64 of the UTF-8 bytes.
        raw = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """An active check: every ``interval`` seconds fetch ``url`` through each member."""

    interval: float
    url: str


@dataclass(frozen=True, slots=True)
class Group:
    """A named set of upstream proxies and how to spread requests and sickness over them."""

    name: str
    algorithm: Algorithm
    members: tuple[Member, ...]
    max_fails: int = 3
    """Failures in a row that eject a member; 3 rides out one reset connection but reacts within a second."""
    cooldown: float = 10.0
    """Seconds of the first ejection; it doubles on each ejection in a row (see health.MAX_COOLDOWN)."""
    health_check: HealthCheck | None = None

    def member(self, name: str) -> Member | None:
        """The member called ``host:port``, or None."""
        return next((m for m in self.members if m.name == name), None)


@dataclass(frozen=True, slots=True)
class Route:
    """Send hosts matching the glob ``match`` to group ``upstream`` (or ``DIRECT``)."""

    match: str
    """fnmatch-style host glob, lower case: ``*.example.com`` matches ``a.example.com`` but not
    ``example.com`` (add a second route for the apex)."""
    upstream: str


@dataclass(frozen=True, slots=True)
class EgressConfig:
    """All upstream groups and the route table; empty means every request leaves directly."""

    groups: tuple[Group, ...] = ()
    routes: tuple[Route, ...] = ()

    def group(self, name: str) -> Group | None:
        """The group of this name, or None."""
        return next((g for g in self.groups if g.name == name), None)

    def route(self, host: str) -> str:
        """The group name for a destination host, or ``DIRECT``; the first matching route wins."""
        # Host names are case-insensitive and "example.com." is the same host as "example.com".
        host = host.lower().rstrip(".")
        for r in self.routes:
            if fnmatch.fnmatchcase(host, r.match):
                return r.upstream
        return DEFAULT_GROUP if self.group(DEFAULT_GROUP) is not None else DIRECT
