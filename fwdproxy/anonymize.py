"""Which header fields a forwarded request or response keeps, per anonymity level (issue 5)."""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from fwdproxy.http_model import Headers
from fwdproxy.unkeyed import UNKEYED_HEADERS


class Level(enum.StrEnum):
    """How much of the client a forwarded request may reveal."""

    OFF = "off"  # forward as received, minus the proxy's own hop-by-hop fields
    STANDARD = "standard"  # drop client addresses and the proxy chain
    STRICT = "strict"  # also make browsers look alike; hide backend names in responses


# --- The header lists: the one place that says what counts as identifying. -------------------------------

PROXY_REQUEST_HEADERS: tuple[str, ...] = ("Proxy-Authorization", "Proxy-Connection")
"""Removed at every level, even off: credentials and hop-by-hop fields meant for us, never for the origin."""

IDENTIFYING_REQUEST_HEADERS: tuple[str, ...] = (
    # The forwarding chain, standard (RFC 7239, RFC 9110 §7.6.3) and de facto; Xroxy-Connection is
    # Proxy-Connection renamed by some chains, so its mere presence names a proxy.
    *"Forwarded Via X-Forwarded Forwarded-For Forwarded-For-IP X-Forwarded-For X-Original-Forwarded-For".split(),
    *"Z-Forwarded-For X-Forwarded-Host X-Forwarded-Server X-Forwarded-Proto X-Forwarded-Port".split(),
    *"X-Forwarded-By X-Host X-BlueCoat-Via X-Proxy-ID Xroxy-Connection X-Coming-From Coming-From".split(),
    # One client address, as load balancers and CDNs pass it on.
    *"X-Real-IP X-Client-IP Client-IP True-Client-IP X-Cluster-Client-IP X-Originating-IP".split(),
    *"X-Remote-IP X-Remote-Addr X-ProxyUser-IP Proxy-Client-IP WL-Proxy-Client-IP".split(),
    *"CF-Connecting-IP CF-Connecting-IPv6 CF-Pseudo-IPv4 Fastly-Client-IP Fly-Client-IP".split(),
    *"DO-Connecting-IP X-Azure-ClientIP X-Azure-SocketIP X-Envoy-External-Address".split(),
    "X-AppEngine-User-IP",
    # Where the client is: as telling as its address once combined with a time and a site.
    *"CF-IPCountry CF-IPCity CF-IPContinent CF-IPLatitude CF-IPLongitude CF-Region".split(),
    *"CF-Region-Code CF-Metro-Code CF-Postal-Code CF-Timezone".split(),
    *"X-AppEngine-Country X-AppEngine-Region X-AppEngine-City X-AppEngine-CityLatLong".split(),
    # Who the client is: mobile carriers inject the subscriber's phone number.
    *"X-MSISDN X-Up-Calling-Line-ID X-Up-Subno".split(),
)
"""Removed at standard and strict: each names the client's address, location or the proxy chain.

Not listed, on purpose: ``CDN-Loop`` (RFC 8586; names no client, and dropping it breaks loop detection).
Also removed at standard and strict, though they name no one: fwdproxy.unkeyed.UNKEYED_HEADERS
(``X-Original-URL``, ``X-HTTP-Method-Override`` …), which rewrite what the origin answers without being
part of the cache key (issue 16); at off they make the request bypass the cache instead.
"""

IDENTIFYING_REQUEST_PREFIXES: tuple[str, ...] = ("x-forwarded-",)
"""Also removed at standard and strict: every ``X-Forwarded-*`` (-Ssl, -Scheme, -Prefix, -Client-Cert …)
describes the chain, and new members keep appearing, so a prefix beats listing them."""

STRICT_REQUEST_HEADERS: tuple[str, ...] = (
    "From",  # RFC 9110 §10.1.2: the user's e-mail address
    # User-Agent client hints would undo the User-Agent that strict substitutes.
    *"Sec-CH-UA Sec-CH-UA-Arch Sec-CH-UA-Bitness Sec-CH-UA-Form-Factors Sec-CH-UA-Full-Version".split(),
    *"Sec-CH-UA-Full-Version-List Sec-CH-UA-Mobile Sec-CH-UA-Model Sec-CH-UA-Platform".split(),
    *"Sec-CH-UA-Platform-Version Sec-CH-UA-WoW64".split(),
)
"""Removed at strict only. (User-Agent, Accept-Language and Referer are rewritten, not listed here.)"""

STRICT_RESPONSE_HEADERS: tuple[str, ...] = (
    *"X-Backend X-Backend-Server X-Backend-Host X-Server X-Server-IP X-Server-Name X-Served-By".split(),
    *"X-Real-Server X-Origin-Server X-Upstream X-Host X-Hostname".split(),
)
"""Removed from responses at strict: each names a backend host or address, and no client needs one.

Kept on purpose: ``Via`` (RFC 9110 §7.6.3 protocol bookkeeping), ``Server`` (a product, not a host),
``Server-Timing`` (developer tools read it; it carries durations, not addresses); add them to
``anonymize.response_remove`` if your origins put host names there.
"""

