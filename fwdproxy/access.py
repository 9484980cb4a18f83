"""Who may use the proxy and where tunnels may go: client networks, proxy auth, CONNECT ports, tunnel mode."""

from __future__ import annotations

import base64
import binascii
import enum
import fnmatch
import functools
import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
"""Default --allow: only this machine may use the proxy, so a fresh install is never an open relay."""


def parse_networks(specs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from CIDR strings (a bare address is a /32 or /128)."""
    out = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{spec!r} is not an address or CIDR network; try e.g. 10.0.0.0/8 or ::1"
            ) from None
    return tuple(out)


@functools.lru_cache(maxsize=4096)  # asked per request with the same few addresses; parsing is the cost
def client_allowed(address: str, networks: Sequence[IPNetwork]) -> bool:
    """True when the client address lies in one of the allowed networks (``networks`` hashable, e.g. a tuple)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d
    return any(ip in net for net in networks)


def is_loopback_host(host: str) -> bool:
    """True for listen addresses reachable only from this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(listen_host: str, allow_given: bool, auth_given: bool) -> None:
    """Refuse to start an open relay: a non-loopback listener needs --allow or --auth."""
    if not is_loopback_host(listen_host) and not allow_given and not auth_given:
        raise ValueError(
            f"--listen-host {listen_host} would let other machines use this proxy as an open relay; "
            "add --allow CIDR (the client networks to serve, e.g. --allow 10.0.0.0/8) "
            "and/or --auth USER:PASS"
        )


@dataclass(frozen=True, slots=True)
class Credentials:
    """One user allowed through proxy authentication."""

    user: str
    password: str

    @classmethod
    def parse(cls, spec: str) -> Credentials:
        user, sep, password = spec.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{spec!r} is not USER:PASS; try e.g. --auth ci:s3cret")
        return cls(user, password)

    def check(self, proxy_authorization: str | None) -> bool:
        """True when a Proxy-Authorization header carries these credentials (constant-time comparison)."""
        if not proxy_authorization:
            return False
        scheme, _, token = proxy_authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = f"{self.user}:{self.password}".encode()
        # Compare the whole "user:pass" at once so neither part's length or prefix leaks through timing.
        return hmac.compare_digest(decoded, expected)


class TunnelMode(enum.Enum):
    """What happens inside a CONNECT tunnel."""

    INTERCEPT = "intercept"
    """TLS is terminated with the proxy's CA, so requests can be cached and rewritten."""
    PASSTHROUGH = "passthrough"
    """Bytes are relayed blindly; the client sees the origin's own certificate."""


def host_matches(host: str, globs: Iterable[str]) -> bool:
    """Case-insensitive glob match of a host name (``*.example.com`` also matches ``example.com``)."""
    host = host.lower().rstrip(".")
    for glob in globs:
        g = glob.lower().rstrip(".")
        if fnmatch.fnmatchcase(host, g) or (g.startswith("*.") and host == g[2:]):
            return True
    return False


def tunnel_mode(host: str, passthrough: Sequence[str], intercept: Sequence[str]) -> TunnelMode:
    """Decide a tunnel's fate: --passthrough wins, then --intercept (when given) limits interception."""
    if host_matches(host, passthrough):
        return TunnelMode.PASSTHROUGH
    if intercept and not host_matches(host, intercept):
        return TunnelMode.PASSTHROUGH
    return TunnelMode.INTERCEPT
