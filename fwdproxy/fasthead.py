"""Request heads the fast hit layer may answer itself: read strictly, or left to mitmproxy's HTTP layer.

The fast layer (addons/fasthit.py) answers only heads it reads one way: a complete HTTP/1.1 GET or HEAD,
no body, one Host that names the target, a target in a narrow character set. Everything the full path
would refuse, repair or read leniently (strictness.check_head, guard and target checks, a Host rewritten,
a fragment cut) is HANDOVER: mitmproxy's own layer then reads the same bytes and answers as it always did.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import httptools

from fwdproxy import guard, strictness, target

HANDOVER_FIELDS = frozenset(
    {b"content-length", b"transfer-encoding", b"upgrade", b"expect", b"te", b"http2-settings", b"connection"}
)
"""Fields that frame a body, switch protocols, wait for a 100 or change the connection's life: the full path
handles those requests (a ``Connection: keep-alive`` is let through, see ``_keeps_alive``)."""

_ABSOLUTE = re.compile(
    rb"http://([a-z0-9][a-z0-9.-]*)(?::([1-9][0-9]{0,4}))?(/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*)"
)
"""An absolute-form target whose host is a plain lower-case name or IPv4 address: nothing for mitmproxy's
URL parser to normalise (no userinfo, no IPv6 literal, no upper case, no fragment, no default-port games)."""
_ORIGIN = re.compile(rb"/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
"""An origin-form target (RFC 9112 §3.2.1) of unreserved, sub-delim, ':', '@', '/', '?' and '%' only."""


class Leave(enum.Enum):
    """Why ``read_head`` returns no head to answer."""

    INCOMPLETE = "incomplete"
    """No whole head in the buffer yet."""
    HANDOVER = "handover"
    """The full path must read this head (and whatever follows on the connection)."""


@dataclass(frozen=True, slots=True)
class Tunnel:
    """The intercepted tunnel a request arrived in: the CONNECT target the connection goes to."""

    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Head:
    """One request head the fast layer may answer, read the way mitmproxy and the guard read it."""

    method: str
    scheme: str
    host: str
    port: int
    path: str
    url: str
    """The cache key's URL (target.key_url): what the full path would forward."""
    fields: tuple[tuple[bytes, bytes], ...]
    """The header fields as received (values without surrounding whitespace, as mitmproxy keeps them)."""
    size: int
    """Bytes of the head in the buffer (the next request starts there)."""


class _Fields:
    """httptools callbacks: collects the target and the fields of one head."""

    __slots__ = ("url", "names", "values", "complete")

    def __init__(self) -> None:
        self.url = b""
        self.names: list[bytes] = []
        self.values: list[bytes] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.names.append(name)
        self.values.append(value)

    def on_message_complete(self) -> None:
        self.complete = True


def read_head(buf: bytes, tunnel: Tunnel | None) -> Head | Leave:
    """The first request head in ``buf``; ``tunnel`` None for a client speaking to the proxy (absolute-form
    targets), else the tunnel the request came through (origin-form targets)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        # A head ended by bare LFs never shows CRLF CRLF; mitmproxy's reader sees its end and refuses it.
        if b"\n\n" in buf or b"\n\r\n" in buf or len(buf) > guard.MAX_HEAD_BYTES:
            return Leave.HANDOVER
        return Leave.INCOMPLETE
    size = end + 4
    head = bytes(buf[:size])
    key = (head, tunnel)
    if (known := _READ.get(key)) is not None:
        return known
    read = _read(head, tunnel)
    if size <= MEMO_HEAD_MAX:
        if len(_READ) >= MEMO_MAX:
            _READ.clear()  # a crawl through many URLs: start again rather than track recency per hit
        _READ[key] = read
    return read


MEMO_MAX = 4096
"""Heads remembered with what ``read_head`` made of them: clients repeat their heads byte for byte (a
package manager asks the same index with the same fields), and reading one costs tens of µs."""
MEMO_HEAD_MAX = 2048
"""Longer heads are read every time (bounds the memo at about 8 MiB)."""
_READ: dict[tuple[bytes, Tunnel | None], Head | Leave] = {}


def _read(head: bytes, tunnel: Tunnel | None) -> Head | Leave:
    """``read_head`` for one whole head (ending in CRLF CRLF)."""
    size = len(head)
    if size > guard.MAX_HEAD_BYTES or head.startswith(b"\r\n") or strictness.check_head(head) is not None:
        return Leave.HANDOVER
    if head.count(b"\n") != head.count(b"\r\n"):
        return Leave.HANDOVER  # a bare LF anywhere (check_head refuses most; never be the lenient one)
    fields = _Fields()
    parser = httptools.HttpRequestParser(fields)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return Leave.HANDOVER
    method = parser.get_method()
    if (
        not fields.complete
        or method not in (b"GET", b"HEAD")
        or parser.get_http_version() != "1.1"
        or not parser.should_keep_alive()
    ):
        return Leave.HANDOVER
    hosts = []
    for name, value in zip(fields.names, fields.values, strict=True):
        lower = name.lower()
        if lower in HANDOVER_FIELDS and not (lower == b"connection" and value.lower() == b"keep-alive"):
            return Leave.HANDOVER
        if lower == b"host":
            hosts.append(value)
    if len(hosts) != 1 or guard.check_counts(len(fields.names), len(hosts)) is not None:
        return Leave.HANDOVER
    located = _locate(fields.url, tunnel)
    if located is None:
        return Leave.HANDOVER
    scheme, host, port, path = located
    host_field = hosts[0].decode("utf-8", "surrogateescape")
    verb = method.decode()
    if (
        target.check_path(verb, path) is not None
        or target.check_authority(host_field, "Host") is not None
        or not guard.host_agrees(host_field, scheme, host, port)
    ):
        return Leave.HANDOVER  # refused (400/421), or a Host the guard rewrites: the full path's business
    return Head(
        method=verb,
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        url=target.key_url(scheme, host, port, path),
        fields=tuple(zip(fields.names, fields.values, strict=True)),
        size=size,
    )


def _locate(url: bytes, tunnel: Tunnel | None) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path) the full path would forward the target to, or None to hand over."""
    if tunnel is None:
        match = _ABSOLUTE.fullmatch(url)
        if match is None:
            return None
        port = int(match[2]) if match[2] else 80
        if port > 65535:
            return None
        return "http", match[1].decode(), port, match[3].decode()
    if _ORIGIN.fullmatch(url) is None:
        return None
    return tunnel.scheme, tunnel.host, tunnel.port, url.decode()
