"""The disk tier under attack, end to end: body files damaged in place are never served, and downloads in
flight count against --disk-cache-size (issue 16, points 7 and 8)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import Origin, Reply, client, pattern, slow_chunks

MiB = 2**20


def body_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "store").rglob("*.val"))


def corrupt_in_place(path: Path, *, keep_mtime: bool) -> None:
    """Overwrite bytes in the middle of a body file, keeping its inode and length (and maybe its mtime)."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(before.st_size // 2)
        original = f.read(4096)
        f.seek(before.st_size // 2)
        f.write(bytes(b ^ 0xFF for b in original))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert not keep_mtime or after.st_mtime_ns == before.st_mtime_ns


def corrupt_inline(cache_dir: Path) -> None:
    """Flip the last byte of every record in the database (an inline body ends its record)."""
    con = sqlite3.connect(cache_dir / "store" / "cache.db")
    with con:
        rows = con.execute("SELECT rowid, value FROM Cache").fetchall()
        for rowid, value in rows:
            damaged = bytes(value[:-1]) + bytes([value[-1] ^ 0xFF])
            con.execute("UPDATE Cache SET value = ? WHERE rowid = ?", (damaged, rowid))
    con.close()


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["mtime-changed", "mtime-restored"])
def test_a_big_body_damaged_in_place_is_never_served(start_proxy, origin: Origin, keep_mtime: bool) -> None:
    # 3 MiB: above --stream-threshold and the whole-read size (1 MiB each), so the hit is a sendfile from
    # the body file; the proxy has already served it once (its checksum is remembered as confirmed).
    body = pattern(3 * MiB, seed=3)
    url = origin.route("/big", Reply(200, {"Cache-Control": "max-age=600"}, body))
    proxy = start_proxy("--memory-cache-size", "0")
    cache_dir = Path(proxy.argv[proxy.argv.index("--cache-dir") + 1])
    with client(proxy) as c:
        assert c.get(url).content == body
        hit = c.get(url)
        assert hit.content == body and "hit" in hit.headers["Cache-Status"]
        (path,) = body_files(cache_dir)
        corrupt_in_place(path, keep_mtime=keep_mtime)
        again = c.get(url)
    assert again.content == body, "the damaged body file was served"
    assert "hit" not in again.headers["Cache-Status"].split("; ")
    assert origin.hits["/big"] == 2  # the damaged entry was dropped and fetched again
    assert "does not match its checksum" in proxy.log()


def test_a_damaged_big_body_is_never_served_over_http2(
    start_proxy, tls_origin: Origin, proxy_ca_file: Path, tmp_path: Path
) -> None:
    body = pattern(3 * MiB, seed=8)
    url = tls_origin.route("/big2", Reply(200, {"Cache-Control": "max-age=600"}, body)).replace(
        "127.0.0.1", "localhost"
    )
    proxy = start_proxy("--memory-cache-size", "0", "--connect-port", str(tls_origin.port))
    cache_dir = Path(proxy.argv[proxy.argv.index("--cache-dir") + 1])
    out = tmp_path / "got.bin"

    def fetch() -> tuple[bytes, str]:
        argv = ["curl", "-sS", "--http2", "-x", proxy.url, "--cacert", str(proxy_ca_file), "-o", str(out)]
        done = subprocess.run(
            [*argv, "-w", "%{http_version}", url], capture_output=True, text=True, timeout=60
        )
        return out.read_bytes(), done.stdout

    assert fetch() == (body, "2")
    assert fetch() == (body, "2")
    assert tls_origin.hits["/big2"] == 1
    (path,) = body_files(cache_dir)
    corrupt_in_place(path, keep_mtime=True)
    assert fetch() == (body, "2")
    assert tls_origin.hits["/big2"] == 2


