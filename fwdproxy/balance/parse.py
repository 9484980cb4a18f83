"""Turn the ``[upstreams.*]``/``[[routes]]`` TOML tables and the ``--upstream`` flags into an EgressConfig."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import unquote, urlsplit

from fwdproxy.balance.config import (
    DEFAULT_GROUP,
    DIRECT,
    Algorithm,
    EgressConfig,
    Group,
    HealthCheck,
    Member,
    Route,
)
from fwdproxy.units import table_duration

_GROUP_KEYS = ("algorithm", "members", "max_fails", "cooldown", "health_check")
_MEMBER_KEYS = ("url", "weight")
_CHECK_KEYS = ("interval", "url")
_ROUTE_KEYS = ("match", "upstream")
_PROXY_SCHEMES = ("http", "https")
_EXAMPLE_URL = "http://10.0.0.5:3128"
_ALGORITHM_VALUES = tuple(a.value for a in Algorithm)
_TRAILING_WEIGHT = re.compile(r"(.*),\s*([+-]?\d+)\s*")


def parse_upstreams(
    upstreams: Mapping[str, object], routes: Sequence[object] = (), *, extra_groups: Sequence[Group] = ()
) -> EgressConfig:
    """Build the egress config from the ``upstreams`` table and the ``routes`` array of a TOML file.

    ``extra_groups`` (the ``--upstream`` shortcut's ``default`` group) come first and may be named by routes.

    Raises:
        ValueError: naming the offending key, e.g. ``upstreams.egress.members[1].weight: ...``.
    """
    extra = {g.name for g in extra_groups}
    for name in _table(upstreams, "upstreams", "[upstreams.NAME]"):
        if name in extra:
            raise ValueError(
                f"upstreams.{name}: group {name!r} is also made by --upstream; drop the flags or the table"
            )
    groups = tuple(extra_groups) + tuple(
        _group(name, table, f"upstreams.{name}")
        for name, table in _table(upstreams, "upstreams", "[upstreams.NAME]").items()
    )
    if not isinstance(routes, Sequence) or isinstance(routes, str):
        raise ValueError(f"routes: expected an array of tables ([[routes]]), got {routes!r}")
    names = [g.name for g in groups]
    return EgressConfig(groups, tuple(_route(r, f"routes[{i}]", names) for i, r in enumerate(routes)))


def parse_cli_upstreams(specs: Sequence[str], balance: str = Algorithm.ROUND_ROBIN.value) -> EgressConfig:
    """Build a single group named ``default`` from repeated ``--upstream URL[,WEIGHT]`` and ``--balance``.

    No specs means no group at all (every request leaves directly). Messages carry no flag name, so the
    caller prefixes its own (``--upstream`` on the CLI, ``fwd_upstreams`` in mitmproxy).
    """
    algorithm = _algorithm(balance, "--balance")
    members = []
    for spec in specs:
        url, weight = spec, "1"
        # The weight is whatever follows the last comma, but only if it looks like an integer: a comma
        # inside the password of the URL must stay part of the URL.
        if m := _TRAILING_WEIGHT.fullmatch(spec):
            url, weight = m.group(1), m.group(2)
        try:
            members.append(parse_member_url(url, _weight(int(weight), "weight ")))
        except ValueError as e:
            raise ValueError(f"{spec!r}: {e}") from None
    if not members:
        return EgressConfig()
    _check_unique(members, lambda i: f"--upstream {specs[i]!r}")
    return EgressConfig((Group(DEFAULT_GROUP, algorithm, tuple(members)),))


def parse_member_url(url: str, weight: int = 1) -> Member:
    """A member from ``http://[user:password@]host:port`` (``https://`` for TLS to the proxy itself)."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"{url!r} is not a proxy URL; write it as {_EXAMPLE_URL}")
    parts = urlsplit(url.strip())
    if parts.scheme not in _PROXY_SCHEMES:
        raise ValueError(f"{url!r} has scheme {parts.scheme!r}; an upstream proxy URL starts with http://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has a bad port; use a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host; write it as {_EXAMPLE_URL}")
    if not port:
        # No default: proxies listen on 3128, 8080, 8888... and guessing 80 would fail confusingly later.
        raise ValueError(f"{url!r} has no port; proxies have no standard port, so add it, e.g. :3128")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r} has a path or query; a proxy URL is only scheme://host:port")
    return Member(
        host=parts.hostname,
        port=port,
        weight=weight,
        scheme=parts.scheme,
        username=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
    )


