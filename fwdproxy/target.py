"""The request target as forwarded and as keyed: one structured value (scheme, host, port, path and query),
and the refusals of targets and authorities that a proxy, an origin and a cache could read two ways."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fwdproxy import guard

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Characters that end or split an authority (RFC 3986 §3.2: "/", "?", "#" end it, "@" ends userinfo) or that
# parsers disagree on ("\\" is "/" to WHATWG URL parsers). An authority holding one of them names one host to
# whoever splits it first and another to whoever splits it last.
_AUTHORITY_DELIMITERS = frozenset("@/?#\\")


class Problem(enum.Enum):
    """Why a target or an authority is refused before anything is looked up or forwarded."""

    NOT_ORIGIN_FORM = "not-origin-form"
    """RFC 9112 §3.2.1, RFC 9113 §8.3.1 (400): the path does not start with "/"."""
    STAR_NOT_OPTIONS = "star-not-options"
    """RFC 9112 §3.2.4 (400): only OPTIONS may ask for "*"."""
    PATH_WHITESPACE = "path-whitespace"
    """RFC 9112 §3.2 (400): a target holds no whitespace or control characters; an HTTP/1 origin would read the
    request line differently than the HTTP/2 stream that carried it."""
    USERINFO = "userinfo"
    """RFC 9110 §4.2.4 (400): userinfo is deprecated in http(s) URIs and has no place in an authority sent on
    the wire; "a@b" is host a to one reader and host b to another."""
    BAD_AUTHORITY = "bad-authority"
    """RFC 3986 §3.2 (400): the authority holds a delimiter or whitespace, so it is not one host[:port]."""
    MISDIRECTED = "misdirected"
    """RFC 9110 §15.5.20 (421): inside a tunnel, the request names another host than the tunnel's."""


STATUS = {
    Problem.NOT_ORIGIN_FORM: 400,
    Problem.STAR_NOT_OPTIONS: 400,
    Problem.PATH_WHITESPACE: 400,
    Problem.USERINFO: 400,
    Problem.BAD_AUTHORITY: 400,
    Problem.MISDIRECTED: 421,
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A target the proxy answers itself, and the sentence that tells the client why."""

    problem: Problem
    message: str

    @property
    def status(self) -> int:
        return STATUS[self.problem]


def check_path(method: str, path: str) -> Refusal | None:
    """A refusal for a request target (origin-form path and query, or "*") that is not one, else None."""
    if path == "*":
        if method.upper() == "OPTIONS":
            return None
        return Refusal(Problem.STAR_NOT_OPTIONS, f"the target * is only for OPTIONS, not {method}")
    if not path.startswith("/"):
        return Refusal(
            Problem.NOT_ORIGIN_FORM, f"the request target {path[:80]!r} does not start with '/'; send a path"
        )
    if any(c <= " " or c == "\x7f" for c in path):
        return Refusal(Problem.PATH_WHITESPACE, "the request target holds whitespace or control characters")
    return None


def check_authority(value: str, where: str) -> Refusal | None:
    """A refusal for an authority (``where`` names it: "Host", ":authority", "CONNECT") that is not plainly
    one host[:port], else None."""
    if "@" in value:
        return Refusal(
            Problem.USERINFO, f"the {where} {value[:80]!r} holds userinfo ('@'); send host[:port] only"
        )
    if any(c in _AUTHORITY_DELIMITERS or c <= " " or c == "\x7f" for c in value):
        return Refusal(Problem.BAD_AUTHORITY, f"the {where} {value[:80]!r} is not a host[:port]")
    return None


def check_tunnel(named: str, scheme: str, host: str, port: int) -> Refusal | None:
    """Inside a tunnel to ``host:port``: a 421 when the request's Host or :authority ``named`` is another host."""
    if guard.host_agrees(named, scheme, host, port):
        return None
    tunnel = guard.authority(scheme, host, port)
    return Refusal(
        Problem.MISDIRECTED,
        f"this connection is a tunnel to {tunnel}; the request names {named[:80]!r} (open a tunnel to it)",
    )


def without_fragment(path: str) -> str:
    """RFC 9110 §4.2.4: the fragment is for the user agent, not part of the target; it is never sent."""
    return path.split("#", 1)[0]


def key_url(scheme: str, host: str, port: int, path: str) -> str:
    """The URL a cache key names, built from the parts that are forwarded (never parsed back from a string).

    The same form as ``cache.key.normalize_url`` gives: scheme and host in lower case, the scheme's default
    port left out, an IPv6 address in brackets, path and query as sent without the fragment, "*" as "/".
    """
    scheme = scheme.lower()
    name = host.lower()
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    netloc = name if _DEFAULT_PORTS.get(scheme) == port else f"{name}:{port}"
    target = without_fragment(path)
    if not target.startswith("/"):
        target = "/" + target if target != "*" else "/"
    return f"{scheme}://{netloc}{target}"
