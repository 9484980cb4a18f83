"""Egress config: TOML tables and --upstream flags to records; every error names its key."""

from __future__ import annotations

import base64
import tomllib
from typing import Any

import pytest

from fwdproxy.balance.config import DIRECT, Algorithm, EgressConfig, Group, HealthCheck, Member, Route
from fwdproxy.balance.parse import parse_cli_upstreams, parse_member_url, parse_upstreams

ISSUE_EXAMPLE = """
[upstreams.egress]
algorithm = "weighted-round-robin"
members = [ { url = "http://127.0.0.1:3128", weight = 5 }, { url = "http://user:pw@127.0.0.1:3129", weight = 2 } ]

[[routes]]
match = "*.example.com"
upstream = "egress"
"""


def parse_toml(text: str) -> EgressConfig:
    doc = tomllib.loads(text)
    return parse_upstreams(doc.get("upstreams", {}), doc.get("routes", []))


def test_issue_example() -> None:
    config = parse_toml(ISSUE_EXAMPLE)
    assert config == EgressConfig(
        groups=(
            Group(
                "egress",
                Algorithm.WEIGHTED_ROUND_ROBIN,
                (
                    Member("127.0.0.1", 3128, weight=5),
                    Member("127.0.0.1", 3129, weight=2, username="user", password="pw"),
                ),
            ),
        ),
        routes=(Route("*.example.com", "egress"),),
    )
    group = config.groups[0]
    assert (group.max_fails, group.cooldown, group.health_check) == (3, 10.0, None)


def test_all_group_keys() -> None:
    config = parse_toml(
        """
        [upstreams.parents]
        algorithm = "url-hash"
        members = [ { url = "https://10.0.0.1:3129" } ]
        max_fails = 5
        cooldown = "1m"
        health_check = { interval = "5s", url = "http://example.com/health" }
        """
    )
    group = config.groups[0]
    assert group.algorithm is Algorithm.URL_HASH
    assert group.members == (Member("10.0.0.1", 3129, scheme="https"),)
    assert (group.max_fails, group.cooldown) == (5, 60.0)
    assert group.health_check == HealthCheck(5.0, "http://example.com/health")


def test_algorithm_defaults_to_round_robin() -> None:
    config = parse_upstreams({"g": {"members": [{"url": "http://h:1"}]}}, [])
    assert config.groups[0].algorithm is Algorithm.ROUND_ROBIN


@pytest.mark.parametrize(
    "url, host, port, auth",
    [
        pytest.param("http://10.0.0.5:3128", "10.0.0.5", 3128, None, id="plain"),
        pytest.param("http://proxy.corp:8080/", "proxy.corp", 8080, None, id="trailing slash"),
        pytest.param("HTTP://Proxy.Corp:8080", "proxy.corp", 8080, None, id="case"),
        pytest.param("http://[::1]:3128", "::1", 3128, None, id="ipv6"),
        pytest.param("http://user:pw@h:1", "h", 1, ("user", "pw"), id="credentials"),
        pytest.param("http://us%40er:p%3Aw@h:1", "h", 1, ("us@er", "p:w"), id="percent-decoded"),
        pytest.param("http://user@h:1", "h", 1, ("user", ""), id="user only"),
    ],
)
def test_member_url(url: str, host: str, port: int, auth: tuple[str, str] | None) -> None:
    member = parse_member_url(url)
    assert (member.host, member.port) == (host, port)
    if auth is None:
        assert member.proxy_authorization is None
    else:
        expected = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        assert member.proxy_authorization == f"Basic {expected}"


def test_credentials_stay_out_of_repr_and_url() -> None:
    member = parse_member_url("http://user:secret@h:1")
    assert "secret" not in repr(member)
    assert member.url == "http://h:1"
    assert parse_member_url("http://[::1]:3128").name == "[::1]:3128"


@pytest.mark.parametrize(
    "specs, balance, members",
    [
        pytest.param(["http://a:1"], "round-robin", [Member("a", 1)], id="one"),
        pytest.param(
            ["http://a:1,5", "http://b:2, 2"], "weighted-round-robin", [Member("a", 1, 5), Member("b", 2, 2)]
        ),
        pytest.param(
            ["http://u:p,w@a:1"], "ip-hash", [Member("a", 1, username="u", password="p,w")], id="comma in pw"
        ),
        pytest.param(
            ["http://u:p,w@a:1,3"], "ip-hash", [Member("a", 1, 3, username="u", password="p,w")], id="both"
        ),
    ],
)
def test_cli_shortcut(specs: list[str], balance: str, members: list[Member]) -> None:
    config = parse_cli_upstreams(specs, balance)
    assert config.groups == (Group("default", Algorithm(balance), tuple(members)),)
    assert config.route("anything.example") == "default"


