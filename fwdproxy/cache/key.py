"""Cache keys: the primary key from method and URL, the Vary secondary key, and variant selection (§4.1)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from fwdproxy.cache.directives import parse_list, parse_vary
from fwdproxy.cache.facts import facts
from fwdproxy.http_model import Headers, Request, StoredResponse

DEFAULT_PORTS = {"http": 80, "https": 443}

# Selecting headers whose members are order- and case-insensitive in practice, normalised harder (§4.1
# allows normalising by the header's semantics).
_SET_LIKE = frozenset({"accept-language", "accept-encoding", "accept-charset"})


@functools.lru_cache(maxsize=4096)  # a pure function of a string, asked on every request for the same URLs
def normalize_url(url: str) -> str:
    """scheme://host[:port]/path?query with scheme and host lower-cased and the default port elided.

    Path and query stay as sent (RFC 9110 §4.2.3 allows no more without knowing the origin's rules);
    an empty path is "/", the fragment and any userinfo are dropped. Never raises: a URL that cannot be
    split is returned unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    scheme = scheme.lower()
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:]
    target = target.split("#", 1)[0]
    if not target.startswith("/"):
        target = "/" + target
    authority = authority.rpartition("@")[2]
    host, port = _split_authority(authority)
    if port is not None and port != "" and DEFAULT_PORTS.get(scheme) == _port_number(port):
        port = None
    netloc = host.lower() + (f":{port}" if port else "")
    return f"{scheme}://{netloc}{target}"


def _split_authority(authority: str) -> tuple[str, str | None]:
    if authority.startswith("["):  # IPv6 literal
        end = authority.find("]")
        if end < 0:
            return authority, None
        rest = authority[end + 1 :]
        return authority[: end + 1], rest[1:] if rest.startswith(":") else None
    host, sep, port = authority.rpartition(":")
    return (host, port) if sep else (authority, None)


def _port_number(port: str) -> int | None:
    return int(port) if port.isascii() and port.isdigit() and len(port) <= 5 else None


def origin_of(url: str) -> str:
    """scheme://host[:port] of a normalised URL, for same-origin checks (RFC 6454)."""
    normal = normalize_url(url)
    scheme, _, rest = normal.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def primary_key(method: str, url: str) -> str:
    """§4: method and normalised URL; HEAD is answered from GET, so both share the GET key."""
    method = method.upper()
    return f"{'GET' if method == 'HEAD' else method} {normalize_url(url)}"


def normalize_field(lines: list[str], name: str = "") -> str | None:
    """§4.1: one selecting header's lines combined and whitespace-normalised; None when absent."""
    if not lines:
        return None
    members = parse_list(",".join(lines))
    if name.lower() in _SET_LIKE:
        members = sorted({"".join(m.lower().split()) for m in members})
    else:
        members = [" ".join(m.split()) for m in members]
    return ",".join(members)


def vary_request_headers(response_headers: Headers, request_headers: Headers) -> Headers:
    """The request header lines that the response's Vary names, to store beside it (§4.1)."""
    names = {n for n in parse_vary(response_headers) if n != "*"}
    return Headers(tuple((k, v) for k, v in request_headers if k.lower() in names))


def secondary_key(response_headers: Headers, request_headers: Headers) -> str:
    """A stable string naming the variant: "" without Vary, "*" for Vary: * (it never matches)."""
    names = parse_vary(response_headers)
    if "*" in names:
        return "*"
    parts = []
    for name in sorted(names):
        value = normalize_field(request_headers.get_all(name), name)
        parts.append(name if value is None else f"{name}={value}")  # absent differs from empty
    return "\n".join(parts)


def vary_matches(stored: StoredResponse, request: Request) -> bool:
    """§4.1: every selecting header of the stored response matches the presented request."""
    names = facts(stored).vary
    if "*" in names:
        return False
    return all(
        normalize_field(stored.vary_request.get_all(n), n) == normalize_field(request.headers.get_all(n), n)
        for n in names
    )


def select_variant(request: Request, variants: Sequence[StoredResponse]) -> StoredResponse | None:
    """§4.1: the matching stored response; among several, the most recent by Date, then by receipt."""
    matching = [v for v in variants if vary_matches(v, request)]
    if len(matching) < 2:
        return matching[0] if matching else None
    return max(matching, key=_recency)


def _recency(stored: StoredResponse) -> tuple[float, float]:
    return facts(stored).recency
