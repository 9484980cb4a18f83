"""RFC 9211 Cache-Status rendering."""

from __future__ import annotations

import pytest

from fwdproxy.cache.status import CacheStatus, Fwd, render, sf_item, sf_string


@pytest.mark.parametrize(
    "status, expected",
    [
        pytest.param(CacheStatus(hit=True, ttl=297.9), "fwdproxy; hit; ttl=297", id="2.1 hit with ttl"),
        pytest.param(
            CacheStatus(fwd=Fwd.URI_MISS, stored=True), "fwdproxy; fwd=uri-miss; stored", id="2.2 2.5"
        ),
        pytest.param(CacheStatus(fwd=Fwd.VARY_MISS), "fwdproxy; fwd=vary-miss", id="2.2 vary-miss"),
        pytest.param(CacheStatus(fwd=Fwd.MISS), "fwdproxy; fwd=miss", id="2.2 miss"),
        pytest.param(CacheStatus(fwd=Fwd.REQUEST), "fwdproxy; fwd=request", id="2.2 request"),
        pytest.param(CacheStatus(fwd=Fwd.BYPASS), "fwdproxy; fwd=bypass", id="2.2 bypass"),
        pytest.param(CacheStatus(fwd=Fwd.METHOD), "fwdproxy; fwd=method", id="2.2 method"),
        pytest.param(
            CacheStatus(fwd=Fwd.STALE, fwd_status=304, stored=True, ttl=60),
            "fwdproxy; fwd=stale; fwd-status=304; stored; ttl=60",
            id="2.3 revalidated",
        ),
        pytest.param(CacheStatus(hit=True, collapsed=True), "fwdproxy; hit; collapsed", id="2.6 collapsed"),
        pytest.param(
            CacheStatus(hit=True, ttl=-0.5), "fwdproxy; hit; ttl=-1", id="2.4 negative ttl rounds down"
        ),
        pytest.param(
            CacheStatus(hit=True, ttl=float("inf")), "fwdproxy; hit", id="2.4 infinite ttl left out"
        ),
        pytest.param(
            CacheStatus(hit=True, ttl=1e30), "fwdproxy; hit; ttl=999999999999999", id="8941 integer bound"
        ),
        pytest.param(
            CacheStatus(hit=True, ttl=31536000, detail="rule-immutable"),
            "fwdproxy; hit; ttl=31536000; detail=rule-immutable",
            id="2.8 detail token",
        ),
        pytest.param(
            CacheStatus(fwd=Fwd.STALE, fwd_status=503, detail="stale-if-error"),
            "fwdproxy; fwd=stale; fwd-status=503; detail=stale-if-error",
            id="2.8 stale-if-error",
        ),
        pytest.param(
            CacheStatus(fwd=Fwd.MISS, detail="no store"),
            'fwdproxy; fwd=miss; detail="no store"',
            id="2.8 str",
        ),
        pytest.param(
            CacheStatus(hit=True, key="GET http://a/"), 'fwdproxy; hit; key="GET http://a/"', id="2.7 key"
        ),
        pytest.param(CacheStatus(), "fwdproxy", id="2 nothing to say"),
    ],
)
def test_render(status: CacheStatus, expected: str) -> None:
    assert render(status) == expected


def test_render_other_cache_name() -> None:
    assert render(CacheStatus(hit=True), "edge cache") == '"edge cache"; hit'


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("rule-min-ttl", "rule-min-ttl", id="8941 3.3.4 token"),
        pytest.param("a:b/c", "a:b/c", id="8941 3.3.4 token with : and /"),
        pytest.param("*x", "*x", id="8941 3.3.4 token may start with *"),
        pytest.param("1abc", '"1abc"', id="8941 3.3.4 a token starts with a letter"),
        pytest.param('say "hi"\\', '"say \\"hi\\"\\\\"', id="8941 3.3.3 escapes"),
        pytest.param("naïve\n", '"na?ve?"', id="8941 3.3.3 non-ASCII and controls replaced"),
        pytest.param("", '""', id="8941 3.3.3 empty string"),
    ],
)
def test_sf_item(value: str, expected: str) -> None:
    assert sf_item(value) == expected


def test_sf_string_always_quotes() -> None:
    assert sf_string("token") == '"token"'
