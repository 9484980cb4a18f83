"""What a request must pass at the door: head size and field count, one Host that agrees with the target,
and a target that is not the proxy itself."""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
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
_INET_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]{1,8}|0[0-7]{0,11}|[1-9][0-9]{0,9}")
"""One part of an inet_aton(3) address: hexadecimal, octal or decimal."""


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


def literal_address(host: str) -> str | None:
    """The address a literal host spells, as compared (IPv4-mapped IPv6 as IPv4), or None for a name.

    Besides dotted quads and IPv6 this reads the inet_aton(3) shorthands that getaddrinfo, and so
    mitmproxy's connect, accept: ``127.1``, ``0x7f000001``, ``2130706433``, ``0177.0.0.1``.
    """
    bare = _bare(host)
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    parts = bare.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    if not all(_INET_ATON_PART.fullmatch(part) for part in parts):
        return None
    numbers = [
        int(p, 16) if p[:2] in ("0x", "0X") else int(p, 8) if p.startswith("0") else int(p) for p in parts
    ]
    # inet_aton: a.b.c.d, a.b.c (c: 16 bits), a.b (b: 24 bits), a (32 bits); the last part fills the rest.
    last_bits = 8 * (5 - len(numbers))
    if any(not 0 <= n <= 255 for n in numbers[:-1]) or not 0 <= numbers[-1] < 2**last_bits:
        return None
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value |= n << (24 - 8 * i)
    return str(ipaddress.IPv4Address(value))


def candidates(host: str, resolved: Iterable[str] = ()) -> frozenset[str]:
    """The addresses a connection to ``host`` may reach: its literal address, loopback for ``localhost``, and
    what the resolver said (``resolved``); the unspecified address stands for loopback, where the kernel
    sends a connection to it (Linux connects 0.0.0.0 to 127.0.0.1)."""
    out: set[str] = set()
    literal = literal_address(host)
    if literal is not None:
        out.add(literal)
    elif _bare(host) in ("localhost", "localhost.localdomain") or _bare(host).endswith(".localhost"):
        out.update(_LOCALHOST)  # RFC 6761 §6.3: localhost names are loopback, resolver or not
    out.update(a for a in (literal_address(r) for r in resolved) if a is not None)
    return frozenset(_LOCALHOST[0] if a == "0.0.0.0" else _LOCALHOST[1] if a == "::" else a for a in out)


@functools.lru_cache(maxsize=4096)  # the same few targets on every request; parsing addresses is the cost
def targets_self(
    host: str,
    port: int,
    listening: tuple[tuple[str, int], ...],
    reached_at: tuple[str, int] | None = None,
    resolved: tuple[str, ...] = (),
    local: frozenset[str] = frozenset(),
) -> bool:
    """Whether ``host:port`` is this proxy: an address it listens on, the address the client reached it at,
    or, for a port it listens on for all interfaces, a loopback address or one of ``local`` (the addresses
    of this machine's interfaces among the candidates). ``resolved`` is what the resolver said of ``host``."""
    targets = candidates(host, resolved)
    if not targets:
        return False
    ours = list(listening) + ([reached_at] if reached_at is not None else [])
    for listen_host, listen_port in ours:
        if listen_port != port:
            continue
        bound = _bare(listen_host)
        if bound in targets:
            return True
        if bound in _WILDCARDS and any(_is_loopback(t) or t in local for t in targets):
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


def loop_message(host: str, port: int, *, admin: bool = False) -> str:
    if admin:
        return (
            f"{authority('http', host, port)} is this proxy's admin port; ask it directly, or for "
            "http://fwdproxy.local/ through the proxy"
        )
    return f"{authority('http', host, port)} is this proxy itself; the request would loop (ask for the origin instead)"