DEFAULT_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36"
)
"""Desktop Chrome on Windows, the most common browser string; Chrome's UA reduction freezes all but the major."""

DEFAULT_ACCEPT_LANGUAGE = "en-US,en;q=0.9"
"""What most English-language browsers send, so strict clients blend in rather than stand out."""

_IDENTIFYING = frozenset(n.lower() for n in (*IDENTIFYING_REQUEST_HEADERS, *UNKEYED_HEADERS))
_PROXY = frozenset(n.lower() for n in PROXY_REQUEST_HEADERS)
_STRICT_REQUEST = frozenset(n.lower() for n in STRICT_REQUEST_HEADERS)
_STRICT_RESPONSE = frozenset(n.lower() for n in STRICT_RESPONSE_HEADERS)


@dataclass(frozen=True, slots=True)
class AnonymizeConfig:
    """The `[anonymize]` settings: a level plus custom rules.

    Custom rules (remove, set, response_remove) apply at standard and strict; off means the client's headers
    go out untouched apart from PROXY_REQUEST_HEADERS, as issue 5 promises.
    """

    level: Level = Level.STANDARD
    """standard by default: a forward proxy that leaks its clients' addresses is not doing its job."""
    user_agent: str = DEFAULT_USER_AGENT
    """The User-Agent every strict request carries."""
    accept_language: str = DEFAULT_ACCEPT_LANGUAGE
    """The Accept-Language every strict request carries."""
    remove: tuple[str, ...] = ()
    """Extra request header names to drop."""
    set: tuple[tuple[str, str], ...] = ()
    """(name, value) pairs that replace or add a request header, after every removal; a tuple so it is frozen."""
    keep: tuple[str, ...] = ()
    """Names exempt from the level's lists and rewrites (request and response); never PROXY_REQUEST_HEADERS.
    `remove` still wins over it (parse_anonymize rejects a name in both)."""
    response_remove: tuple[str, ...] = ()
    """Extra response header names to drop."""


def is_identifying(name: str) -> bool:
    """Whether standard drops this request header (ignoring `keep`): identifying, or an unkeyed rewrite."""
    lname = name.lower()
    return lname in _IDENTIFYING or lname.startswith(IDENTIFYING_REQUEST_PREFIXES)


def anonymize_request(headers: Headers, url: str, cfg: AnonymizeConfig) -> Headers:
    """The request headers to forward for a request to `url` (absolute) at the configured level."""
    out = headers.without(*PROXY_REQUEST_HEADERS)
    if cfg.level is Level.OFF:
        return out
    keep = {n.lower() for n in cfg.keep} - _PROXY
    drop = {k for k, _ in out if is_identifying(k) and k.lower() not in keep}
    if cfg.level is Level.STRICT:
        drop |= {k for k, _ in out if k.lower() in _STRICT_REQUEST and k.lower() not in keep}
        out = _strict_rewrites(out.without(*drop), url, cfg, keep)
    # Custom rules come last so they can override the level: remove, then set (replace or add).
    out = out.without(*drop, *cfg.remove)
    for name, value in cfg.set:
        if name.lower() not in _PROXY:  # parse_anonymize rejects these; a hand-built config is ignored
            out = out.with_(name, value)
    return out


def anonymize_response(headers: Headers, cfg: AnonymizeConfig) -> Headers:
    """The response headers to pass back to the client at the configured level."""
    if cfg.level is Level.OFF:
        return headers
    drop = set(cfg.response_remove)
    if cfg.level is Level.STRICT:
        keep = {n.lower() for n in cfg.keep}
        drop |= {k for k, _ in headers if k.lower() in _STRICT_RESPONSE and k.lower() not in keep}
    return headers.without(*drop)


@dataclass(frozen=True, slots=True)
class Touched:
    """The header names a config can change: a caller may pass on anything carrying none of them untouched."""

    request: frozenset[str]
    """Lower-case request header names that may be removed."""
    request_prefixes: tuple[str, ...]
    """Lower-case prefixes of request header names that may be removed."""
    every_request: bool
    """Every request is rewritten whatever it carries (strict's User-Agent, or a `set` rule)."""
    response: frozenset[str]
    """Lower-case response header names that may be removed."""


def touched(cfg: AnonymizeConfig) -> Touched:
    """What anonymize_request and anonymize_response may change under `cfg` (a superset: `keep` is ignored
    for prefixes)."""
    if cfg.level is Level.OFF:
        return Touched(_PROXY, (), False, frozenset())
    keep = {n.lower() for n in cfg.keep}
    request = _PROXY | (_IDENTIFYING - keep) | {n.lower() for n in cfg.remove}
    response = {n.lower() for n in cfg.response_remove}
    if cfg.level is Level.STRICT:
        request |= _STRICT_REQUEST - keep
        response |= _STRICT_RESPONSE - keep
    every = cfg.level is Level.STRICT or bool(cfg.set)
    return Touched(frozenset(request), IDENTIFYING_REQUEST_PREFIXES, every, frozenset(response))


