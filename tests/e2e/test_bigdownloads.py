"""Big downloads and crowds, end to end: streaming while caching, collapsing, aborts, crashes, shared dirs."""

from __future__ import annotations

import hashlib
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import Origin, Recorded, Reply, client, pattern, slow_chunks


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def fetch_all(proxy_url: str, url: str, n: int) -> list[httpx.Response]:
    def one(_: int) -> httpx.Response:
        with httpx.Client(proxy=proxy_url, trust_env=False, timeout=60) as c:
            return c.get(url)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_crowd_on_a_cold_big_object_is_one_origin_request(start_proxy, origin: Origin) -> None:
    body = pattern(8 * 1024**2)
    url = origin.route(
        "/crowd",
        Reply(200, {"Cache-Control": "max-age=60"}, chunks=slow_chunks(body, delay=0.02), length=len(body)),
    )
    proxy = start_proxy()
    responses = fetch_all(proxy.url, url, 20)
    assert origin.hits["/crowd"] == 1
    assert all(r.status_code == 200 and r.content == body for r in responses)
    statuses = [r.headers["Cache-Status"] for r in responses]
    assert sum("collapsed" in s for s in statuses) >= 10, statuses
    assert sum(s.endswith("stored") for s in statuses) == 1, statuses


def test_crowd_on_a_small_object(start_proxy, origin: Origin) -> None:
    def slow(_: Recorded) -> Reply:
        time.sleep(0.5)
        return Reply(200, {"Cache-Control": "max-age=60"}, b"small\n")

    url = origin.route("/small", slow)
    proxy = start_proxy()
    responses = fetch_all(proxy.url, url, 10)
    assert origin.hits["/small"] == 1
    assert all(r.content == b"small\n" for r in responses)


def test_crowd_on_a_private_object_goes_to_origin_each(start_proxy, origin: Origin) -> None:
    def slow(_: Recorded) -> Reply:
        time.sleep(0.3)
        return Reply(200, {"Cache-Control": "private, max-age=60"}, b"mine\n")

    url = origin.route("/private", slow)
    proxy = start_proxy()
    responses = fetch_all(proxy.url, url, 6)
    assert origin.hits["/private"] == 6
    assert all(r.content == b"mine\n" for r in responses)


def test_big_hit_streams_from_disk(start_proxy, origin: Origin) -> None:
    body = pattern(24 * 1024**2, seed=7)
    url = origin.route("/big", Reply(200, {"Cache-Control": "max-age=60"}, body))
    proxy = start_proxy()
    with client(proxy) as c:
        assert hashlib.sha256(c.get(url).content).digest() == hashlib.sha256(body).digest()
        hit = c.get(url)
        part = c.get(url, headers={"Range": "bytes=10000000-10000099"})
    assert hit.content == body
    assert hit.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert part.status_code == 206 and part.content == body[10000000:10000100]
    assert origin.hits["/big"] == 1


def test_origin_dies_mid_body(start_proxy, origin: Origin) -> None:
    body = pattern(4 * 1024**2)
    url = origin.route(
        "/dies",
        Reply(
            200,
            {"Cache-Control": "max-age=60"},
            chunks=slow_chunks(body),
            length=len(body),
            abort_after=len(body) // 2,
        ),
    )
    proxy = start_proxy()
    with client(proxy) as c, pytest.raises(httpx.RemoteProtocolError):
        c.get(url)
    origin.routes["/dies"] = Reply(200, {"Cache-Control": "max-age=60"}, body)
    with client(proxy) as c:
        r = c.get(url)
    assert r.content == body
    assert "fwd=uri-miss" in r.headers["Cache-Status"]
    assert origin.hits["/dies"] == 2


