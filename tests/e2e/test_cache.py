"""HTTP caching, end to end through the real proxy: RFC 9111 as a shared cache, with Cache-Status."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support import Origin, Recorded, Reply, client


def cached(body: bytes = b"cached body\n", cc: str = "max-age=60", **headers: str) -> Reply:
    return Reply(200, {"Cache-Control": cc, "Content-Type": "text/plain", **headers}, body)


def test_max_age_hit_has_age_and_cache_status(start_proxy, origin: Origin) -> None:
    url = origin.route("/fresh", cached())
    proxy = start_proxy()
    with client(proxy) as c:
        first = c.get(url)
        second = c.get(url)
    assert origin.hits["/fresh"] == 1
    assert first.headers["Cache-Status"] == "fwdproxy; fwd=uri-miss; fwd-status=200; stored"
    assert second.text == "cached body\n"
    assert second.headers["Cache-Status"].startswith("fwdproxy; hit; ttl=")
    assert int(second.headers["Age"]) >= 0


def test_https_through_intercepted_tunnel_is_cached(
    start_proxy, tls_origin: Origin, proxy_ca_file: Path
) -> None:
    url = tls_origin.route("/tls", cached(b"secret but cacheable\n"))
    url = url.replace("127.0.0.1", "localhost")
    proxy = start_proxy("--connect-port", str(tls_origin.port))
    with client(proxy, verify=proxy_ca_file) as c:
        assert c.get(url).text == "secret but cacheable\n"
        second = c.get(url)
    assert tls_origin.hits["/tls"] == 1
    assert second.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert "Age" in second.headers


def test_entries_survive_restart(start_proxy, origin: Origin, tmp_path: Path) -> None:
    url = origin.route("/persist", cached(b"on disk\n"))
    proxy = start_proxy(cache_dir=tmp_path / "c")
    with client(proxy) as c:
        c.get(url)
    proxy.stop()
    proxy = start_proxy(cache_dir=tmp_path / "c")
    with client(proxy) as c:
        r = c.get(url)
    assert r.text == "on disk\n"
    assert r.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert origin.hits["/persist"] == 1


def test_expired_etag_revalidated_with_304(start_proxy, origin: Origin) -> None:
    def etag(req: Recorded) -> Reply:
        if req.headers.get("If-None-Match") == '"v1"':
            return Reply(304, {"ETag": '"v1"', "Cache-Control": "max-age=0"})
        return Reply(
            200, {"ETag": '"v1"', "Cache-Control": "max-age=0", "Content-Length": "13"}, b"full body v1\n"
        )

    url = origin.route("/etag", etag)
    proxy = start_proxy()
    with client(proxy) as c:
        assert c.get(url).text == "full body v1\n"
        second = c.get(url)
    assert second.status_code == 200
    assert second.text == "full body v1\n"
    assert second.headers["Content-Length"] == "13"
    assert second.headers["Cache-Status"] == "fwdproxy; fwd=stale; fwd-status=304"
    conditional = [r for r in origin.requests if r.path == "/etag"][1]
    assert conditional.headers.get("If-None-Match") == '"v1"'


def test_client_conditional_gets_304_with_etag(start_proxy, origin: Origin) -> None:
    url = origin.route("/cond", cached(b"x\n", ETag='"abc"'))
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url)
        r = c.get(url, headers={"If-None-Match": '"abc"'})
    assert r.status_code == 304
    assert r.headers["ETag"] == '"abc"'
    assert origin.hits["/cond"] == 1


def test_uncacheable_responses_never_served_from_cache(start_proxy, origin: Origin) -> None:
    urls = {
        "/no-store": origin.route("/no-store", cached(cc="no-store, max-age=60")),
        "/private": origin.route("/private", cached(cc="private, max-age=60")),
        "/auth": origin.route("/auth", cached(cc="max-age=60")),
    }
    proxy = start_proxy()
    with client(proxy) as c:
        for path, url in urls.items():
            headers = {"Authorization": "Bearer t"} if path == "/auth" else {}
            for _ in range(2):
                r = c.get(url, headers=headers)
                assert "hit" not in r.headers["Cache-Status"].split("; "), path
            assert origin.hits[path] == 2, path


def test_authorization_with_public_is_shared(start_proxy, origin: Origin) -> None:
    url = origin.route("/auth-public", cached(cc="public, max-age=60"))
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url, headers={"Authorization": "Bearer t"})
        assert (
            c.get(url, headers={"Authorization": "Bearer t"})
            .headers["Cache-Status"]
            .startswith("fwdproxy; hit")
        )


def test_vary_keeps_variants_apart(start_proxy, origin: Origin) -> None:
    def varied(req: Recorded) -> Reply:
        enc = req.headers.get("Accept-Encoding", "identity")
        return Reply(200, {"Cache-Control": "max-age=60", "Vary": "Accept-Encoding"}, f"enc={enc}\n".encode())

    url = origin.route("/vary", varied)
    proxy = start_proxy()
    with httpx.Client(proxy=proxy.url, trust_env=False) as c:
        a1 = c.get(url, headers={"Accept-Encoding": "gzip"})
        b1 = c.get(url, headers={"Accept-Encoding": "br"})
        a2 = c.get(url, headers={"Accept-Encoding": "gzip"})
        b2 = c.get(url, headers={"Accept-Encoding": "br"})
    assert (a1.content, b1.content) == (b"enc=gzip\n", b"enc=br\n")
    assert (a2.content, b2.content) == (b"enc=gzip\n", b"enc=br\n")
    assert b1.headers["Cache-Status"].startswith("fwdproxy; fwd=vary-miss")
    assert a2.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert origin.hits["/vary"] == 2


def test_post_invalidates_stored_get(start_proxy, origin: Origin) -> None:
    url = origin.route("/thing", cached(b"v1\n"))
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url)
        assert c.get(url).headers["Cache-Status"].startswith("fwdproxy; hit")
        post = c.post(url, content=b"update")
        assert post.headers["Cache-Status"] == "fwdproxy; fwd=method; fwd-status=200"
        after = c.get(url)
    assert after.headers["Cache-Status"].startswith("fwdproxy; fwd=uri-miss")
    assert origin.hits["/thing"] == 3


def test_head_served_from_stored_get(start_proxy, origin: Origin) -> None:
    url = origin.route("/head", cached(b"0123456789"))
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url)
        r = c.head(url)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Content-Length"] == "10"
    assert r.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert origin.hits["/head"] == 1


def test_only_if_cached_miss_is_504(start_proxy, origin: Origin) -> None:
    url = origin.route("/oic", cached())
    proxy = start_proxy()
    with client(proxy) as c:
        r = c.get(url, headers={"Cache-Control": "only-if-cached"})
    assert r.status_code == 504
    assert origin.hits["/oic"] == 0


def test_cache_rule_immutable_overrides_max_age_0(start_proxy, origin: Origin, tmp_path: Path) -> None:
    cfg = tmp_path / "fwdproxy.toml"
    cfg.write_text('[[cache.rule]]\nmatch = "http://127.0.0.1:*/packages/*"\nimmutable = true\n')
    url = origin.route("/packages/pkg-1.0.tar.gz", cached(b"artifact\n", cc="max-age=0"))
    other = origin.route("/simple/pkg/", cached(b"index\n", cc="max-age=0"))
    proxy = start_proxy("--config", str(cfg))
    with client(proxy) as c:
        c.get(url)
        second = c.get(url)
        c.get(other)
        other2 = c.get(other)
    assert origin.hits["/packages/pkg-1.0.tar.gz"] == 1
    assert second.headers["Cache-Status"].startswith("fwdproxy; hit;")
    assert "detail=rule-immutable" in second.headers["Cache-Status"]
    assert "hit" not in other2.headers["Cache-Status"].split("; ")


def test_max_object_size_passes_through_unstored(start_proxy, origin: Origin) -> None:
    url = origin.route("/big", cached(b"x" * 5000))
    proxy = start_proxy("--max-object-size", "4KiB")
    with client(proxy) as c:
        assert len(c.get(url).content) == 5000
        r = c.get(url)
    assert len(r.content) == 5000
    assert origin.hits["/big"] == 2
    assert "stored" not in r.headers["Cache-Status"]


def test_streamed_body_is_stored_and_served(start_proxy, origin: Origin) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: above the 1 MiB stream threshold
    url = origin.route("/stream", cached(body))
    proxy = start_proxy()
    with client(proxy) as c:
        assert c.get(url).content == body
        r = c.get(url)
    assert r.content == body
    assert r.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert origin.hits["/stream"] == 1


def test_lru_eviction_within_disk_limit(start_proxy, origin: Origin, tmp_path: Path) -> None:
    for i in range(12):
        origin.route(f"/lru{i}", cached(bytes([i]) * 100_000))
    proxy = start_proxy(
        "--disk-cache-size", "600KiB", "--memory-cache-size", "300KiB", cache_dir=tmp_path / "lru"
    )
    with client(proxy) as c:
        for i in range(12):
            c.get(origin.url(f"/lru{i}"))
            time.sleep(0.01)
        last = c.get(origin.url("/lru11"))
        first = c.get(origin.url("/lru0"))
    assert last.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert first.headers["Cache-Status"].startswith("fwdproxy; fwd=uri-miss")
    proxy.stop()
    from fwdproxy.store import TieredStore

    s = TieredStore.open(tmp_path / "lru", disk_size=600 * 1024)
    stats = s.stats()
    s.close()
    assert stats.disk.bytes <= 600 * 1024 * 1.1


def test_set_cookie_stored_only_under_explicit_freshness(start_proxy, origin: Origin) -> None:
    explicit = origin.route("/cookie-explicit", cached(b"c\n", **{"Set-Cookie": "a=1"}))
    heuristic = origin.route(
        "/cookie-heuristic",
        Reply(200, {"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT", "Set-Cookie": "session=alice"}, b"h\n"),
    )
    plain = origin.route("/heuristic", Reply(200, {"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}, b"p\n"))
    proxy = start_proxy()
    with client(proxy) as c:
        for url in (explicit, heuristic, plain):
            c.get(url)
        hit = c.get(explicit)
        other_user = c.get(heuristic)
        heur = c.get(plain)
    assert hit.headers["Cache-Status"].startswith("fwdproxy; hit") and hit.headers["Set-Cookie"] == "a=1"
    assert "hit" not in other_user.headers["Cache-Status"].split("; ")  # never hand alice's session to others
    assert heur.headers["Cache-Status"].startswith("fwdproxy; hit")  # 10% of the Last-Modified age
    assert origin.hits["/cookie-heuristic"] == 2


def test_connection_named_headers_not_stored(start_proxy, origin: Origin) -> None:
    url = origin.route(
        "/conn", cached(b"x\n", Connection="X-Secret", **{"X-Secret": "per-hop", "X-Kept": "yes"})
    )
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url)
        hit = c.get(url)
    assert hit.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert "X-Secret" not in hit.headers and hit.headers["X-Kept"] == "yes"