def same_site(a: str, b: str) -> bool:
    """Whether two absolute URLs are same-site, approximately.

    Same scheme, and the same host or hosts sharing their last two labels. Without the Public Suffix List
    this wrongly joins ``a.co.uk`` with ``b.co.uk``; the cost is that such a site sees the other's origin
    (never its path), which is what browsers send cross-origin by default anyway.
    """
    sa, sb = _split(a), _split(b)
    if sa is None or sb is None or sa[0] != sb[0]:
        return False
    ha, hb = sa[1], sb[1]
    if ha == hb:
        return True
    if _is_ip(ha) or _is_ip(hb):
        return False  # addresses have no registrable domain; only an exact match is same-site
    la, lb = ha.split("."), hb.split(".")
    return len(la) >= 2 and len(lb) >= 2 and la[-2:] == lb[-2:]


def _strict_rewrites(headers: Headers, url: str, cfg: AnonymizeConfig, keep: set[str]) -> Headers:
    """Strict's substitutions: one User-Agent and Accept-Language for all, Referer trimmed or dropped."""
    out = headers
    # Set even when absent: a client without the header would stand out, and a Vary on it would split
    # the cache between strict clients.
    if "user-agent" not in keep:
        out = out.with_("User-Agent", cfg.user_agent)
    if "accept-language" not in keep:
        out = out.with_("Accept-Language", cfg.accept_language)
    if "referer" not in keep and (referer := out.get("Referer")) is not None:
        trimmed = _strict_referer(referer, url)
        out = out.without("Referer") if trimmed is None else out.with_("Referer", trimmed)
    return out


def _strict_referer(referer: str, url: str) -> str | None:
    """Referer cut to its origin ("https://a.example/") when same-site with `url`, else None (drop it)."""
    if not same_site(referer, url):
        return None
    parts = urlsplit(referer.strip())
    try:
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}{'' if port in (None, default) else f':{port}'}/"


def _split(url: str) -> tuple[str, str] | None:
    """(scheme, host) of an absolute http(s) URL, lower-cased, or None."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return None
    return scheme, host.rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# --- TOML ------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 tchar
_BAD_VALUE = re.compile(r"[\r\n\x00]")  # would let a config value smuggle another header line
_KEYS = ("level", "user_agent", "accept_language", "remove", "set", "keep", "response_remove")


def parse_anonymize(table: Mapping[str, object]) -> AnonymizeConfig:
    """The record for a TOML `[anonymize]` table.

    Raises:
        ValueError: naming the key (``anonymize.<key>: …``) for an unknown key or a bad value.
    """
    for key in table:
        if key not in _KEYS:
            raise ValueError(f"anonymize.{key}: unknown key; expected one of {', '.join(_KEYS)}")
    level = table.get("level", Level.STANDARD.value)
    if not isinstance(level, str) or level not in {lv.value for lv in Level}:
        raise ValueError(f"anonymize.level: {level!r} is not one of {', '.join(lv.value for lv in Level)}")
    remove = _names("remove", table.get("remove", []))
    keep = _names("keep", table.get("keep", []))
    for name in keep:
        if name.lower() in _PROXY:
            raise ValueError(f"anonymize.keep: {name!r} is never forwarded; remove it from keep")
        if name.lower() in {r.lower() for r in remove}:
            raise ValueError(f"anonymize.keep: {name!r} is also in anonymize.remove; keep it in only one")
    raw_set = table.get("set", {})
    if not isinstance(raw_set, Mapping):
        raise ValueError(f'anonymize.set: {raw_set!r} is not a table; try e.g. {{ DNT = "1" }}')
    pairs: list[tuple[str, str]] = []
    for name, value in raw_set.items():
        _check_name("set", name)
        if name.lower() in _PROXY:
            raise ValueError(f"anonymize.set: {name!r} is never forwarded; configure upstream auth instead")
        if name.lower() in {n.lower() for n, _ in pairs}:
            raise ValueError(f"anonymize.set: {name!r} appears twice (names are case-insensitive)")
        pairs.append((name, _value(f"set.{name}", value)))
    return AnonymizeConfig(
        level=Level(level),
        user_agent=_value("user_agent", table.get("user_agent", DEFAULT_USER_AGENT)),
        accept_language=_value("accept_language", table.get("accept_language", DEFAULT_ACCEPT_LANGUAGE)),
        remove=remove,
        set=tuple(pairs),
        keep=keep,
        response_remove=_names("response_remove", table.get("response_remove", [])),
    )


def _names(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f'anonymize.{key}: {value!r} is not a list of header names; try e.g. ["X-Debug"]')
    items: Iterable[object] = value
    return tuple(_check_name(key, item) for item in items)


def _check_name(key: str, name: object) -> str:
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ValueError(f"anonymize.{key}: {name!r} is not a header name (letters, digits, '-' …)")
    return name


def _value(key: str, value: object) -> str:
    if not isinstance(value, str) or not value or _BAD_VALUE.search(value):
        raise ValueError(f"anonymize.{key}: {value!r} is not a header value (a non-empty one-line string)")
    return value
