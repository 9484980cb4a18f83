"""The disk tier under attack, end to end: body files damaged in place are never served, and downloads in
flight count against --disk-cache-size (issue 16, points 7 and 8)."""

from __future__ import annotations

import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import Origin, Reply, client, pattern

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
