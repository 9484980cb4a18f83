"""A group's balancer over simulated requests: failover, ejection and restore, response times, stats."""

from __future__ import annotations

from collections import Counter

import pytest

from fwdproxy.balance.algorithms import STALE_AFTER, rendezvous_score
from fwdproxy.balance.balancer import Balancer, Egress, Event, MemberStats, NoMember
from fwdproxy.balance.config import Algorithm, EgressConfig, Group, Member
from fwdproxy.balance.health import Change
from fwdproxy.balance.parse import parse_upstreams

NOW = 1000.0
A, B, C = (Member(f"10.0.0.{i}", 3128) for i in (1, 2, 3))


def balancer(algorithm: Algorithm = Algorithm.ROUND_ROBIN, *members: Member, max_fails: int = 3) -> Balancer:
    return Balancer(Group("egress", algorithm, members or (A, B, C), max_fails=max_fails))


def serve(
    b: Balancer, now: float, dead: set[Member], events: list[Event], client_ip: str = ""
) -> Member | NoMember:
    """One request as an addon runs it: choose, fail over on connect errors, record the answer, release."""
    tried: set[Member] = set()
    while True:
        choice = b.choose(now=now, client_ip=client_ip, tried=tried)
        if isinstance(choice, NoMember):
            return choice
        if choice in dead:
            if event := b.failed(choice, now=now):
                events.append(event)
            b.release(choice)
            tried.add(choice)
            continue
        if event := b.first_byte(choice, 0.01, now=now):
            events.append(event)
        b.release(choice)
        return choice


def test_failover_order_round_robin() -> None:
    b = balancer()
    assert b.choose(now=NOW) == A
    assert b.choose(now=NOW, tried={A}) == B
    assert b.choose(now=NOW, tried={A, B}) == C
    assert b.choose(now=NOW, tried={A, B, C}) == NoMember(
        "egress", ejected=(), tried=(A.name, B.name, C.name)
    )


@pytest.mark.parametrize("algorithm", [Algorithm.IP_HASH, Algorithm.URL_HASH])
def test_failover_order_hash_is_the_score_order(algorithm: Algorithm) -> None:
    key = "203.0.113.7"
    expected = sorted((A, B, C), key=lambda m: rendezvous_score(m, key), reverse=True)
    b, tried, order = balancer(algorithm), set[Member](), []
    for _ in range(3):
        choice = b.choose(now=NOW, client_ip=key, cache_key=key, tried=tried)
        assert isinstance(choice, Member)
        order.append(choice)
        tried.add(choice)
    assert order == expected


def test_one_dead_of_three_every_request_succeeds_and_it_is_ejected_after_max_fails() -> None:
    b, events, served = balancer(), list[Event](), []
    for i in range(30):
        served.append(serve(b, NOW + i * 0.1, {B}, events))
    assert all(isinstance(m, Member) and m != B for m in served)
    assert [(e.change, e.member, e.failures_in_row) for e in events] == [(Change.EJECTED, B, 3)]
    assert (
        events[0].message
        == "upstream group 'egress': ejected http://10.0.0.2:3128 for 10s after 3 failure(s) in a row"
    )
    stats = {s.member: s for s in b.stats(now=NOW + 3)}
    assert (stats[B.name].failures, stats[B.name].requests, stats[B.name].ejected) == (3, 3, True)
    assert stats[A.name].requests + stats[C.name].requests == 30


def test_all_ejected_is_a_distinct_outcome_naming_the_group() -> None:
    b, events = balancer(max_fails=1), list[Event]()
    assert isinstance(serve(b, NOW, {A, B, C}, events), NoMember)
    outcome = b.choose(now=NOW + 1)
    assert outcome == NoMember("egress", ejected=(A.name, B.name, C.name), tried=())
    assert outcome.message == (
        "no upstream proxy of group 'egress' is available: 3 ejected (10.0.0.1:3128, 10.0.0.2:3128, 10.0.0.3:3128)"
    )
    assert len(events) == 3


def test_no_member_lists_ejected_and_tried_apart() -> None:
    b = balancer(max_fails=1)
    b.failed(b.choose(now=NOW), now=NOW)  # type: ignore[arg-type]
    b.release(A)
    outcome = b.choose(now=NOW, tried={A, B, C})
    assert outcome == NoMember("egress", ejected=(A.name,), tried=(B.name, C.name))
    assert outcome.message == (
        "no upstream proxy of group 'egress' is available: 1 ejected (10.0.0.1:3128); "
        "2 failed for this request (10.0.0.2:3128, 10.0.0.3:3128)"
    )


def test_ejected_member_comes_back_on_probation_and_is_restored_by_a_success() -> None:
    b, events = balancer(max_fails=1), list[Event]()
    serve(b, NOW, {A}, events)  # A fails once: out for 10 s
    assert [serve(b, NOW + 1 + i, set(), events) for i in range(4)] == [C, B, C, B]  # A skipped
    assert [serve(b, NOW + 10, set(), events) for _ in range(3)] == [C, A, B]  # probation: A's turn again
    assert [e.change for e in events] == [Change.EJECTED, Change.RESTORED]
    assert events[-1].message == "upstream group 'egress': restored http://10.0.0.1:3128"


