"""Anonymity and the cache (issue 5 point 5): the cache sees rewritten requests and never replays a backend name."""

from __future__ import annotations

from pathlib import Path

from tests.support import Origin, Recorded, Reply, client


def cached(extra: dict[str, str] | None = None) -> Reply:
    return Reply(
        200, {"Content-Type": "text/plain", "Cache-Control": "max-age=60"} | (extra or {}), b"shared\n"
    )


def everything_sent(origin: Origin) -> str:
    return repr([r.header_list for r in origin.requests])


def test_two_clients_with_different_xff_share_one_entry(start_proxy, origin: Origin) -> None:
    origin.route("/shared", cached())
    proxy = start_proxy()
    responses = []
    for address in ("198.51.100.1", "198.51.100.2"):
        with client(proxy) as c:  # a client of its own: a new connection each time
            responses.append(c.get(origin.url("/shared"), headers={"X-Forwarded-For": address}))
    assert [r.text for r in responses] == ["shared\n", "shared\n"]
    assert origin.hits["/shared"] == 1
    assert responses[1].headers["Cache-Status"].startswith("fwdproxy; hit")
    sent = everything_sent(origin)
    assert "198.51.100.1" not in sent and "198.51.100.2" not in sent
    assert "x-forwarded-for" not in sent.lower()


def test_vary_sees_the_rewritten_headers(start_proxy, origin: Origin) -> None:
    """An origin that varies on identifying headers cannot split the entry: strict makes them all alike."""
    origin.route("/varies", cached({"Vary": "X-Forwarded-For, User-Agent, Accept-Language"}))
    proxy = start_proxy("--anonymize", "strict")
    clients = [("198.51.100.1", "curl/8.5.0", "de-CH"), ("198.51.100.2", "Firefox/128", "fr-CA")]
    for address, agent, language in clients:
        with client(proxy) as c:
            headers = {"X-Forwarded-For": address, "User-Agent": agent, "Accept-Language": language}
            assert c.get(origin.url("/varies"), headers=headers).status_code == 200
    assert origin.hits["/varies"] == 1
    sent = everything_sent(origin)
    assert not any(value in sent for client in clients for value in client)


def test_hits_never_carry_backend_names(start_proxy, origin: Origin, tmp_path: Path) -> None:
    """Strict strips backend names from cache hits too, even from entries stored under a laxer level."""

    def backend(_: Recorded) -> Reply:
        return cached({"X-Backend-Server": "app-7.internal", "X-Served-By": "cache-fra-1"})

    origin.route("/backend", backend)
    cache_dir = tmp_path / "shared-cache"
    standard = start_proxy(cache_dir=cache_dir)
    with client(standard) as c:
        assert c.get(origin.url("/backend")).headers["X-Backend-Server"] == "app-7.internal"
    standard.stop()
    strict = start_proxy("--anonymize", "strict", cache_dir=cache_dir)
    with client(strict) as c:
        for _ in range(2):
            r = c.get(origin.url("/backend"))
            assert r.headers["Cache-Status"].startswith("fwdproxy; hit")
            assert not {"x-backend-server", "x-served-by"} & set(r.headers)
            assert r.text == "shared\n"
    assert origin.hits["/backend"] == 1


def test_revalidated_entries_never_carry_backend_names(start_proxy, origin: Origin, tmp_path: Path) -> None:
    """A stale entry stored under standard, served under strict after the origin's 304, is stripped too."""

    def backend(r: Recorded) -> Reply:
        headers = {"ETag": '"v1"', "Cache-Control": "max-age=0"}
        if r.headers.get("If-None-Match") == '"v1"':
            return Reply(304, headers)
        return Reply(200, headers | {"X-Backend-Server": "app-7.internal"}, b"body\n")

    origin.route("/revalidated", backend)
    cache_dir = tmp_path / "shared-cache"
    standard = start_proxy(cache_dir=cache_dir)
    with client(standard) as c:
        assert c.get(origin.url("/revalidated")).headers["X-Backend-Server"] == "app-7.internal"
    standard.stop()
    strict = start_proxy("--anonymize", "strict", cache_dir=cache_dir)
    with client(strict) as c:
        r = c.get(origin.url("/revalidated"))
    assert r.status_code == 200 and r.text == "body\n"
    assert "fwd-status=304" in r.headers["Cache-Status"]  # answered from the stored entry
    assert "x-backend-server" not in r.headers
