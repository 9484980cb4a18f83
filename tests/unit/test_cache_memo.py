"""PerObject and PerObjectLatest: facts remembered by identity, never confused between objects, bounded."""

from __future__ import annotations

from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.freshness import freshness_lifetime
from fwdproxy.cache.memo import PerObject, PerObjectLatest
from fwdproxy.http_model import Headers, StoredResponse


def test_computes_once_per_object_and_tells_equal_objects_apart() -> None:
    calls: list[object] = []

    def compute(obj: list[int]) -> int:
        calls.append(obj)
        return len(obj)

    memo = PerObject(compute, size=2)
    a, b = [1], [1]
    assert memo(a) == memo(a) == memo(b) == 1
    assert calls == [a, b]


def test_forgets_the_oldest_beyond_its_size() -> None:
    memo = PerObject(id, size=2)
    objs = [object() for _ in range(3)]
    for o in objs:
        memo(o)
    assert len(memo._known) == 2 and id(objs[0]) not in memo._known


def test_a_lifetime_is_recomputed_for_another_config() -> None:
    stored = StoredResponse("http://a/", 200, "OK", Headers.of({"Cache-Control": "max-age=60"}), 0.0, 0.0, 0)
    assert freshness_lifetime(stored, CacheConfig()).seconds == 60
    from fwdproxy.cache.rules import parse_rules

    config = CacheConfig(rules=tuple(parse_rules([{"match": "http://a/*", "immutable": True}])))
    assert freshness_lifetime(stored, config).detail == "rule-immutable"
    assert freshness_lifetime(stored, CacheConfig()).seconds == 60


def test_latest_is_shared_for_the_same_arg_and_recomputed_for_a_new_one() -> None:
    calls: list[tuple[object, int]] = []

    def compute(obj: list[int], arg: int) -> list[int]:
        calls.append((obj, arg))
        return [*obj, arg]

    memo = PerObjectLatest(compute, size=2)
    a, b = [1], [1]
    first = memo(a, 5)
    assert memo(a, 5) is first and memo(b, 5) is not first
    assert memo(a, 6) == [1, 6] and memo(a, 6) is not first
    assert calls == [(a, 5), (b, 5), (a, 6)]


def test_latest_forgets_the_oldest_beyond_its_size() -> None:
    memo = PerObjectLatest(lambda obj, arg: arg, size=2)
    objs = [object() for _ in range(3)]
    for o in objs:
        memo(o, 1)
    assert len(memo._known) == 2 and id(objs[0]) not in memo._known