def test_followers_of_an_aborted_leader_never_get_a_short_body(start_proxy, origin: Origin) -> None:
    body = pattern(6 * 1024**2)
    url = origin.route(
        "/abort",
        Reply(
            200,
            {"Cache-Control": "max-age=60"},
            chunks=slow_chunks(body, delay=0.02),
            length=len(body),
            abort_after=len(body) // 2,
        ),
    )
    proxy = start_proxy()
    results: list[bytes | Exception] = []

    def one() -> None:
        try:
            with httpx.Client(proxy=proxy.url, trust_env=False, timeout=60) as c:
                results.append(c.get(url).content)
        except httpx.HTTPError as e:
            results.append(e)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    for r in results:
        assert isinstance(r, Exception) or r == body  # a failed transfer, never a truncated "success"


def test_kill_9_mid_download_then_restart(start_proxy, origin: Origin, tmp_path: Path) -> None:
    body = pattern(8 * 1024**2, seed=3)
    url = origin.route(
        "/crash",
        Reply(200, {"Cache-Control": "max-age=60"}, chunks=slow_chunks(body, delay=0.05), length=len(body)),
    )
    proxy = start_proxy(cache_dir=tmp_path / "c")
    errors: list[Exception] = []

    def download() -> None:
        try:
            with client(proxy) as c:
                c.get(url)
        except httpx.HTTPError as e:
            errors.append(e)

    t = threading.Thread(target=download)
    t.start()
    time.sleep(0.6)  # part of the body is on disk
    proxy.stop(signal.SIGKILL)
    t.join()
    assert errors, "the client saw the proxy die"
    origin.routes["/crash"] = Reply(200, {"Cache-Control": "max-age=60"}, body)
    again = start_proxy(cache_dir=tmp_path / "c")
    with client(again) as c:
        first = c.get(url)
        second = c.get(url)
    assert first.content == body and second.content == body
    assert second.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert not list((tmp_path / "c" / "tmp").glob("*.part"))


def test_two_processes_share_one_cache_dir(start_proxy, origin: Origin, tmp_path: Path) -> None:
    small = origin.route("/shared", Reply(200, {"Cache-Control": "max-age=60"}, b"shared\n"))
    big_body = pattern(3 * 1024**2)
    big = origin.route("/shared-big", Reply(200, {"Cache-Control": "max-age=60"}, big_body))
    a = start_proxy(cache_dir=tmp_path / "c")
    b = start_proxy(cache_dir=tmp_path / "c")
    with client(a) as ca:
        ca.get(small)
        ca.get(big)
    with client(b) as cb:
        rs, rb = cb.get(small), cb.get(big)
    assert rs.headers["Cache-Status"].startswith("fwdproxy; hit") and rs.content == b"shared\n"
    assert rb.headers["Cache-Status"].startswith("fwdproxy; hit") and rb.content == big_body
    with client(b) as cb:
        cb.post(small, content=b"x")  # invalidated through b ...
    with client(a) as ca:
        assert "fwd=uri-miss" in ca.get(small).headers["Cache-Status"]  # ... is gone for a too
    assert origin.hits["/shared-big"] == 1


