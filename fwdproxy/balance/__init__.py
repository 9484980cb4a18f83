"""Egress balancing: route a request to an upstream group and pick a healthy member (issue 6)."""

from fwdproxy.balance.algorithms import ResponseTime, rendezvous_score, strategy_for
from fwdproxy.balance.balancer import Balancer, Egress, Event, MemberStats, NoMember
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
from fwdproxy.balance.health import MAX_COOLDOWN, Change, Health
from fwdproxy.balance.parse import parse_cli_upstreams, parse_member_url, parse_upstreams

__all__ = [
    "DEFAULT_GROUP",
    "DIRECT",
    "MAX_COOLDOWN",
    "Algorithm",
    "Balancer",
    "Change",
    "Egress",
    "EgressConfig",
    "Event",
    "Group",
    "Health",
    "HealthCheck",
    "Member",
    "MemberStats",
    "NoMember",
    "ResponseTime",
    "Route",
    "parse_cli_upstreams",
    "parse_member_url",
    "parse_upstreams",
    "rendezvous_score",
    "strategy_for",
]
