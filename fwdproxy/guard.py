"""What a request must pass at the door: head size and field count, one Host that agrees with the target,
and a target that is not the proxy itself."""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024
"""Longest request or response head (start line and fields). Squid's request_header_max_size and
reply_header_max_size default to 64 KB, and hpack refuses HTTP/2 header lists over 64 KiB, so HTTP/1 and
HTTP/2 clients meet one limit. mitmproxy itself has none: it would buffer a head without end."""
MAX_FIELDS = 256
"""Most header fields in one request. Apache's LimitRequestFields default is 100 and Node's maxHeadersCount
2000; real clients send a few dozen. Thousands of tiny fields fit in 64 KiB and cost every hook a walk
over all of them, so a count limit stands beside the byte limit."""

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_LOCALHOST = ("127.0.0.1", "::1")


class Refusal(enum.Enum):
    """Why a request is answered by the proxy instead of being forwarded."""

    HEAD_TOO_BIG = "head-too-big"
    """RFC 6585 §5 (431): the header section is larger than MAX_HEAD_BYTES."""
    TOO_MANY_FIELDS = "too-many-fields"
    """RFC 6585 §5 (431): more than MAX_FIELDS header fields."""
    SEVERAL_HOSTS = "several-hosts"
    """RFC 9112 §3.2 (400): a request with more than one Host field line is invalid."""
    LOOP = "loop"
    """508 (RFC 5842 §7.2, Loop Detected): the target is this proxy, so forwarding would come back here."""


STATUS = {
    Refusal.HEAD_TOO_BIG: 431,
    Refusal.TOO_MANY_FIELDS: 431,
    Refusal.SEVERAL_HOSTS: 400,
    Refusal.LOOP: 508,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """A refusal and the sentence that explains it to the client."""

    refusal: Refusal
    message: str

    @property
    def status(self) -> int:
        return STATUS[self.refusal]


def _bare(host: str) -> str:
    """A host as compared: lower case, no brackets or trailing dot, IPv4-mapped IPv6 as IPv4."""
    h = host.strip().lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        ip = ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        return h
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def authority(scheme: str, host: str, port: int) -> str:
    """``host[:port]`` for a Host field: the scheme's default port left out, an IPv6 address bracketed."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    default = _DEFAULT_PORTS.get(scheme.lower())
    return shown if port == default else f"{shown}:{port}"


@functools.lru_cache(maxsize=4096)  # the same few (Host, target) pairs on every request
def host_agrees(host_field: str, scheme: str, host: str, port: int) -> bool:
    """Whether a Host field names the same host and port as the request target (RFC 9110 §7.2)."""
    value = host_field.strip()
    name, port_text = value, ""
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name += "]"
        port_text = rest[1:] if rest.startswith(":") else rest
    elif value.count(":") == 1:
        name, _, port_text = value.partition(":")
    if port_text:
        if not port_text.isdigit():
            return False
        field_port = int(port_text)
    else:
        field_port = _DEFAULT_PORTS.get(scheme.lower(), -1)
    return _bare(name) == _bare(host) and field_port == port


@functools.lru_cache(maxsize=4096)  # the same few targets on every request; parsing addresses is the cost
def targets_self(
    host: str, port: int, listening: tuple[tuple[str, int], ...], reached_at: tuple[str, int] | None = None
) -> bool:
    """Whether ``host:port`` is this proxy: an address it listens on, the address the client reached it at,
    or a loopback address (or ``localhost``) for a port it listens on for all interfaces."""
    target = _bare(host)
    names = set(_LOCALHOST) if target == "localhost" else {target}
    ours = list(listening) + ([reached_at] if reached_at is not None else [])
    for listen_host, listen_port in ours:
        if listen_port != port:
            continue
        bound = _bare(listen_host)
        if bound in names:
            return True
        if bound in _WILDCARDS and any(_is_loopback(n) for n in names):
            return True
    return False


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_fields(names: Iterable[str]) -> Verdict | None:
    """A refusal for a request whose header field names are ``names`` (in order), or None."""
    count = hosts = 0
    for name in names:
        count += 1
        hosts += name.lower() == "host"
    return check_counts(count, hosts)


def check_counts(count: int, hosts: int) -> Verdict | None:
    """A refusal for a request with ``count`` header fields of which ``hosts`` are Host fields, or None."""
    if count > MAX_FIELDS:
        return Verdict(
            Refusal.TOO_MANY_FIELDS,
            f"the request has {count} header fields; at most {MAX_FIELDS} are accepted",
        )
    if hosts > 1:
        return Verdict(Refusal.SEVERAL_HOSTS, f"the request has {hosts} Host fields; send exactly one")
    return None


def head_too_big(kind: str) -> str:
    """The message for a ``kind`` ("request" or "response") head over MAX_HEAD_BYTES."""
    return f"the {kind} head exceeds {MAX_HEAD_BYTES // 1024} KiB (start line and header fields)"


def loop_message(host: str, port: int) -> str:
    return f"{authority('http', host, port)} is this proxy itself; the request would loop (ask for the origin instead)"
