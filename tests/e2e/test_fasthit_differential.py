"""One policy, two paths (issue 21): a corpus of requests sent to a proxy with the fast hit layer and to one
with --no-fast-hits must get the same status, headers (Date and Age values aside), bodies, access log lines
and metrics, over plain HTTP and inside an intercepted tunnel."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.fastwire import Answer, Wire, get, plain, stats, tunnel
from tests.support import Origin, Proxy, Reply

BODY = bytes(range(48, 123)) * 4  # 300 bytes: ranges inside and past it
CACHED = {"Cache-Control": "max-age=600", "Content-Type": "text/plain"}
VALIDATED = {**CACHED, "ETag": '"v1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
ROUTES: dict[str, Reply] = {
    "/plain": Reply(200, VALIDATED, BODY),
    "/plain?q=1": Reply(200, VALIDATED, BODY),
    "/vary": Reply(200, {**CACHED, "Vary": "Accept-Encoding"}, b"varied\n"),
    "/neg": Reply(404, CACHED, b"not here\n"),
    "/backend": Reply(200, {**CACHED, "X-Powered-By": "php/8", "Via": "1.1 backend-7"}, b"backend\n"),
    "/nostore": Reply(200, {"Cache-Control": "no-store"}, b"fresh every time\n"),
    "/empty": Reply(200, CACHED, b""),
}

Request = Callable[[str], bytes]
"""Builds a request from the URL of the route (absolute-form; the tunnel variant rewrites the target)."""
CORPUS: list[tuple[str, str, Request]] = [
    ("hit", "/plain", lambda u: get(u)),
    ("head", "/plain", lambda u: get(u, method="HEAD")),
    ("lower-case names", "/plain", lambda u: get(u, "accept: */*", "user-agent: t/1")),
    ("keep-alive field", "/plain", lambda u: get(u, "Connection: keep-alive")),
    ("inm match", "/plain", lambda u: get(u, 'If-None-Match: "v1"')),
    ("inm list", "/plain", lambda u: get(u, 'If-None-Match: "v0", "v1"')),
    ("inm other", "/plain", lambda u: get(u, 'If-None-Match: "v2"')),
    ("ims later", "/plain", lambda u: get(u, "If-Modified-Since: Tue, 02 Jan 2024 00:00:00 GMT")),
    ("ims earlier", "/plain", lambda u: get(u, "If-Modified-Since: Sun, 31 Dec 2023 00:00:00 GMT")),
    ("head inm", "/plain", lambda u: get(u, 'If-None-Match: "v1"', method="HEAD")),
    ("range", "/plain", lambda u: get(u, "Range: bytes=0-9")),
    ("range suffix", "/plain", lambda u: get(u, "Range: bytes=-7")),
    ("range past end", "/plain", lambda u: get(u, "Range: bytes=290-400")),
    ("range unsatisfiable", "/plain", lambda u: get(u, "Range: bytes=500-600")),
    ("range invalid", "/plain", lambda u: get(u, "Range: bytes=9-2")),
    ("multi range", "/plain", lambda u: get(u, "Range: bytes=0-1,10-12")),
    ("if-range match", "/plain", lambda u: get(u, "Range: bytes=3-5", 'If-Range: "v1"')),
    ("if-range other", "/plain", lambda u: get(u, "Range: bytes=3-5", 'If-Range: "v9"')),
    ("head range", "/plain", lambda u: get(u, "Range: bytes=0-9", method="HEAD")),
    ("max-stale", "/plain", lambda u: get(u, "Cache-Control: max-stale=60")),
    ("min-fresh too much", "/plain", lambda u: get(u, "Cache-Control: min-fresh=100000")),
    ("max-age=0", "/plain", lambda u: get(u, "Cache-Control: max-age=0")),
    ("no-cache", "/plain", lambda u: get(u, "Cache-Control: no-cache")),
    ("pragma", "/plain", lambda u: get(u, "Pragma: no-cache")),
    ("proxy-authorization", "/plain", lambda u: get(u, "Proxy-Authorization: Basic eDp5")),
    ("x-forwarded-for", "/plain", lambda u: get(u, "X-Forwarded-For: 10.9.8.7")),
    ("unkeyed header", "/plain", lambda u: get(u, "X-Forwarded-Host: evil.test")),
    ("query", "/plain?q=1", lambda u: get(u)),
    ("vary gzip", "/vary", lambda u: get(u, "Accept-Encoding: gzip")),
    ("vary identity", "/vary", lambda u: get(u, "Accept-Encoding: identity")),
    ("vary none", "/vary", lambda u: get(u)),
    ("negative", "/neg", lambda u: get(u)),
    ("backend names", "/backend", lambda u: get(u)),
    ("no-store", "/nostore", lambda u: get(u)),
    ("empty body", "/empty", lambda u: get(u)),
    ("only-if-cached miss", "/nowhere", lambda u: get(u, "Cache-Control: only-if-cached")),
]

FIRST_HANDOVER = next(i for i, (name, _, _) in enumerate(CORPUS) if name == "min-fresh too much")


def _routes(origin: Origin) -> str:
    for path, reply in ROUTES.items():
        origin.route(path, reply)
    return origin.url("/").rstrip("/")


def _same(fast: Answer, full: Answer, name: str) -> None:
    a, b = fast.comparable(), full.comparable()
    assert a[:4] == b[:4], name
    if a[4] is not None or b[4] is not None:
        assert a[4] is not None and b[4] is not None, name
        assert abs(a[4] - b[4]) <= 1, name


def _log_lines(path: Path) -> list[str]:
    """Access log lines without their time and duration (the two fields that differ between runs), and
    without the status page's (whose size differs: it counts fast hits) and the tunnels'."""
    lines = [line.split(None, 2)[2] for line in path.read_text().splitlines()]
    return [line for line in lines if "fwdproxy.local" not in line and " CONNECT " not in line]


def _counters(proxy: Proxy) -> dict[str, object]:
    s = stats(proxy)
    keep = ("requests", "hits", "served_from_cache", "bytes", "top_hosts")
    return {k: s[k] for k in keep}


def _run(
    pair: tuple[Proxy, Proxy], connect: Callable[[Proxy], Wire], base: str, target: Callable[[bytes], bytes]
) -> tuple[int, int]:
    """Every corpus request twice (the first pass stores what the second may hit), each on its own connection
    to both proxies, then all pipelined on one; how many answers of the fast proxy were hits, alone and
    pipelined (a pipelined hit after a request the fast layer hands over is the full path's)."""
    hits = 0
    for _ in range(2):
        for name, path, build in CORPUS:
            request = target(build(base + path))
            answers = []
            for proxy in pair:
                with connect(proxy) as w:
                    answers.append(w.exchange(request))
            _same(answers[0], answers[1], name)
            hits += "; hit" in (answers[0].get("cache-status") or "")
    # And all of it again, pipelined on one connection per proxy.
    batch = b"".join(target(build(base + path)) for _, path, build in CORPUS)
    heads = [build(base + path).startswith(b"HEAD ") for _, path, build in CORPUS]
    replies: list[list[Answer]] = []
    for proxy in pair:
        with connect(proxy) as w:
            w.send(batch)
            replies.append([w.read(head=h) for h in heads])
    pipelined = 0
    for (name, _, _), fast, full in zip(CORPUS, replies[0], replies[1], strict=True):
        _same(fast, full, f"pipelined {name}")
        pipelined += "; hit" in (fast.get("cache-status") or "")
    return hits, pipelined


@pytest.fixture
def pair(start_proxy, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Proxy, Proxy]:
    extra: tuple[str, ...] = getattr(request, "param", ())
    fast = start_proxy(*extra, "--access-log", str(tmp_path / "fast.log"), cache_dir=tmp_path / "c1")
    full = start_proxy(
        *extra, "--no-fast-hits", "--access-log", str(tmp_path / "full.log"), cache_dir=tmp_path / "c2"
    )
    return fast, full


@pytest.mark.parametrize("pair", [(), ("--anonymize", "strict")], indirect=True, ids=["standard", "strict"])
def test_plain_http_corpus_answers_alike(pair: tuple[Proxy, Proxy], origin: Origin, tmp_path: Path) -> None:
    base = _routes(origin)
    hits, pipelined = _run(pair, plain, base, lambda r: r)
    fast, full = pair
    assert hits >= 30  # the corpus is mostly hits: the comparison is about the fast path
    # Every hit on a connection of its own came from the fast layer, and the pipelined ones up to the first
    # request it handed over ("min-fresh too much" is the first that must ask the origin).
    assert stats(fast)["fast_hits"] == hits + FIRST_HANDOVER
    assert stats(full)["fast_hits"] == 0
    assert _counters(fast) == _counters(full)
    fast.stop(), full.stop()  # flushes the access logs
    assert _log_lines(tmp_path / "fast.log") == _log_lines(tmp_path / "full.log")


def test_intercepted_tunnel_corpus_answers_alike(
    tls_origin: Origin, proxy_ca_file: Path, tmp_path: Path, start_proxy
) -> None:
    base = _routes(tls_origin).replace("127.0.0.1", "localhost")
    authority = base.split("/")[2]
    pair = (
        start_proxy(
            "--connect-port",
            str(tls_origin.port),
            "--access-log",
            str(tmp_path / "tf.log"),
            cache_dir=tmp_path / "c4",
        ),
        start_proxy(
            "--connect-port",
            str(tls_origin.port),
            "--no-fast-hits",
            "--access-log",
            str(tmp_path / "tn.log"),
            cache_dir=tmp_path / "c3",
        ),
    )

    def origin_form(request: bytes) -> bytes:
        return re.sub(rb"^(\w+) https://[^/]+", rb"\1 ", request)

    hits, _ = _run(pair, lambda p: tunnel(p, authority, proxy_ca_file), base, origin_form)
    fast, full = pair
    assert hits >= 30
    assert stats(fast)["fast_hits"] == hits + FIRST_HANDOVER
    assert _counters(fast) == _counters(full)
    fast.stop(), full.stop()
    assert _log_lines(tmp_path / "tf.log") == _log_lines(tmp_path / "tn.log")


def test_stale_while_revalidate_answered_alike(start_proxy, origin: Origin, tmp_path: Path) -> None:
    """RFC 5861 §3 on both paths: the first stale hit starts the key's one background revalidation (the fast
    layer leaves that request to the full path, which starts it), and the hits while it is in flight are the
    fast layer's own, with the full path's status, headers and body; each proxy revalidates once."""
    slow, release = threading.Event(), threading.Event()
    swr = {
        "Cache-Control": "max-age=1, stale-while-revalidate=60",
        "Content-Type": "text/plain",
        "ETag": '"s"',
    }

    def handler(_: object) -> Reply:
        if slow.is_set():
            release.wait(20)  # the revalidation stays in flight while the hits below arrive
        return Reply(200, swr, b"stale while revalidating\n")

    origin.route("/swr", handler)
    url = origin.url("/swr")
    fast = start_proxy(cache_dir=tmp_path / "c1")
    full = start_proxy("--no-fast-hits", cache_dir=tmp_path / "c2")
    try:
        for proxy in (fast, full):
            with plain(proxy) as w:
                assert w.exchange(get(url)).status == 200
        time.sleep(2.2)  # max-age=1 is over: stale, well within the stale-while-revalidate window
        slow.set()
        before = stats(fast)["fast_hits"]
        statuses = []
        for i in range(4):
            answers = []
            for proxy in (fast, full):
                with plain(proxy) as w:
                    answers.append(w.exchange(get(url)))
            _same(answers[0], answers[1], f"stale hit {i}")
            assert answers[0].body == b"stale while revalidating\n"
            statuses.append(answers[0].get("cache-status") or "")
        assert all("stale-while-revalidate" in s for s in statuses), statuses
        # The first stale hit went the full path's way (it started the revalidation), the rest were fast.
        assert stats(fast)["fast_hits"] == before + 3
        assert stats(full)["fast_hits"] == 0
        assert origin.hits["/swr"] == 4  # each proxy: one store, one revalidation (still in flight)
    finally:
        release.set()
