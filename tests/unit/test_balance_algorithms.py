"""The six balancing algorithms on made-up candidates: exact sequences, hash stability, load decisions."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from fwdproxy.balance.algorithms import (
    STALE_AFTER,
    IpHash,
    LeastConnections,
    LeastResponseTime,
    ResponseTime,
    RoundRobin,
    SmoothWeightedRoundRobin,
    Strategy,
    UrlHash,
    client_key,
    strategy_for,
)
from fwdproxy.balance.config import Algorithm, Member

NOW = 1000.0


@dataclass
class Fake:
    """A candidate with made-up load."""

    member: Member
    index: int
    active: int = 0
    response_time: ResponseTime = field(default_factory=ResponseTime)


def pool(*weights: int) -> list[Fake]:
    """Members named a, b, c ... (host) with these weights."""
    return [Fake(Member("abcdefgh"[i], 3128, w), i) for i, w in enumerate(weights)]


def picks(
    strategy: Strategy, candidates: Sequence[Fake], n: int, client_ip: str = "", cache_key: str = ""
) -> str:
    return "".join(
        strategy.choose(candidates, client_ip=client_ip, cache_key=cache_key, now=NOW).member.host
        for _ in range(n)
    )


def longest_run(sequence: str) -> int:
    return max(len(list(run)) for _, run in itertools.groupby(sequence))


@pytest.mark.parametrize(
    "weights, expected",
    [
        pytest.param((5, 1, 1), "aabacaa" * 2, id="nginx example 5,1,1"),
        pytest.param((5, 2), "abaaaba" * 2, id="5,2"),
        pytest.param((1, 1, 1), "abc" * 3, id="equal weights are round robin"),
        pytest.param((2, 3), "babab" * 2, id="2,3"),
    ],
)
def test_smooth_weighted_round_robin_sequence(weights: tuple[int, ...], expected: str) -> None:
    assert picks(SmoothWeightedRoundRobin(), pool(*weights), len(expected)) == expected


def test_smooth_weighted_round_robin_5_2_over_70() -> None:
    sequence = picks(SmoothWeightedRoundRobin(), pool(5, 2), 70)
    assert Counter(sequence) == {"a": 50, "b": 20}
    assert longest_run(sequence) <= 3


def test_smooth_weighted_round_robin_skips_left_out_members() -> None:
    swrr, members = SmoothWeightedRoundRobin(), pool(5, 1, 1)
    assert picks(swrr, [members[0], members[2]], 6) == "aaacaa"  # b ejected: a and c share 5:1


def test_round_robin_30_over_3() -> None:
    sequence = picks(RoundRobin(), pool(1, 1, 1), 30)
    assert sequence == "abc" * 10
    assert Counter(sequence) == {"a": 10, "b": 10, "c": 10}


def test_round_robin_ignores_weights_and_skips_left_out_members() -> None:
    rr, members = RoundRobin(), pool(5, 1, 1)
    assert picks(rr, members, 4) == "abca"
    assert picks(rr, [members[0], members[2]], 3) == "cac"  # b ejected: its turn passes to c
    assert picks(rr, members, 3) == "abc"


def test_hash_is_stable_across_instances_and_processes() -> None:
    # Pinned: a salted or positional hash would change these (and move every client after a restart).
    ips = [f"192.0.2.{i}" for i in range(1, 9)]
    assert [picks(IpHash(), pool(1, 1, 1), 1, client_ip=ip) for ip in ips] == list("bccbaaca")


def test_ip_hash_same_client_same_member_and_clients_spread() -> None:
    members = pool(1, 1, 1)
    chosen = {ip: picks(IpHash(), members, 5, client_ip=ip) for ip in (f"127.0.0.{i}" for i in range(1, 11))}
    assert all(len(set(seq)) == 1 for seq in chosen.values())
    assert len({seq[0] for seq in chosen.values()}) > 1


@pytest.mark.parametrize(
    "mapped, plain",
    [
        pytest.param("::ffff:127.0.0.1", "127.0.0.1", id="IPv4-mapped IPv6 is the IPv4 client"),
        pytest.param("2001:DB8::1", "2001:db8::1", id="IPv6 spelled canonically"),
        pytest.param("not an ip", "not an ip", id="kept as is"),
    ],
)
def test_client_key(mapped: str, plain: str) -> None:
    assert client_key(mapped) == client_key(plain) == plain


def assignment(strategy: Strategy, members: Sequence[Fake], keys: Sequence[str], by: str) -> dict[str, str]:
    out = {}
    for key in keys:
        kwargs = {"client_ip": key, "cache_key": ""} if by == "ip" else {"client_ip": "", "cache_key": key}
        out[key] = strategy.choose(members, now=NOW, **kwargs).member.host
    return out


IPS = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(10_000)]
URLS = [f"GET http://example.com/item/{i}?v=1" for i in range(10_000)]
HASHES = [
    pytest.param(IpHash, IPS, "ip", id="ip-hash"),
    pytest.param(UrlHash, URLS, "url", id="url-hash"),
]


@pytest.mark.parametrize("make, keys, by", HASHES)
def test_adding_a_member_moves_about_a_quarter_only_to_it(
    make: Callable[[], Strategy], keys: list[str], by: str
) -> None:
    before = assignment(make(), pool(1, 1, 1), keys, by)
    after = assignment(make(), pool(1, 1, 1, 1), keys, by)
    moved = [k for k in keys if before[k] != after[k]]
    assert 0.18 <= len(moved) / len(keys) <= 0.32
    assert {after[k] for k in moved} == {"d"}


@pytest.mark.parametrize("make, keys, by", HASHES)
def test_removing_a_member_moves_only_its_keys(
    make: Callable[[], Strategy], keys: list[str], by: str
) -> None:
    members = pool(1, 1, 1, 1)
    before = assignment(make(), members, keys, by)
    after = assignment(make(), [members[0], members[1], members[3]], keys, by)  # c ejected or removed
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "c"}
    assert 0.18 <= len(moved) / len(keys) <= 0.32


@pytest.mark.parametrize("make, keys, by", HASHES)
def test_hash_shares_follow_weights(make: Callable[[], Strategy], keys: list[str], by: str) -> None:
    shares = Counter(assignment(make(), pool(3, 1), keys, by).values())
    assert 0.72 <= shares["a"] / len(keys) <= 0.78


def loaded(weights: Sequence[int], active: Sequence[int], ewma: Sequence[float | None] = ()) -> list[Fake]:
    members = pool(*weights)
    for m, a in zip(members, active, strict=True):
        m.active = a
    for m, e in zip(members, ewma, strict=False):
        m.response_time = ResponseTime(e, NOW, 1, e or 0.0)
    return members


@pytest.mark.parametrize(
    "weights, active, expected",
    [
        pytest.param((1, 1, 1), (2, 1, 3), "b", id="fewest active"),
        pytest.param((4, 1), (3, 1), "a", id="per weight: 3/4 beats 1/1"),
        pytest.param((2, 1), (2, 1), "a", id="2/2 ties 1/1: weighted turn starts with the heavier"),
        pytest.param((1, 1, 1), (1, 0, 0), "b", id="tie between b and c: first in turn"),
    ],
)
def test_least_connections(weights: tuple[int, ...], active: tuple[int, ...], expected: str) -> None:
    assert picks(LeastConnections(), loaded(weights, active), 1) == expected


@pytest.mark.parametrize(
    "weights, expected",
    [
        pytest.param((1, 1, 1), "abcabc", id="idle members in turn"),
        pytest.param((2, 1), "abaaba", id="idle members in weighted turn"),
    ],
)
def test_least_connections_ties_in_turn(weights: tuple[int, ...], expected: str) -> None:
    assert picks(LeastConnections(), pool(*weights), len(expected)) == expected


@pytest.mark.parametrize(
    "weights, active, ewma, expected",
    [
        pytest.param((1, 1), (0, 0), (0.1, 0.3), "a", id="faster wins when idle"),
        pytest.param((1, 1), (3, 0), (0.1, 0.3), "b", id="queue behind the fast one: 4*0.1 > 1*0.3"),
        pytest.param((1, 1), (2, 0), (0.1, 0.35), "a", id="3*0.1 < 0.35"),
        pytest.param((2, 1), (0, 0), (0.2, 0.15), "a", id="weight: 0.2/2 < 0.15"),
        pytest.param((1, 1, 1), (0, 0, 0), (None, 0.2, 0.1), "a", id="unknown borrows the best: probed"),
        pytest.param((1, 1), (1, 0), (None, None), "b", id="nothing measured: least connections"),
    ],
)
def test_least_response_time(
    weights: tuple[int, ...], active: tuple[int, ...], ewma: tuple[float | None, ...], expected: str
) -> None:
    assert picks(LeastResponseTime(), loaded(weights, active, ewma), 1) == expected


def test_least_response_time_forgets_stale_estimates() -> None:
    members = loaded((1, 1), (0, 0), (0.5, 0.01))
    members[0].response_time = ResponseTime(0.5, NOW - STALE_AFTER - 1, 1, 0.5)
    # a's slow estimate is older than STALE_AFTER: a counts as unknown, ties with b, and goes first in turn.
    assert picks(LeastResponseTime(), members, 1) == "a"
    members[0].response_time = ResponseTime(0.5, NOW - STALE_AFTER + 1, 1, 0.5)
    assert picks(LeastResponseTime(), members, 1) == "b"


@pytest.mark.parametrize(
    "samples, expected_ewma",
    [
        pytest.param([(0.2, NOW)], 0.2, id="first sample"),
        pytest.param([(0.2, NOW), (0.1, NOW + 1)], 0.3 * 0.1 + 0.7 * 0.2, id="blended"),
        pytest.param([(0.2, NOW), (0.1, NOW + STALE_AFTER + 1)], 0.1, id="stale average restarts"),
    ],
)
def test_response_time(samples: list[tuple[float, float]], expected_ewma: float) -> None:
    rt = ResponseTime()
    for ttfb, at in samples:
        rt = rt.observe(ttfb, at)
    assert rt.estimate(samples[-1][1]) == pytest.approx(expected_ewma)
    assert rt.mean == pytest.approx(sum(t for t, _ in samples) / len(samples))
    assert rt.estimate(samples[-1][1] + STALE_AFTER + 0.1) is None


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_every_algorithm_has_a_strategy(algorithm: Algorithm) -> None:
    members = pool(1, 2)
    assert strategy_for(algorithm).choose(members, client_ip="10.0.0.1", cache_key="k", now=NOW) in members
