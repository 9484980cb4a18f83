"""Policy facts are worked out once per stored record and carried by it, never shared between records."""

from __future__ import annotations

import dataclasses

from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.facts import facts
from fwdproxy.cache.freshness import current_age, freshness_lifetime
from fwdproxy.cache.headers import full_headers, served_headers
from fwdproxy.cache.key import vary_matches
from fwdproxy.cache.rules import parse_rules
from fwdproxy.http_model import Headers, Request, StoredResponse


def record(**fields: str) -> StoredResponse:
    return StoredResponse("http://a/", 200, "OK", Headers.of(fields), 0.0, 0.0, 3)


def test_facts_are_computed_once_and_kept_with_the_record() -> None:
    stored = record(**{"Cache-Control": "max-age=60, must-revalidate", "Vary": "Accept", "Age": "5"})
    assert stored.facts is None
    known = facts(stored)
    assert stored.facts is known and facts(stored) is known
    assert (known.vary, known.initial_age, known.forbidding, known.no_cache) == (
        ("accept",),
        5.0,
        "must-revalidate",
        False,
    )
    assert "max-age" in known.cache_control


def test_equal_records_do_not_share_facts() -> None:
    a, b = record(Vary="Accept"), record(Vary="Accept")
    assert a == b and facts(a) is not facts(b)
    newer = dataclasses.replace(a, headers=Headers.of({"Vary": "Accept-Encoding"}))
    assert newer.facts is None
    assert facts(newer).vary == ("accept-encoding",)
    assert not vary_matches(newer, Request("GET", "http://a/", Headers.of({"Accept-Encoding": "gzip"})))
    assert vary_matches(a, Request("GET", "http://a/", Headers.of({})))


def test_a_lifetime_is_recomputed_for_another_config() -> None:
    stored = record(**{"Cache-Control": "max-age=60"})
    assert freshness_lifetime(stored, CacheConfig()).seconds == 60
    config = CacheConfig(rules=tuple(parse_rules([{"match": "http://a/*", "immutable": True}])))
    assert freshness_lifetime(stored, config).detail == "rule-immutable"
    assert freshness_lifetime(stored, CacheConfig()).seconds == 60


def test_served_headers_are_shared_within_an_age_and_remade_for_a_new_one() -> None:
    stored = record(**{"Cache-Control": "max-age=60"})
    assert served_headers(stored, now=10.2) is served_headers(stored, now=10.9)
    assert full_headers(stored, now=10.2) is full_headers(stored, now=10.9)
    later = served_headers(stored, now=12.0)
    assert later.get("age") == "12" and served_headers(stored, now=10.2).get("age") == "10"
    assert full_headers(stored, now=12.0).get("content-length") == "3"
    assert current_age(stored, 12.0) == 12.0


def test_latin1_encoding_is_made_once() -> None:
    headers = Headers.of({"X": "é", "Y": "€"})
    assert headers.latin1() is headers.latin1()
    assert headers.latin1() == ((b"X", b"\xe9"), (b"Y", b"?"))