def _group(name: str, value: object, key: str) -> Group:
    if name == DIRECT:
        raise ValueError(f"{key}: {DIRECT!r} is reserved for routes that skip upstreams; rename the group")
    table = _table(value, key, f"[{key}]")
    _check_keys(table, key, _GROUP_KEYS)
    algorithm = _algorithm(table.get("algorithm", Algorithm.ROUND_ROBIN.value), f"{key}.algorithm")
    raw_members = table.get("members")
    if not isinstance(raw_members, Sequence) or isinstance(raw_members, str) or not raw_members:
        raise ValueError(
            f"{key}.members: {'missing' if raw_members is None else repr(raw_members)}; list at least one "
            f'proxy, e.g. members = [{{ url = "{_EXAMPLE_URL}", weight = 1 }}]'
        )
    members = [_member(m, f"{key}.members[{i}]") for i, m in enumerate(raw_members)]
    _check_unique(members, lambda i: f"{key}.members[{i}].url")
    max_fails = table.get("max_fails", 3)
    if isinstance(max_fails, bool) or not isinstance(max_fails, int) or max_fails < 1:
        raise ValueError(f"{key}.max_fails: {max_fails!r} is not a positive integer; try 3")
    return Group(
        name=name,
        algorithm=algorithm,
        members=tuple(members),
        max_fails=max_fails,
        cooldown=table_duration(table.get("cooldown", 10), f"{key}.cooldown", positive=True),
        health_check=None if "health_check" not in table else _check(table["health_check"], key),
    )


def _member(value: object, key: str) -> Member:
    table = _table(value, key, f'{{ url = "{_EXAMPLE_URL}", weight = 1 }}')
    _check_keys(table, key, _MEMBER_KEYS)
    url = table.get("url")
    if not isinstance(url, str):
        raise ValueError(f"{key}.url: {'missing' if url is None else repr(url)}; write e.g. {_EXAMPLE_URL!r}")
    weight = _weight(table.get("weight", 1), f"{key}.weight: ")
    try:
        return parse_member_url(url, weight)
    except ValueError as e:
        raise ValueError(f"{key}.url: {e}") from None


def _check(value: object, group_key: str) -> HealthCheck:
    key = f"{group_key}.health_check"
    table = _table(value, key, '{ interval = "5s", url = "http://example.com/" }')
    _check_keys(table, key, _CHECK_KEYS)
    url = table.get("url")
    if (
        not isinstance(url, str)
        or urlsplit(url).scheme not in ("http", "https")
        or not urlsplit(url).hostname
    ):
        raise ValueError(f"{key}.url: {url!r} is not an http(s) URL; try e.g. 'http://example.com/'")
    if "interval" not in table:
        raise ValueError(f'{key}.interval: missing; add e.g. interval = "5s"')
    return HealthCheck(interval=table_duration(table["interval"], f"{key}.interval", positive=True), url=url)


def _route(value: object, key: str, groups: Sequence[str]) -> Route:
    table = _table(value, key, '[[routes]] with match = "*.example.com" and upstream = "NAME"')
    _check_keys(table, key, _ROUTE_KEYS)
    match, upstream = table.get("match"), table.get("upstream")
    if not isinstance(match, str) or not match.strip():
        raise ValueError(f'{key}.match: {match!r} is not a host glob; try e.g. "*.example.com"')
    if upstream != DIRECT and upstream not in groups:
        known = (
            f"one of {', '.join(repr(g) for g in groups)}"
            if groups
            else "a group defined in [upstreams.NAME]"
        )
        raise ValueError(f"{key}.upstream: {upstream!r} is not a group; use {known} or {DIRECT!r}")
    assert isinstance(upstream, str)
    return Route(match=match.strip().lower().rstrip("."), upstream=upstream)


def _table(value: object, key: str, example: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{key}: expected a table, got {value!r}; write e.g. {example}")
    return value


def _check_keys(table: Mapping[str, object], key: str, allowed: Sequence[str]) -> None:
    # Unknown keys are errors, not ignored: "weigth = 5" silently meaning weight 1 is worse than a refusal.
    for k in table:
        if k not in allowed:
            raise ValueError(f"{key}: unknown key {k!r}; expected one of {', '.join(allowed)}")


def _algorithm(value: object, key: str) -> Algorithm:
    if isinstance(value, str) and value.strip().lower() in _ALGORITHM_VALUES:
        return Algorithm(value.strip().lower())
    raise ValueError(f"{key}: {value!r} is not an algorithm; choose one of {', '.join(_ALGORITHM_VALUES)}")


def _weight(value: object, prefix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{prefix}{value!r} is not an integer; use a positive integer such as 1 or 5")
    if value < 0:
        raise ValueError(f"{prefix}{value} is negative; use a positive integer")
    if value == 0:
        raise ValueError(f"{prefix}0 is not positive; use a positive integer (remove the member to drain it)")
    return value


def _check_unique(members: Sequence[Member], key_of: Callable[[int], str]) -> None:
    seen: dict[str, int] = {}
    for i, m in enumerate(members):
        if m.name in seen:
            # Members are told apart by host:port (stats, hashing, failover), so a duplicate is ambiguous.
            raise ValueError(
                f"{key_of(i)}: {m.name} is already member {seen[m.name]}; list each proxy once and raise "
                "its weight instead"
            )
        seen[m.name] = i
