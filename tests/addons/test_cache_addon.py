"""The cache addon with mitmproxy's test helpers: hooks in, decisions out, no sockets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils

from fwdproxy_addons._notes import notes
from fwdproxy_addons.cache import Cache
from tests.support import REPO


def flow(path: str = "/x", method: str = "GET", **headers: str) -> http.HTTPFlow:
    return tflow.tflow(
        req=tutils.treq(
            path=path.encode(), method=method.encode(), headers=http.Headers(**headers), content=b""
        )
    )


def respond(f: http.HTTPFlow, body: bytes = b"body", **headers: str) -> None:
    f.response = tutils.tresp(content=body, headers=http.Headers(content_length=str(len(body)), **headers))
    f.response.timestamp_start = f.response.timestamp_end = time.time()


def request(cache: Cache, f: http.HTTPFlow) -> None:
    """Run the request hook (sync for a hit, a coroutine when it waits) to completion on the test master's loop,
    as mitmproxy's addon manager does."""
    from mitmproxy import ctx

    async def hook() -> None:
        waiting = cache.request(f)
        if waiting is not None:
            await waiting

    ctx.master.event_loop.run_until_complete(hook())


def cycle(cache: Cache, f: http.HTTPFlow, body: bytes = b"body", **headers: str) -> None:
    request(cache, f)
    if f.response is None:
        respond(f, body, **headers)
        cache.responseheaders(f)
        cache.response(f)


@pytest.fixture
def ctx_cache(tmp_path: Path):
    cache = Cache()
    with taddons.context(cache) as tctx:
        tctx.configure(cache, fwd_cache_dir=str(tmp_path / "c"))
        yield tctx, cache


def test_store_then_hit(ctx_cache) -> None:
    _, cache = ctx_cache
    started = time.time()
    first = flow()
    cycle(cache, first, cache_control="max-age=60")
    assert first.response.headers["Cache-Status"] == "fwdproxy; fwd=uri-miss; fwd-status=200; stored"
    second = flow()
    request(cache, second)
    assert second.response is not None and notes(second).cache.served
    assert second.response.content == b"body"
    assert second.response.headers["Cache-Status"].startswith("fwdproxy; hit; ttl=")
    # Age (whole seconds, RFC 9111 §4.2.3) counts the miss's own request-to-response time too: 0 unless the
    # loaded machine took a second or more for this test, and never more than the time it took.
    age = int(second.response.headers["Age"])
    assert age >= 0
    assert age <= time.time() - started


def test_no_store_not_stored(ctx_cache) -> None:
    _, cache = ctx_cache
    cycle(cache, flow(), cache_control="no-store")
    again = flow()
    request(cache, again)
    assert again.response is None


def test_stale_entry_gets_validators(ctx_cache) -> None:
    _, cache = ctx_cache
    cycle(cache, flow(), cache_control="max-age=0", etag='"v1"')
    f = flow()
    request(cache, f)
    assert f.response is None
    assert f.request.headers["If-None-Match"] == '"v1"'
    f.response = tutils.tresp(status_code=304, content=b"", headers=http.Headers(etag='"v1"'))
    cache.responseheaders(f)
    cache.response(f)
    assert f.response.status_code == 200 and f.response.content == b"body"
    assert f.response.headers["Cache-Status"] == "fwdproxy; fwd=stale; fwd-status=304"


def test_truncated_stream_is_not_stored(ctx_cache) -> None:
    tctx, cache = ctx_cache
    tctx.configure(cache, fwd_stream_threshold="4")
    f = flow()
    request(cache, f)
    respond(f, b"0123456789", cache_control="max-age=60")
    cache.responseheaders(f)
    assert callable(f.response.stream)
    f.response.stream(b"01234")  # the origin dies after half the body: mitmproxy calls error, not response
    f.error = tflow.terr()
    cache.error(f)
    again = flow()
    request(cache, again)
    assert again.response is None


def test_bad_options_rejected(ctx_cache) -> None:
    tctx, cache = ctx_cache
    with pytest.raises(exceptions.OptionsError, match="preset 'nope' is unknown"):
        tctx.configure(cache, fwd_preset=["nope"])
    with pytest.raises(exceptions.OptionsError, match="is not a size"):
        tctx.configure(cache, fwd_memory_cache_size="lots")


@pytest.mark.parametrize(
    "value, disconnected, on_5xx",
    [
        pytest.param("1d", 86400, 0, id="default: unreachable origins only"),
        pytest.param("86400s", 86400, 86400, id="set explicitly (fwdproxy run passes seconds): 5xx too"),
        pytest.param("7d", 7 * 86400, 7 * 86400, id="registry outage mode"),
        pytest.param("0", 0, 0, id="0 turns it off"),
    ],
)
def test_serve_stale_on_error_option(ctx_cache, value: str, disconnected: float, on_5xx: float) -> None:
    tctx, cache = ctx_cache
    tctx.configure(cache, fwd_serve_stale_on_error=value)
    assert (cache.config.stale_if_disconnected, cache.config.serve_stale_on_error) == (disconnected, on_5xx)


def test_rule_file_errors_name_the_key(ctx_cache, tmp_path: Path) -> None:
    tctx, cache = ctx_cache
    cfg = tmp_path / "f.toml"
    cfg.write_text('[[cache.rule]]\nmatch = "x"\nmax_ttl = "soon"\n')
    with pytest.raises(exceptions.OptionsError, match=r"max_ttl"):
        tctx.configure(cache, fwd_config=str(cfg))


def test_script_loads_alone(tmp_path: Path) -> None:
    with taddons.context() as tctx:
        module = tctx.script(str(REPO / "addons" / "cache.py"))
        assert type(module.addons[0]).__name__ == "Cache"  # the script is its own module, not addons.cache


def test_our_cache_status_is_never_stored() -> None:
    from fwdproxy.cache.headers import without_our_status
    from fwdproxy.http_model import Headers

    h = Headers.of([("Cache-Status", "upstream-cdn; hit, fwdproxy; fwd=uri-miss; stored"), ("ETag", '"x"')])
    assert without_our_status(h).get_all("cache-status") == ["upstream-cdn; hit"]
    assert "cache-status" not in without_our_status(Headers.of([("Cache-Status", "fwdproxy; fwd=miss")]))