def test_probation_failure_doubles_the_cooldown() -> None:
    b, events = balancer(max_fails=1), list[Event]()
    serve(b, NOW, {A}, events)
    assert b.choose(now=NOW + 10, tried={B, C}) == A  # probation: A may be chosen again ...
    again = b.failed(A, now=NOW + 10)  # ... and its first failure ejects it for twice as long
    b.release(A)
    assert again is not None
    assert [e.cooldown for e in [*events, again]] == [10, 20]
    assert b.choose(now=NOW + 29.9, tried={B, C}) == NoMember(
        "egress", ejected=(A.name,), tried=(B.name, C.name)
    )


def test_active_check_restores_before_the_cooldown_ends() -> None:
    b, events = balancer(max_fails=1), list[Event]()
    serve(b, NOW, {A}, events)
    assert b.check_result(A, False, now=NOW + 1) is None  # still sick: the cooldown is not extended
    event = b.check_result(A, True, now=NOW + 2)
    assert event is not None and event.change is Change.RESTORED
    assert b.choose(now=NOW + 2, tried={B, C}) == A


def test_failing_active_checks_eject_an_idle_member() -> None:
    b = balancer()
    results = [b.check_result(A, False, now=NOW + i) for i in range(3)]
    assert [r and r.change for r in results] == [None, None, Change.EJECTED]


def test_least_response_time_starves_a_slow_member_and_finds_it_again() -> None:
    b, now, slow = balancer(Algorithm.LEAST_RESPONSE_TIME), NOW, {C: 0.21}
    picks: list[Member] = []

    def request() -> None:
        nonlocal now
        member = b.choose(now=now)
        assert isinstance(member, Member)
        ttfb = slow.get(member, 0.01)
        b.first_byte(member, ttfb, now=now + ttfb)
        b.release(member)
        picks.append(member)
        now += ttfb

    for _ in range(50):
        request()
    assert Counter(picks)[C] / 50 < 0.2
    assert Counter(picks)[C] == 1  # the first-round probe only
    # C recovers and is now the fastest; traffic keeps flowing every 0.1 s.
    slow, picks = {C: 0.005}, []
    while now < NOW + STALE_AFTER + 5:
        request()
        now += 0.1
    assert C in picks  # its stale estimate was forgotten, so it was probed ...
    first = picks.index(C)
    assert Counter(picks[first:])[C] / len(picks[first:]) > 0.9  # ... and, being fastest, wins again


def test_least_connections_counts_active_until_release() -> None:
    b = balancer(Algorithm.LEAST_CONNECTIONS)
    first = [b.choose(now=NOW) for _ in range(3)]
    assert first == [A, B, C]
    b.release(B)
    assert b.choose(now=NOW) == B
    assert [s.active for s in b.stats(now=NOW)] == [1, 1, 1]


def test_restore_forgets_response_times_from_before_the_ejection() -> None:
    b = balancer(Algorithm.LEAST_RESPONSE_TIME, max_fails=1)
    b.choose(now=NOW)
    b.first_byte(A, 5.0, now=NOW)
    b.release(A)
    b.failed(A, now=NOW + 1)
    b.check_result(A, True, now=NOW + 2)
    assert b.stats(now=NOW + 2)[0].ewma_response_time is None


def test_release_more_often_than_chosen_is_a_bug() -> None:
    b = balancer()
    b.release(b.choose(now=NOW))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="released more often than chosen"):
        b.release(A)
    with pytest.raises(ValueError, match="10.0.0.9:3128 is not a member of group 'egress'"):
        b.failed(Member("10.0.0.9", 3128), now=NOW)


def test_stats_snapshot() -> None:
    b = balancer()
    member = b.choose(now=NOW)
    assert member == A
    b.first_byte(A, 0.2, now=NOW)
    b.choose(now=NOW)  # B, still active
    b.release(A)
    assert b.stats(now=NOW)[:2] == (
        MemberStats("egress", A.name, requests=1, active=0, failures=0, ejections=0, ejected=False,
                    avg_response_time=0.2, ewma_response_time=0.2),
        MemberStats("egress", B.name, requests=1, active=1, failures=0, ejections=0, ejected=False,
                    avg_response_time=None, ewma_response_time=None),
    )  # fmt: skip
    assert b.stats(now=NOW)[0].as_dict()["requests"] == 1


def test_egress_routes_to_balancers_or_direct() -> None:
    config = parse_upstreams(
        {"egress": {"members": [{"url": "http://10.0.0.1:3128"}]}},
        [{"match": "*.example.com", "upstream": "egress"}, {"match": "*", "upstream": "direct"}],
    )
    egress = Egress(config)
    routed = egress.route("www.example.com")
    assert routed is not None and routed.group.name == "egress"
    assert egress.route("example.org") is None
    assert Egress(EgressConfig()).route("example.org") is None
    assert [s.member for s in egress.stats(now=NOW)] == ["10.0.0.1:3128"]


def test_credentials_go_with_their_member_only() -> None:
    config = parse_upstreams(
        {"default": {"members": [{"url": "http://u:pw@10.0.0.1:1"}, {"url": "http://10.0.0.2:1"}]}}
    )
    b = Egress(config).route("x")
    assert b is not None
    first, second = b.choose(now=NOW), b.choose(now=NOW)
    assert isinstance(first, Member) and isinstance(second, Member)
    assert first.proxy_authorization == "Basic dTpwdw=="
    assert second.proxy_authorization is None