def test_a_new_process_checks_a_big_body_before_its_first_hit(
    start_proxy, origin: Origin, tmp_path: Path
) -> None:
    body = pattern(3 * MiB, seed=4)
    url = origin.route("/big", Reply(200, {"Cache-Control": "max-age=600"}, body))
    cache_dir = tmp_path / "shared"
    first = start_proxy(cache_dir=cache_dir)
    with client(first) as c:
        assert c.get(url).content == body
    first.stop()
    (path,) = body_files(cache_dir)
    corrupt_in_place(path, keep_mtime=True)
    second = start_proxy("--memory-cache-size", "0", cache_dir=cache_dir)
    with client(second) as c:
        got = c.get(url)
    assert got.content == body
    assert origin.hits["/big"] == 2


@pytest.mark.parametrize("size", [20_000, 300 * 1024], ids=["inline-in-sqlite", "small-file"])
def test_a_small_body_damaged_on_disk_is_never_served(
    start_proxy, origin: Origin, tmp_path: Path, size: int
) -> None:
    body = pattern(size, seed=5)
    url = origin.route("/small", Reply(200, {"Cache-Control": "max-age=600"}, body))
    cache_dir = tmp_path / "small"
    first = start_proxy(cache_dir=cache_dir)
    with client(first) as c:
        assert c.get(url).content == body
    first.stop()
    files = body_files(cache_dir)
    if files:
        (path,) = files
        corrupt_in_place(path, keep_mtime=True)
    else:
        corrupt_inline(cache_dir)
    second = start_proxy("--memory-cache-size", "0", cache_dir=cache_dir)
    with client(second) as c:
        got = c.get(url)
        assert got.content == body
        assert origin.hits["/small"] == 2
        assert c.get(url).content == body  # the refetched copy is stored and good


def test_a_crowd_on_a_damaged_big_body_never_gets_the_damage(start_proxy, origin: Origin) -> None:
    body = pattern(6 * MiB, seed=6)
    url = origin.route("/crowd", Reply(200, {"Cache-Control": "max-age=600"}, body))
    proxy = start_proxy("--memory-cache-size", "0")
    cache_dir = Path(proxy.argv[proxy.argv.index("--cache-dir") + 1])
    with client(proxy) as c:
        assert c.get(url).content == body
        assert c.get(url).content == body
    (path,) = body_files(cache_dir)
    corrupt_in_place(path, keep_mtime=True)

    def one(_: int) -> bytes:
        with httpx.Client(proxy=proxy.url, trust_env=False, timeout=60) as c:
            r = c.get(url)
            assert r.status_code == 200
            return r.content

    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(one, range(12)))
    assert all(g == body for g in got), [i for i, g in enumerate(got) if g != body]
    assert proxy.log().count("does not match its checksum") == 1  # one check for the crowd, one drop
    assert 2 <= origin.hits["/crowd"] <= 13


# -- point 7: downloads in flight count against the disk limit


def disk_usage(cache_dir: Path) -> int:
    """Bytes under store/ and tmp/, each inode once (a committing body is briefly linked in both): apparent
    size (a reservation counts in full) or allocated blocks, the larger."""
    seen: set[int] = set()
    total = 0
    for sub in ("store", "tmp"):
        for folder, _, names in os.walk(cache_dir / sub):
            for name in names:
                try:
                    st = os.stat(os.path.join(folder, name))
                except FileNotFoundError:
                    continue
                if st.st_ino not in seen:
                    seen.add(st.st_ino)
                    total += max(st.st_size, st.st_blocks * 512)
    return total


