"""Which request heads are refused because strict and lenient HTTP parsers could read them differently."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from fwdproxy.guard import MAX_HEAD_BYTES


@dataclass(frozen=True, slots=True)
class Refused:
    """The answer to a request head that never leaves the proxy."""

    status: int
    """400, 431 or 505."""
    message: str
    """One sentence for the client, after ``fwdproxy: ``."""


_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9112 §3: method SP request-target SP HTTP-version CRLF, one SP each, nothing else. The target is visible
# ASCII without "#" (a fragment is never sent, §3.2; a server that cuts it would cache one page as another).
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([!-\"$-~]+) HTTP/1\.([01])\r\n")
# RFC 9112 §5 / RFC 9110 §5.5: token ":" field-value CRLF, the value without CTLs other than HTAB (so no NUL,
# CR or LF inside it), no whitespace before the colon, no line that starts with SP/HTAB (obs-fold, §5.2).
_FIELDS = re.compile(rb"(?:" + _TOKEN + rb":[\t -~\x80-\xff]*\r\n)*\r\n")
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[\t -~\x80-\xff]*")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
# Hosts as DNS names or IP literals only (RFC 9110 §4.2.1 forbids userinfo; percent-escapes and sub-delims
# in a host are read differently by different resolvers and origins), and a decimal port.
_HOST = rb"(?:[A-Za-z0-9\-._]+|\[[0-9A-Fa-f:.]+\])"
_AUTHORITY = re.compile(_HOST + rb"(?::([0-9]{1,5}))?")
_ABSOLUTE = re.compile(rb"(?i:https?)://" + _HOST + rb"(?::([0-9]{1,5}))?(?:/[!-\"$-~]*)?")
_TARGET = re.compile(rb"[!-\"$-~]+")
_CONTENT_LENGTH = re.compile(rb"[1-9][0-9]{0,17}|0")
"""At most 18 digits: every parser holds that in a signed 64-bit integer (a bigger number wraps in some)."""


def check_head(head: bytes) -> Refused | None:
    """A refusal for the raw request head ``head`` (request line to the empty line, inclusive), or None."""
    if len(head) > MAX_HEAD_BYTES:
        return Refused(
            431, f"the request head exceeds {MAX_HEAD_BYTES // 1024} KiB (start line and header fields)"
        )
    line = _REQUEST_LINE.match(head)
    if line is None:
        return _bad_request_line(head)
    if _FIELDS.fullmatch(head, line.end()) is None:
        return _bad_fields(head[line.end() :])
    method, target, minor = line.groups()
    if (refused := _check_target(method, target)) is not None:
        return refused
    # Field lines start after a CRLF, names are tokens and the colon follows the name at once (checked above),
    # so a search for "\r\nname:" in the lowered head finds exactly the field lines with that name. Most
    # requests have no body: an ``in`` test first spares them the parsing.
    lower = head.lower()
    te = _values(head, lower, b"\r\ntransfer-encoding:") if b"\r\ntransfer-encoding:" in lower else None
    cl = _values(head, lower, b"\r\ncontent-length:") if b"\r\ncontent-length:" in lower else None
    if te:
        if cl:
            # RFC 9112 §6.1: a server may refuse both; forwarding either would let a hop read the other.
            return Refused(400, "the request has both Content-Length and Transfer-Encoding; send one")
        if minor == b"0":
            return Refused(
                400, "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1); use Content-Length"
            )
        if len(te) > 1 or te[0].lower() != b"chunked":
            # §6.1: a request's codings must end in chunked; fwdproxy decodes no other coding, so "chunked"
            # alone is the one value every hop frames the same way.
            shown = ", ".join(v.decode("latin-1") for v in te)
            return Refused(400, f"Transfer-Encoding {shown!r} is not accepted; send exactly 'chunked'")
    elif cl:
        if len(cl) > 1:
            return Refused(400, "the request has several Content-Length fields (RFC 9112 §6.3); send one")
        if _CONTENT_LENGTH.fullmatch(cl[0]) is None:
            value = cl[0].decode("latin-1")
            return Refused(400, f"Content-Length {value!r} is not a decimal length of at most 18 digits")
    hosts = _values(head, lower, b"\r\nhost:")
    if not hosts and minor == b"1" and method != b"CONNECT":
        # RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400 (more than one: addons/guard.py);
        # an origin would fall back to its default site. CONNECT is for the proxy alone and never forwarded.
        return Refused(400, "the HTTP/1.1 request has no Host field (RFC 9112 §3.2)")
    for host in hosts:
        if not _valid_authority(host):
            value = host.decode("latin-1")
            return Refused(400, f"Host {value!r} is not host[:port] (RFC 9110 §7.2)")
    return None


def _values(head: bytes, lower: bytes, prefix: bytes) -> list[bytes]:
    """The values (OWS trimmed) of every field line that ``prefix`` ("\\r\\nname:") starts."""
    found: list[bytes] = []
    start = lower.find(prefix)
    while start != -1:
        begin = start + len(prefix)
        end = head.index(b"\r\n", begin)
        found.append(head[begin:end].strip(b" \t"))
        start = lower.find(prefix, end)
    return found


def _valid_authority(value: bytes) -> bool:
    match = _AUTHORITY.fullmatch(value)
    return match is not None and (match.group(1) is None or 0 < int(match.group(1)) <= 65535)


def _check_target(method: bytes, target: bytes) -> Refused | None:
    shown = target.decode("latin-1")
    if method == b"CONNECT":
        # §3.2.3: authority-form, and a tunnel needs a port.
        match = _AUTHORITY.fullmatch(target)
        if match is None or match.group(1) is None or not _valid_authority(target):
            return Refused(400, f"CONNECT target {shown!r} is not host:port (RFC 9112 §3.2.3)")
        return None
    if target.startswith(b"/"):
        return None
    if target == b"*":
        if method == b"OPTIONS":
            return None
        return Refused(400, "the target '*' is for OPTIONS only (RFC 9112 §3.2.4)")
    absolute = _ABSOLUTE.fullmatch(target)
    if absolute is None or ((port := absolute.group(1)) is not None and not 0 < int(port) <= 65535):
        return Refused(
            400, f"request target {shown!r} is not an http(s) URL with host[:port] (RFC 9112 §3.2.2)"
        )
    return None


def _bad_request_line(head: bytes) -> Refused:
    """Why the request line does not match (only computed for a refusal)."""
    end = head.find(b"\n")
    line = head[: end + 1]
    if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
        return Refused(400, "the request line does not end in CRLF (RFC 9112 §2.2)")
    if _CTL.search(line[:-2]):
        return Refused(400, "the request line contains a control character (RFC 9112 §3)")
    parts = line[:-2].split(b" ")
    if len(parts) != 3 or not all(parts):
        return Refused(
            400, "the request line is not 'method SP target SP version' with single spaces (RFC 9112 §3)"
        )
    method, _, version = parts
    if re.fullmatch(_TOKEN, method) is None:
        return Refused(400, f"the method {method.decode('latin-1')!r} is not a token (RFC 9110 §9.1)")
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        shown = version.decode("latin-1")
        if _VERSION.fullmatch(version) is not None:
            return Refused(505, f"{shown} is not supported; use HTTP/1.1 (RFC 9110 §15.6.6)")
        return Refused(400, f"{shown!r} is not an HTTP version (RFC 9112 §2.3)")
    return Refused(
        400, "the request target has a character that is not visible ASCII, or a '#' (RFC 9112 §3.2)"
    )


def _bad_fields(block: bytes) -> Refused:
    """Why the field lines do not match (only computed for a refusal)."""
    for number, raw in enumerate(block.split(b"\n")[:-1], start=1):
        if not raw.endswith(b"\r"):
            return Refused(
                400, f"header line {number} ends in a bare LF; lines end with CRLF (RFC 9112 §2.2)"
            )
        line = raw[:-1]
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            return Refused(
                400, f"header line {number} is folded (obs-fold, RFC 9112 §5.2); send it on one line"
            )
        if _FIELD_LINE.fullmatch(line) is not None:
            continue
        name, colon, _ = line.partition(b":")
        if colon and name.rstrip(b" \t") != name and re.fullmatch(_TOKEN, name.rstrip(b" \t")):
            return Refused(400, f"header line {number} has whitespace before its colon (RFC 9112 §5.1)")
        if not colon or re.fullmatch(_TOKEN, name) is None:
            return Refused(400, f"header line {number} has no valid field name (RFC 9110 §5.1)")
        return Refused(
            400, f"header line {number} has a control character (NUL, CR, LF...) in its value (RFC 9110 §5.5)"
        )
    return Refused(400, "the request head has a bare CR (RFC 9112 §2.2)")


_H2_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"transfer-encoding", b"keep-alive", b"upgrade", b"proxy-connection"}
)
_H2_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_H2_VALUE = re.compile(rb"[\t -~\x80-\xff]*")


def check_h2_request(authority: bytes, path: bytes, fields: Iterable[tuple[bytes, bytes]]) -> Refused | None:
    """A refusal for an HTTP/2 request whose pseudo-fields and fields would be unsafe as HTTP/1, or None.

    HTTP/2 frames a request by its frames, but fwdproxy re-sends it to HTTP/1 origins as text, where a space,
    CR or LF in the path or a field would split the request line or a field into more (RFC 9113 §8.2.1,
    §8.3.1). The h2 library already refuses CR/LF/NUL in fields, uppercase and connection-specific fields;
    a space or other odd byte in ``:path`` and a malformed ``:authority`` are left to us."""
    if path and _TARGET.fullmatch(path) is None:
        return Refused(400, "the :path has a space, a control character or a '#' (RFC 9113 §8.3.1)")
    if authority and not _valid_authority(authority):
        shown = authority.decode("latin-1")
        return Refused(400, f":authority {shown!r} is not host[:port] (RFC 9113 §8.3.1)")
    for name, value in fields:
        if _H2_NAME.fullmatch(name) is None:
            shown = name.decode("latin-1")
            return Refused(400, f"HTTP/2 field name {shown!r} is not a lowercase token (RFC 9113 §8.2.1)")
        if name in _H2_CONNECTION_SPECIFIC or (name == b"te" and value.strip().lower() != b"trailers"):
            shown = name.decode("latin-1")
            return Refused(
                400, f"HTTP/2 request has the connection-specific field {shown!r} (RFC 9113 §8.2.2)"
            )
        if _H2_VALUE.fullmatch(value) is None:
            shown = name.decode("latin-1")
            return Refused(
                400, f"HTTP/2 field {shown!r} has a control character in its value (RFC 9113 §8.2.1)"
            )
    return None