def test_cli_without_upstreams_goes_direct() -> None:
    assert parse_cli_upstreams([]) == EgressConfig()
    assert EgressConfig().route("example.com") == DIRECT


@pytest.mark.parametrize(
    "specs, balance, message",
    [
        pytest.param(
            ["http://a:1,-2"], "round-robin", "'http://a:1,-2': weight -2 is negative", id="negative"
        ),
        pytest.param(["http://a:1,0"], "round-robin", "weight 0 is not positive", id="zero"),
        pytest.param(
            ["a:1"], "round-robin", "'a:1': 'a:1' is not a proxy URL; write it as http://", id="no scheme"
        ),
        pytest.param(
            ["http://a:1"],
            "fastest",
            "--balance: 'fastest' is not an algorithm; choose one of round-robin, ",
            id="algo",
        ),
        pytest.param(
            ["http://a:1", "http://a:1,2"], "round-robin", "'http://a:1,2': a:1 is already member 0", id="dup"
        ),
    ],
)
def test_cli_errors(specs: list[str], balance: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_cli_upstreams(specs, balance)
    assert message in str(e.value)


def test_cli_group_joins_the_file_and_routes_may_name_it() -> None:
    cli = parse_cli_upstreams(["http://a:1"])
    config = parse_upstreams(
        {"egress": group()},
        [{"match": "*.corp", "upstream": "egress"}, {"match": "*", "upstream": "default"}],
        extra_groups=cli.groups,
    )
    assert [g.name for g in config.groups] == ["default", "egress"]
    assert (config.route("git.corp"), config.route("example.org")) == ("egress", "default")


def test_cli_group_and_a_default_table_clash() -> None:
    with pytest.raises(ValueError, match=r"^upstreams\.default: group 'default' is also made by --upstream"):
        parse_upstreams({"default": group()}, extra_groups=parse_cli_upstreams(["http://a:1"]).groups)


def group(**overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"members": [{"url": "http://a:1"}, {"url": "http://b:2"}]}
    table.update(overrides)
    return table


OK_ROUTES = [{"match": "*", "upstream": "egress"}]


@pytest.mark.parametrize(
    "upstreams, routes, message",
    [
        pytest.param(
            {"egress": group(members=[{"url": "http://a:1"}, {"url": "http://b:2", "weight": -2}])},
            [],
            "upstreams.egress.members[1].weight: -2 is negative; use a positive integer",
            id="negative weight",
        ),
        pytest.param(
            {"egress": group(members=[{"url": "http://a:1", "weight": 0}])},
            [],
            "upstreams.egress.members[0].weight: 0 is not positive",
            id="zero weight",
        ),
        pytest.param(
            {"egress": group(members=[{"url": "http://a:1", "weight": "5"}])},
            [],
            "upstreams.egress.members[0].weight: '5' is not an integer",
            id="string weight",
        ),
        pytest.param(
            {"egress": group(members=[])}, [], "upstreams.egress.members: []; list at least one", id="zero"
        ),
        pytest.param(
            {"egress": {}}, [], "upstreams.egress.members: missing; list at least one proxy", id="none"
        ),
        pytest.param(
            {"egress": group(members=[{"url": "ftp://a:1"}])},
            [],
            "upstreams.egress.members[0].url: 'ftp://a:1' has scheme 'ftp'",
            id="scheme",
        ),
        pytest.param(
            {"egress": group(members=[{"url": "http://a"}])},
            [],
            "upstreams.egress.members[0].url: 'http://a' has no port",
            id="no port",
        ),
        pytest.param(
            {"egress": group(members=[{"url": "http://a:99999"}])},
            [],
            "upstreams.egress.members[0].url: 'http://a:99999' has a bad port",
            id="bad port",
        ),
        pytest.param(
            {"egress": group(members=[{"url": "http://a:1/path"}])},
            [],
            "upstreams.egress.members[0].url: 'http://a:1/path' has a path",
            id="path",
        ),
        pytest.param(
            {"egress": group(members=[{"weight": 1}])},
            [],
            "upstreams.egress.members[0].url: missing",
            id="member without url",
        ),
        pytest.param(
            {"egress": group(members=["http://a:1"])},
            [],
            "upstreams.egress.members[0]: expected a table, got 'http://a:1'",
            id="member not a table",
        ),
        pytest.param(
            {"egress": group(members=[{"url": "http://a:1", "weigth": 5}])},
            [],
            "upstreams.egress.members[0]: unknown key 'weigth'; expected one of url, weight",
            id="unknown member key",
        ),
        pytest.param(
            {"egress": group(members=[{"url": "http://a:1"}, {"url": "http://a:1/"}])},
            [],
            "upstreams.egress.members[1].url: a:1 is already member 0",
            id="duplicate member",
        ),
        pytest.param(
            {"egress": group(algorithm="fastest")},
            [],
            "upstreams.egress.algorithm: 'fastest' is not an algorithm; choose one of round-robin, "
            "weighted-round-robin, ip-hash, least-connections, least-response-time, url-hash",
            id="unknown algorithm",
        ),
        pytest.param(
            {"egress": group(balance="ip-hash")},
            [],
            "upstreams.egress: unknown key 'balance'; expected one of algorithm, members,",
            id="unknown group key",
        ),
        pytest.param(
            {"egress": group(max_fails=0)}, [], "upstreams.egress.max_fails: 0 is not a positive", id="fails"
        ),
        pytest.param(
            {"egress": group(cooldown="soon")}, [], "upstreams.egress.cooldown: 'soon' is not a dur", id="cd"
        ),
        pytest.param(
            {"egress": group(cooldown=0)}, [], "upstreams.egress.cooldown: 0 is zero", id="zero cooldown"
        ),
        pytest.param(
            {"egress": group(health_check={"interval": "5s"})},
            [],
            "upstreams.egress.health_check.url: None is not an http(s) URL",
            id="check without url",
        ),
        pytest.param(
            {"egress": group(health_check={"url": "http://x/"})},
            [],
            "upstreams.egress.health_check.interval: missing",
            id="check without interval",
        ),
        pytest.param(
            {"egress": group(health_check={"url": "http://x/", "interval": "5s", "timeout": 1})},
            [],
            "upstreams.egress.health_check: unknown key 'timeout'",
            id="unknown check key",
        ),
        pytest.param({"direct": group()}, [], "upstreams.direct: 'direct' is reserved", id="reserved name"),
        pytest.param(
            {"egress": "http://a:1"}, [], "upstreams.egress: expected a table", id="group not a table"
        ),
        pytest.param(
            {"egress": group()},
            [{"match": "*", "upstream": "egres"}],
            "routes[0].upstream: 'egres' is not a group; use one of 'egress' or 'direct'",
            id="unknown group in route",
        ),
        pytest.param(
            {"egress": group()},
            [*OK_ROUTES, {"upstream": "egress"}],
            "routes[1].match: None is not a host glob",
            id="route without match",
        ),
        pytest.param(
            {"egress": group()},
            [{"match": "*", "upstream": "egress", "via": "x"}],
            "routes[0]: unknown key 'via'; expected one of match, upstream",
            id="unknown route key",
        ),
        pytest.param(
            {"egress": group()}, {"match": "*"}, "routes: expected an array of tables", id="routes table"
        ),
    ],
)
def test_errors_name_the_key(upstreams: dict[str, Any], routes: Any, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_upstreams(upstreams, routes)
    assert message in str(e.value)


ROUTED = parse_upstreams(
    {"egress": group(), "default": group(), "eu": group()},
    [
        {"match": "*.internal.example", "upstream": "direct"},
        {"match": "*.example", "upstream": "egress"},
        {"match": "*.eu", "upstream": "eu"},
        {"match": "*.example", "upstream": "eu"},
    ],
)


@pytest.mark.parametrize(
    "config, host, expected",
    [
        pytest.param(ROUTED, "a.internal.example", "direct", id="first match wins (direct)"),
        pytest.param(ROUTED, "www.example", "egress", id="first match wins over a later route"),
        pytest.param(ROUTED, "WWW.Shop.EU.", "eu", id="case and trailing dot ignored"),
        pytest.param(ROUTED, "example", "default", id="glob needs the dot; unmatched to default"),
        pytest.param(
            parse_upstreams({"egress": group()}, OK_ROUTES[:0]), "a.b", DIRECT, id="no default: direct"
        ),
    ],
)
def test_route(config: EgressConfig, host: str, expected: str) -> None:
    assert config.route(host) == expected
