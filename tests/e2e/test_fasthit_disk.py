"""Disk-tier hits answered by the fast hit layer (--memory-cache-size 0), end to end: a body file damaged or
replaced behind the store's back, or an inline row damaged in the database, is never what a client gets
(the full path checks it, drops the entry and fetches again), and the body files the proxy keeps open
between hits are closed when their entry is replaced or purged."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from tests.e2e.fastwire import get, plain, stats, tunnel
from tests.support import Origin, Proxy, Reply

CACHED = {"Cache-Control": "max-age=600", "Content-Type": "application/octet-stream"}
BIG = bytes(range(256)) * 400  # 100 KiB: a body file, read whole (under --memory-object-max)
SMALL = bytes(range(256)) * 4  # 1 KiB: inline in its database row
DISK_ONLY = ("--memory-cache-size", "0")


def _fast(proxy: Proxy) -> int:
    return int(stats(proxy)["fast_hits"])  # type: ignore[call-overload]


def _body_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "store").rglob("*.val"))


def _held(proxy: Proxy, cache_dir: Path) -> list[str]:
    """The proxy's open descriptors pointing into its store's body files (removed ones included)."""
    store = str((cache_dir / "store").resolve())
    out = []
    for fd in os.listdir(f"/proc/{proxy.proc.pid}/fd"):
        try:
            target = os.readlink(f"/proc/{proxy.proc.pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(store) and ".val" in target:
            out.append(target)
    return out


def _hits(proxy: Proxy, url: str, n: int, *extra: str) -> list[bytes]:
    bodies = []
    with plain(proxy) as w:
        for _ in range(n):
            answer = w.exchange(get(url, *extra))
            assert answer.status == 200
            bodies.append(answer.body)
    return bodies


def test_a_body_file_changed_in_place_is_never_served(start_proxy, origin: Origin, tmp_path: Path) -> None:
    url = origin.route("/flip", Reply(200, CACHED, BIG))
    cache_dir = tmp_path / "c"
    proxy = start_proxy(*DISK_ONLY, cache_dir=cache_dir)
    assert _hits(proxy, url, 1) == [BIG]  # stored
    assert _hits(proxy, url, 3) == [BIG] * 3  # read and hashed once, then re-read from the kept file
    assert _fast(proxy) == 3
    (body_file,) = _body_files(cache_dir)
    assert _held(proxy, cache_dir) == [str(body_file.resolve())]  # kept open between hits
    time.sleep(0.05)  # past the file system's timestamp granularity
    damaged = bytearray(BIG)
    damaged[5000] ^= 0xFF
    with open(body_file, "r+b") as f:  # in place: same inode, same size
        f.seek(5000)
        f.write(damaged[5000:5001])
    assert _hits(proxy, url, 3) == [BIG] * 3  # from the origin again, then from the new entry
    assert origin.hits["/flip"] == 2
    assert str(body_file.resolve()) not in _held(proxy, cache_dir)


def _sendfile(proxy: Proxy) -> int:
    return int(stats(proxy)["fast_sendfile_hits"])  # type: ignore[call-overload]


def test_repeated_disk_hits_go_from_the_file_to_a_plain_client_by_sendfile(
    start_proxy, origin: Origin, tmp_path: Path
) -> None:
    url = origin.route("/sf", Reply(200, CACHED, BIG))
    proxy = start_proxy(*DISK_ONLY, cache_dir=tmp_path / "c")
    assert _hits(proxy, url, 1) == [BIG]  # stored
    assert _hits(proxy, url, 4) == [BIG] * 4
    # The first fast hit reads the entry whole (checksum); the next ones write the kept file with sendfile. A
    # kept response lives within the second it was made in (Age), so a second's turn costs one more read.
    assert _fast(proxy) == 4
    direct = _sendfile(proxy)
    assert direct >= 2
    with plain(proxy) as w:  # several in one write: each goes direct while the ones before went out whole
        w.send(get(url) * 3)
        assert [w.read().body for _ in range(3)] == [BIG] * 3
    assert _fast(proxy) == 7
    assert _sendfile(proxy) >= direct + 2
    assert origin.hits["/sf"] == 1


def test_a_truncated_body_file_is_never_served(start_proxy, origin: Origin, tmp_path: Path) -> None:
    url = origin.route("/short", Reply(200, CACHED, BIG))
    cache_dir = tmp_path / "c"
    proxy = start_proxy(*DISK_ONLY, cache_dir=cache_dir)
    assert _hits(proxy, url, 1) == [BIG]  # a miss: the connection goes the full path's way from then on
    assert _hits(proxy, url, 3) == [BIG] * 3
    (body_file,) = _body_files(cache_dir)
    os.truncate(body_file, len(BIG) // 2)
    assert _hits(proxy, url, 2) == [BIG] * 2
    assert origin.hits["/short"] == 2


def test_a_body_file_replaced_by_another_file_is_never_served(
    start_proxy, origin: Origin, tmp_path: Path
) -> None:
    url = origin.route("/swap", Reply(200, CACHED, BIG))
    cache_dir = tmp_path / "c"
    proxy = start_proxy(*DISK_ONLY, cache_dir=cache_dir)
    assert _hits(proxy, url, 1) == [BIG]  # a miss: the connection goes the full path's way from then on
    assert _hits(proxy, url, 3) == [BIG] * 3
    (body_file,) = _body_files(cache_dir)
    other = tmp_path / "other"
    other.write_bytes(b"X" * len(BIG))  # same size, other bytes, renamed over the body file
    os.replace(other, body_file)
    answers = _hits(proxy, url, 2)
    assert answers == [BIG] * 2
    assert origin.hits["/swap"] == 2
    assert not any(h.endswith("(deleted)") for h in _held(proxy, cache_dir))


def test_a_damaged_inline_row_is_never_served(start_proxy, origin: Origin, tmp_path: Path) -> None:
    url = origin.route("/row", Reply(200, CACHED, SMALL))
    cache_dir = tmp_path / "c"
    proxy = start_proxy(*DISK_ONLY, cache_dir=cache_dir)
    assert _hits(proxy, url, 1) == [SMALL]
    assert _hits(proxy, url, 3) == [SMALL] * 3
    assert _fast(proxy) == 3  # inline disk bodies take the fast layer too
    db = sqlite3.connect(cache_dir / "store" / "cache.db", timeout=10)
    try:
        rows = db.execute("SELECT key, value FROM Cache").fetchall()
        ((key, record),) = [r for r in rows if isinstance(r[1], bytes) and r[1].endswith(SMALL)]
        damaged = bytearray(record)
        damaged[-100] ^= 0xFF  # a byte of the body, behind the store's back: no generation mark moves
        db.execute("UPDATE Cache SET value = ? WHERE key = ?", (bytes(damaged), key))
        db.commit()
    finally:
        db.close()
    assert _hits(proxy, url, 1) == [SMALL]  # the damage found: dropped, fetched again
    assert _hits(proxy, url, 3) == [SMALL] * 3
    assert origin.hits["/row"] == 2


def test_a_replaced_or_purged_entry_closes_its_kept_body_file(
    start_proxy, origin: Origin, tmp_path: Path
) -> None:
    url = origin.route("/v", Reply(200, CACHED, BIG))
    cache_dir = tmp_path / "c"
    proxy = start_proxy(*DISK_ONLY, cache_dir=cache_dir)
    assert _hits(proxy, url, 1) == [BIG]  # a miss: the connection goes the full path's way from then on
    assert _hits(proxy, url, 3) == [BIG] * 3
    (old,) = _body_files(cache_dir)
    assert _held(proxy, cache_dir) == [str(old.resolve())]
    new_body = BIG[::-1]
    origin.route("/v", Reply(200, CACHED, new_body))
    assert _hits(proxy, url, 1, "Cache-Control: no-cache") == [new_body]  # same key, new content
    assert _hits(proxy, url, 3) == [new_body] * 3  # fast hits of the new body file
    (new,) = _body_files(cache_dir)
    assert new != old
    assert _held(proxy, cache_dir) == [str(new.resolve())]  # the old one closed, the new one kept
    with plain(proxy) as w:
        assert w.exchange(get(url, method="PURGE")).status == 200
    assert _held(proxy, cache_dir) == []
    assert _hits(proxy, url, 1) == [new_body]
    assert origin.hits["/v"] == 3


def test_inside_an_intercepted_tunnel_disk_hits_keep_the_bytes_path_and_a_damaged_file_is_never_served(
    start_proxy, tls_origin: Origin, proxy_ca_file: Path, tmp_path: Path
) -> None:
    tls_origin.route("/t", Reply(200, CACHED, BIG))
    cache_dir = tmp_path / "c"
    proxy = start_proxy(*DISK_ONLY, "--connect-port", str(tls_origin.port), cache_dir=cache_dir)
    authority = f"localhost:{tls_origin.port}"
    url = f"https://{authority}/t"
    with tunnel(proxy, authority, proxy_ca_file) as w:
        assert w.exchange(get(url, target="/t")).body == BIG  # stored
    with tunnel(proxy, authority, proxy_ca_file) as w:
        assert [w.exchange(get(url, target="/t")).body for _ in range(3)] == [BIG] * 3
    assert _fast(proxy) == 3
    assert (
        _sendfile(proxy) == 0
    )  # TLS records are made by mitmproxy's TLS layer: never raw bytes on the socket
    (body_file,) = _body_files(cache_dir)
    time.sleep(0.05)
    with open(body_file, "r+b") as f:
        f.seek(len(BIG) - 1)
        f.write(bytes([BIG[-1] ^ 0x01]))  # the last byte
    with tunnel(proxy, authority, proxy_ca_file) as w:
        answers = [w.exchange(get(url, target="/t")) for _ in range(2)]
    assert [a.body for a in answers] == [BIG] * 2
    assert tls_origin.hits["/t"] == 2
