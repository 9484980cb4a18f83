"""Serving stale (RFC 5861, RFC 9111 §4.2.4), --serve-stale-on-error and --offline, end to end."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support import Origin, Reply, client


def test_stale_while_revalidate_answers_at_once_and_refreshes(start_proxy, origin: Origin) -> None:
    versions = iter([b"v1\n", b"v2\n", b"v3\n"])
    url = origin.route(
        "/swr",
        lambda r: Reply(200, {"Cache-Control": "max-age=3, stale-while-revalidate=60"}, next(versions)),
    )
    proxy = start_proxy()
    with client(proxy) as c:
        assert c.get(url).content == b"v1\n"
        time.sleep(3.2)  # stale now (Date has whole seconds, so max-age must leave room for rounding)
        stale = c.get(url)
        assert stale.content == b"v1\n"
        assert stale.headers[
            "Cache-Status"
        ] == "fwdproxy; fwd=stale; detail=stale-while-revalidate" or stale.headers["Cache-Status"].startswith(
            "fwdproxy; fwd=stale; ttl="
        )
        assert "stale-while-revalidate" in stale.headers["Cache-Status"]
        deadline = time.monotonic() + 10
        while origin.hits["/swr"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert origin.hits["/swr"] == 2  # one background revalidation
        time.sleep(0.2)
        fresh = c.get(url)
    assert fresh.content == b"v2\n"
    assert fresh.headers["Cache-Status"].startswith("fwdproxy; hit")


def test_stale_if_error_on_5xx(start_proxy, origin: Origin) -> None:
    replies = iter(
        [
            Reply(200, {"Cache-Control": "max-age=1, stale-if-error=60"}, b"good\n"),
            Reply(503, {"Content-Type": "text/plain"}, b"down\n"),
        ]
    )
    url = origin.route("/sie", lambda r: next(replies))
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url)
        time.sleep(1.2)
        r = c.get(url)
    assert r.status_code == 200 and r.content == b"good\n"
    assert r.headers["Cache-Status"].startswith("fwdproxy; fwd=stale; fwd-status=503")
    assert "detail=stale-if-error" in r.headers["Cache-Status"]


def test_serve_stale_on_error_when_origin_is_down(start_proxy, tmp_path: Path) -> None:
    origin = Origin()
    url = origin.route("/pkg", Reply(200, {"Cache-Control": "max-age=0"}, b"package\n"))
    miss_url = origin.url("/never-fetched")
    proxy = start_proxy("--serve-stale-on-error", "7d")
    with client(proxy) as c:
        c.get(url)
        origin.close()  # the registry goes down
        r = c.get(url)
        miss = c.get(miss_url)
    assert r.status_code == 200 and r.content == b"package\n"
    assert r.headers["Cache-Status"] == "fwdproxy; hit; fwd=stale; detail=serve-stale-on-error"
    assert miss.status_code == 502


def test_serve_stale_on_error_0_lets_the_error_show(start_proxy) -> None:
    origin = Origin()
    url = origin.route("/pkg", Reply(200, {"Cache-Control": "max-age=0"}, b"package\n"))
    proxy = start_proxy("--serve-stale-on-error", "0")
    with client(proxy) as c:
        c.get(url)
        origin.close()
        r = c.get(url)
    assert r.status_code == 502
    assert (
        r.text
        == f"fwdproxy: 127.0.0.1:{origin.port} refused the connection (nothing listens there, or a firewall rejects it)\n"
    )


def test_offline_serves_stored_and_504s_the_rest(start_proxy, origin: Origin, tmp_path: Path) -> None:
    url = origin.route("/o", Reply(200, {"Cache-Control": "max-age=0"}, b"stored\n"))
    proxy = start_proxy(cache_dir=tmp_path / "c")
    with client(proxy) as c:
        c.get(url)
    proxy.stop()
    offline = start_proxy("--offline", cache_dir=tmp_path / "c")
    with client(offline) as c:
        r = c.get(url)
        miss = c.get(origin.url("/other"))
        post = c.post(url, content=b"x")
    assert r.status_code == 200 and r.content == b"stored\n"
    assert "detail=offline" in r.headers["Cache-Status"]
    assert miss.status_code == 504 and post.status_code == 504
    assert origin.hits["/o"] == 1 and origin.hits["/other"] == 0