class Sampler:
    """Samples the cache dir's disk usage in a thread until stopped."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, disk_usage(self.cache_dir))
            self.samples += 1
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def limited(start_proxy, tmp_path: Path) -> Iterator[tuple[object, Path]]:
    cache_dir = tmp_path / "limited"
    yield start_proxy("--disk-cache-size", "8MiB", "--memory-cache-size", "0", cache_dir=cache_dir), cache_dir


BUFFER = 256 * 2**10
"""Slack per download allowed above the limit: one read buffer (the database's WAL is not in its volume)."""


def test_concurrent_big_downloads_never_fill_the_disk_past_the_limit(limited, origin: Origin) -> None:
    proxy, cache_dir = limited
    n = 5
    bodies = [pattern(30 * MiB, seed=i) for i in range(n)]
    urls = [
        origin.route(
            f"/dl{i}",
            Reply(200, {"Cache-Control": "max-age=600"}, chunks=slow_chunks(b, delay=0.002), length=len(b)),
        )
        for i, b in enumerate(bodies)
    ]
    sampler = Sampler(cache_dir)

    def one(i: int) -> httpx.Response:
        with httpx.Client(proxy=proxy.url, trust_env=False, timeout=120) as c:
            return c.get(urls[i])

    try:
        with ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(one, range(n)))
    finally:
        sampler.stop()
    assert sampler.samples > 20
    for r, b in zip(responses, bodies, strict=True):
        assert r.status_code == 200 and r.content == b
        assert "detail=too-big-for-disk" in r.headers["Cache-Status"], r.headers["Cache-Status"]
        assert "stored" not in r.headers["Cache-Status"].split("; ")
    limit = 8 * MiB
    assert sampler.peak <= limit + n * BUFFER, sampler.peak


def test_downloads_that_fit_together_are_stored_and_the_rest_stream_unstored(limited, origin: Origin) -> None:
    proxy, cache_dir = limited
    n = 4
    size = 3 * MiB  # two fit in 8 MiB at once, four do not
    bodies = [pattern(size, seed=10 + i) for i in range(n)]
    urls = [
        origin.route(
            f"/fit{i}",
            Reply(200, {"Cache-Control": "max-age=600"}, chunks=slow_chunks(b, delay=0.05), length=len(b)),
        )
        for i, b in enumerate(bodies)
    ]
    sampler = Sampler(cache_dir)

    def one(i: int) -> httpx.Response:
        with httpx.Client(proxy=proxy.url, trust_env=False, timeout=120) as c:
            return c.get(urls[i])

    try:
        with ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(one, range(n)))
    finally:
        sampler.stop()
    statuses = [r.headers["Cache-Status"] for r in responses]
    assert all(r.content == b for r, b in zip(responses, bodies, strict=True))
    stored = [s for s in statuses if s.endswith("stored")]
    refused = [s for s in statuses if "detail=too-big-for-disk" in s]
    assert len(stored) >= 1 and len(refused) >= 1 and len(stored) + len(refused) == n, statuses
    assert sampler.peak <= 8 * MiB + n * BUFFER, sampler.peak
    # What was stored is served from the cache, whole.
    with client(proxy) as c:
        for r, url, b in zip(responses, urls, bodies, strict=True):
            if r.headers["Cache-Status"].endswith("stored"):
                hit = c.get(url)
                assert hit.content == b and "hit" in hit.headers["Cache-Status"]


def endless(chunk: bytes, stop: threading.Event) -> Iterator[bytes]:
    """A chunked body (framed here: the test origin writes pieces as they are) that never ends."""
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    while not stop.is_set():
        time.sleep(0.001)
        yield framed


def test_endless_downloads_leave_at_most_the_limit_on_disk(limited, origin: Origin) -> None:
    proxy, cache_dir = limited
    stop = threading.Event()
    chunk = pattern(64 * 1024, seed=9)
    n = 6
    urls = [
        origin.route(
            f"/endless{i}",
            Reply(
                200,
                {"Cache-Control": "max-age=600", "Transfer-Encoding": "chunked"},
                chunks=lambda: endless(chunk, stop),
            ),
        )
        for i in range(n)
    ]
    sampler = Sampler(cache_dir)
    received = [0] * n

    def one(i: int) -> None:
        with httpx.Client(proxy=proxy.url, trust_env=False, timeout=60) as c:
            with c.stream("GET", urls[i]) as r:
                for data in r.iter_bytes():
                    received[i] += len(data)
                    if received[i] >= 24 * MiB:
                        return

    try:
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(one, range(n)))
    finally:
        stop.set()
        sampler.stop()
    assert all(r >= 24 * MiB for r in received)
    assert sampler.peak <= 8 * MiB + n * BUFFER, sampler.peak
    assert "not storing" in proxy.log() or "too big for the disk" in proxy.log()
