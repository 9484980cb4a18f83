"""The shortcuts a hit takes: each must give what the long way gives."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from fwdproxy.cache import CacheStatus, Fwd, render, render_bytes
from fwdproxy.http_model import Headers
from fwdproxy_addons import _flowinfo
from fwdproxy_addons._cachehttp import make_response, to_request, to_response
from fwdproxy_addons.access import Access
from fwdproxy_addons.cache import Cache
from tests.addons.test_cache_addon import cycle, flow, request

names = st.sampled_from([b"Cache-Status", b"cache-status", b"CACHE-STATUS", b"X-Other", b"Age"])
values = st.binary(max_size=12).filter(lambda v: b"\r" not in v and b"\n" not in v)


@given(st.lists(st.tuples(names, values), max_size=6))
def test_field_reads_like_mitmproxys_get(fields: list[tuple[bytes, bytes]]) -> None:
    headers = http.Headers(fields)
    assert _flowinfo.field(headers, b"cache-status") == headers.get("cache-status")


raw = st.binary(min_size=1, max_size=8).filter(lambda v: b"\r" not in v and b"\n" not in v)


@given(st.lists(st.tuples(raw, st.binary(max_size=12)), max_size=6))
def test_records_decode_fields_like_mitmproxys_items(fields: list[tuple[bytes, bytes]]) -> None:
    headers = http.Headers(fields)
    expected = tuple(headers.items(multi=True))
    req = tutils.treq()
    req.headers = headers
    assert to_request(req, "http://example.com/").headers.fields == expected
    resp = tutils.tresp()
    resp.headers = headers
    assert to_response(resp).headers.fields == expected


statuses = st.builds(
    CacheStatus,
    hit=st.booleans(),
    fwd=st.none() | st.sampled_from(Fwd),
    fwd_status=st.none() | st.integers(100, 599),
    ttl=st.none() | st.floats(allow_nan=False) | st.integers(-(10**20), 10**20),
    stored=st.booleans(),
    collapsed=st.booleans(),
    key=st.sampled_from(["", "GET http://a/"]),
    detail=st.sampled_from(["", "rule-immutable", "max stale"]),
)


@given(statuses)
def test_cache_status_bytes_are_the_rendering(status: CacheStatus) -> None:
    assert render_bytes(status) == render(status).encode()


def test_cache_status_bytes_are_shared_within_a_second_of_ttl() -> None:
    first = render_bytes(CacheStatus(hit=True, ttl=299.9))
    assert render_bytes(CacheStatus(hit=True, ttl=299.1)) is first
    assert render_bytes(CacheStatus(hit=True, ttl=298.9)) == b"fwdproxy; hit; ttl=298"


def test_stable_headers_encode_like_the_plain_path() -> None:
    h = Headers.of([("Content-Type", "text/plain"), ("X-Name", "caf\u00e9"), ("Content-Length", "2")])
    status = CacheStatus(hit=True)
    plain = make_response(200, "OK", h, b"ok", status, 1.0)
    stable = make_response(200, "OK", h, b"ok", status, 1.0, stable=True)
    again = make_response(200, "OK", h, b"ok", status, 1.0, stable=True)
    assert plain.headers.fields == stable.headers.fields == again.headers.fields
    stable.headers["X-Added"] = "1"  # a later addon changing one response leaves the next one alone
    assert "X-Added" not in make_response(200, "OK", h, b"ok", status, 1.0, stable=True).headers


@pytest.fixture
def ctx_cache(tmp_path: Path):
    cache = Cache()
    with taddons.context(cache) as tctx:
        tctx.configure(cache, fwd_cache_dir=str(tmp_path / "c"), fwd_memory_cache_size="1m")
        yield tctx, cache


def test_hits_in_one_second_share_headers_and_later_ones_age(ctx_cache, monkeypatch) -> None:
    _, cache = ctx_cache
    # The clock stands still (a quarter past a whole second) until the test moves it: on a loaded machine a
    # second may pass between storing and the hits, and Age would then rightly be 1.
    now = [float(int(time.time())) + 0.25]
    monkeypatch.setattr(time, "time", lambda: now[0])
    cycle(cache, flow(), b"body", cache_control="max-age=600")
    hits = [flow(), flow(), flow(method="HEAD")]
    for f in hits:
        request(cache, f)
        assert f.response is not None and f.response.headers["Age"] == "0"
        assert f.response.headers["Content-Length"] == "4"
    hits[0].response.headers["X-Mine"] = "1"
    assert "X-Mine" not in hits[1].response.headers
    assert hits[2].response.content == b""
    now[0] += 5
    later = flow()
    request(cache, later)
    assert later.response is not None and later.response.headers["Age"] == "5"
    assert later.response.content == b"body"


def access_flow(client: str, conn_id: str) -> http.HTTPFlow:
    f = tflow.tflow(req=tutils.treq(headers=http.Headers(proxy_authorization="Basic eDp5")))
    f.client_conn.peername = (client, 50000)
    f.client_conn.id = conn_id
    return f


def test_access_asks_once_per_connection_and_again_after_allow_changes() -> None:
    access = Access()
    with taddons.context(access) as tctx:
        tctx.configure(access, fwd_allow=["127.0.0.1/32"])
        ok = access_flow("127.0.0.1", "c1")
        access.requestheaders(ok)
        assert ok.response is None and "proxy-authorization" not in ok.request.headers
        assert access.allowed == {"c1": True}
        tctx.configure(access, fwd_allow=["10.0.0.0/8"])
        assert access.allowed == {}
        again = access_flow("127.0.0.1", "c1")
        access.requestheaders(again)
        assert again.response is not None and again.response.status_code == 403
        access.client_disconnected(again.client_conn)
        assert access.allowed == {}