def test_memory_stays_flat_for_a_big_object(start_proxy, origin: Origin) -> None:
    size = 192 * 1024**2
    block = pattern(1024**2)

    def chunks():
        for _ in range(size // len(block)):
            yield block

    url = origin.route("/huge", Reply(200, {"Cache-Control": "max-age=60"}, chunks=chunks, length=size))
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(origin.url("/"))  # warm up: imports, TLS, first flow
        idle = vm_kib(proxy.proc.pid, "VmRSS")
        for label in ("miss", "hit"):
            digest = hashlib.sha256()
            with c.stream("GET", url) as r:
                for piece in r.iter_bytes(1024**2):
                    digest.update(piece)
            assert digest.digest() == hashlib.sha256(block * (size // len(block))).digest(), label
    peak = vm_kib(proxy.proc.pid, "VmHWM")
    assert (peak - idle) < 64 * 1024, f"peak RSS grew by {(peak - idle) / 1024:.0f} MiB"
    assert origin.hits["/huge"] == 1


def _ranged(body: bytes, delay: float) -> Callable[[Recorded], Reply]:
    """An origin handler with a strong ETag that honours `Range: bytes=N-` (and If-Range) slowly."""

    def handler(req: Recorded) -> Reply:
        headers = {"Cache-Control": "max-age=60", "ETag": '"big-1"'}
        rng = req.headers.get("Range", "")
        if (
            rng.startswith("bytes=")
            and rng.endswith("-")
            and req.headers.get("If-Range") in (None, '"big-1"')
        ):
            start = int(rng[6:-1])
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            return Reply(
                206, headers, chunks=slow_chunks(body[start:], delay=delay), length=len(body) - start
            )
        return Reply(200, headers, chunks=slow_chunks(body, delay=delay), length=len(body))

    return handler


def test_leader_leaving_keeps_filling_for_followers(start_proxy, origin: Origin) -> None:
    body = pattern(8 * 1024**2, seed=11)
    url = origin.route("/leader-leaves", _ranged(body, delay=0.03))
    proxy = start_proxy()
    leader = socket.create_connection(("127.0.0.1", proxy.port))
    leader.sendall(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode())
    got = 0
    while got < 1024**2:
        got += len(leader.recv(65536))
    results: list[bytes | Exception] = []
    reading = [threading.Event() for _ in range(4)]

    def follower(started: threading.Event) -> None:
        try:
            with httpx.Client(proxy=proxy.url, trust_env=False, timeout=60) as c, c.stream("GET", url) as r:
                data = b""
                for piece in r.iter_bytes():
                    data += piece
                    started.set()
                results.append(data)
        except httpx.HTTPError as e:
            results.append(e)
        finally:
            started.set()

    threads = [threading.Thread(target=follower, args=(e,)) for e in reading]
    for t in threads:
        t.start()
    for e in reading:
        assert e.wait(30)  # every follower is reading along
    leader.close()  # the leader's client goes away mid-body
    for t in threads:
        t.join()
    assert results == [body] * 4
    ranges = [r.headers.get("Range") for r in origin.requests if r.path == "/leader-leaves"]
    assert ranges[0] is None and len(ranges) == 2 and ranges[1].startswith("bytes=")
    with client(proxy) as c:
        again = c.get(url)
    assert again.headers["Cache-Status"].startswith("fwdproxy; hit") and again.content == body


def test_a_follower_leaving_disturbs_nobody(start_proxy, origin: Origin) -> None:
    body = pattern(6 * 1024**2, seed=5)
    url = origin.route(
        "/follower-leaves",
        Reply(200, {"Cache-Control": "max-age=60"}, chunks=slow_chunks(body, delay=0.03), length=len(body)),
    )
    proxy = start_proxy()
    results: list[bytes] = []

    def full() -> None:
        with httpx.Client(proxy=proxy.url, trust_env=False, timeout=60) as c:
            results.append(c.get(url).content)

    leader = threading.Thread(target=full)
    leader.start()
    # The leader must be the one at the origin before the others come (on a busy machine, starting a client
    # can take longer than any fixed sleep, and a quitter that leads instead is another test).
    deadline = time.monotonic() + 30
    while origin.hits["/follower-leaves"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    quitter = socket.create_connection(("127.0.0.1", proxy.port))
    quitter.sendall(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode())
    others = [threading.Thread(target=full) for _ in range(3)]
    for t in others:
        t.start()
    quitter.recv(65536)
    quitter.close()
    for t in [leader, *others]:
        t.join()
    assert results == [body] * 4
    assert origin.hits["/follower-leaves"] == 1


def test_collapsing_across_processes_on_one_cache_dir(start_proxy, origin: Origin, tmp_path: Path) -> None:
    def slow(_: Recorded) -> Reply:
        time.sleep(1.0)
        return Reply(200, {"Cache-Control": "max-age=60"}, b"fetched once\n")

    url = origin.route("/cross", slow)
    a = start_proxy(cache_dir=tmp_path / "c")
    b = start_proxy(cache_dir=tmp_path / "c")
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(fetch_all, p.url, url, 1) for p in (a, b, a, b, a, b)]
        responses = [f.result()[0] for f in futures]
    assert all(r.content == b"fetched once\n" for r in responses)
    assert origin.hits["/cross"] == 1
