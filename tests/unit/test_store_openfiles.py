"""Body files kept open between disk hits (fwdproxy/store/openfiles.py): a kept descriptor serves only the
very file whose checksum was confirmed, is closed when its entry is rewritten, deleted or evicted (here or
by another process), and there are never more than the bound."""

from __future__ import annotations

import os
import resource
import socket
import sqlite3
import struct
import time
from pathlib import Path

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import TieredStore, openfiles
from fwdproxy.store.openfiles import OPEN_MAX, OpenFiles, default_max
from fwdproxy.store.tiered import DiskMark

KIB = 1024


def meta(length: int, etag: str = '"1"', url: str = "http://a/") -> StoredResponse:
    return StoredResponse(url, 200, "OK", Headers.of({"ETag": etag}), 1.0, 2.0, length)


def open_paths() -> list[str]:
    """What this process's descriptors point at (deleted files end with " (deleted)")."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # the descriptor listdir itself used
    return out


def holds(path: str) -> bool:
    return any(p == path or p == f"{path} (deleted)" for p in open_paths())


def stored(store: TieredStore, key: str, body: bytes, etag: str = '"1"') -> str:
    """Store ``body`` under ``key``, read it once (checksum confirmed) and read it again through its mark:
    the body file's path, now kept open."""
    url = "http://a/" + key
    store.put(key, meta(len(body), etag, url), body)
    entry = store.get(key)
    assert entry is not None and entry.body == body
    mark = store.disk_mark(key)
    assert mark is not None and mark.path is not None
    assert store.disk_body(mark) == body
    assert holds(mark.path)
    return mark.path


def test_a_kept_descriptor_serves_hits_without_reopening(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    data = os.urandom(100 * KIB)
    path = stored(store, "k", data)
    before = len(os.listdir("/proc/self/fd"))
    mark = store.disk_mark("k")
    assert mark is not None
    for _ in range(5):
        assert store.disk_body(mark) == data
    assert len(os.listdir("/proc/self/fd")) == before
    assert len(store.disk.open_files) == 1
    assert open_paths().count(path) == 1


def test_a_replaced_body_is_never_read_from_the_old_descriptor(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    old, new = b"o" * (64 * KIB), b"n" * (64 * KIB)
    old_path = stored(store, "k", old)
    old_mark = store.disk_mark("k")
    assert old_mark is not None
    store.put("k", meta(len(new), '"2"', "http://a/k"), new)  # same key, new content, new body file
    assert not holds(old_path)  # closed by the write itself
    assert store.disk_body(old_mark) is None
    entry = store.get("k")
    assert entry is not None and entry.body == new
    mark = store.disk_mark("k")
    assert mark is not None and mark.path != old_path
    assert store.disk_body(mark) == new


def test_a_deleted_or_evicted_entry_closes_its_descriptor(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB, disk_size=400 * KIB)
    first = stored(store, "a", b"a" * (100 * KIB))
    second = stored(store, "b", b"b" * (100 * KIB))
    store.delete("a")
    assert not holds(first)
    assert holds(second)
    for i in range(6):  # 600 KiB more in a 400 KiB cache: "b", least recently used, is evicted
        store.put(f"c{i}", meta(100 * KIB, url=f"http://a/c{i}"), b"c" * (100 * KIB))
    assert store.get("b") is None
    assert not holds(second)
    assert len(store.disk.open_files) == 0


def test_another_process_deleting_the_entry_closes_the_descriptor(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    other = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    data = os.urandom(50 * KIB)
    path = stored(store, "k", data)
    mark = store.disk_mark("k")
    assert mark is not None
    other.delete("k")  # removed elsewhere: its file unlinked, held open here until noticed
    assert store.disk_body(mark) is None  # the slot's mark moved: not read, and the descriptor closed
    assert not holds(path)
    # Nobody asks for it again: the periodic sweep closes a removed file's descriptor all the same.
    stored(store, "j", data)
    j_path = store.disk_mark("j").path  # type: ignore[union-attr]
    other.delete("j")
    assert holds(str(j_path))
    assert store.disk.check()  # the periodic health check sweeps
    assert not holds(str(j_path))


def test_a_file_changed_in_place_or_truncated_is_not_read(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    data = os.urandom(80 * KIB)
    path = stored(store, "k", data)
    mark = store.disk_mark("k")
    assert mark is not None
    time.sleep(0.05)  # past the file system's timestamp granularity: the write below moves mtime and ctime
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([data[1000] ^ 0xFF]), 1000)  # one byte flipped, size unchanged
    finally:
        os.close(fd)
    assert store.disk_body(mark) is None
    assert not holds(path)
    assert store.get("k") is None  # the store hashes it, finds the damage and drops the entry
    path = stored(store, "t", data)
    mark = store.disk_mark("t")
    assert mark is not None
    os.truncate(path, len(data) - 1)
    assert store.disk_body(mark) is None
    assert store.get("t") is None


def test_a_file_renamed_over_is_not_read_from_the_old_descriptor(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    data = os.urandom(40 * KIB)
    path = stored(store, "k", data)
    mark = store.disk_mark("k")
    assert mark is not None
    other = tmp_path / "other.val"
    other.write_bytes(data)
    os.replace(other, path)  # same bytes, another file: not the one this process hashed
    assert store.disk_body(mark) is None
    assert not holds(f"{path}")


def test_the_kept_descriptors_are_bounded(tmp_path: Path) -> None:
    files = OpenFiles(maxsize=4)
    paths = []
    for i in range(10):
        p = tmp_path / f"{i}.val"
        p.write_bytes(b"%d" % i * 5000)
        st = os.stat(p)
        seen = (b"s", st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        assert files.read(f"k{i}", str(p), seen) == b"%d" % i * 5000
        paths.append(str(p))
        assert len(files) <= 4
    assert [holds(p) for p in paths] == [False] * 6 + [True] * 4  # the least recently used were closed
    files.clear()
    assert not any(holds(p) for p in paths)
    with pytest.raises(ValueError):
        OpenFiles(maxsize=0)


def test_the_default_bound_leaves_most_descriptors_to_connections() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert default_max() == 128
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
        assert default_max() == OPEN_MAX
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_path_is_checked_again_after_recheck_seconds(tmp_path: Path) -> None:
    files = OpenFiles(maxsize=4, recheck=0.0)
    p = tmp_path / "a.val"
    p.write_bytes(b"x" * 100)
    st = os.stat(p)
    seen = (b"s", st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    assert files.read("k", str(p), seen) == b"x" * 100
    os.link(p, tmp_path / "second-link")  # still linked elsewhere: nlink alone would not notice
    os.unlink(p)
    (tmp_path / "b").write_bytes(b"y" * 100)
    os.rename(tmp_path / "b", p)  # the path names another file now
    assert files.read("k", str(p), seen) is None
    assert len(files) == 0


def test_an_inline_body_is_read_from_its_row_each_time_and_checked(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0)
    body = os.urandom(KIB)
    store.put("k", meta(len(body)), body)
    entry = store.get("k")
    assert entry is not None and entry.body == body
    mark = store.disk_mark("k")
    assert mark is not None and mark.path is None and mark.inline is not None
    assert len(mark.inline.prefix) < 1000  # the record's head and metadata: the body is not kept
    again = store.disk_body(mark)
    assert again == body and again is not entry.body
    db = sqlite3.connect(tmp_path / "store" / "cache.db")
    try:
        (record,) = db.execute("SELECT value FROM Cache WHERE key = 'k'").fetchone()
        damaged = bytearray(record)
        damaged[-10] ^= 0xFF  # a byte of the inline body, behind the store's back (no mark moves)
        db.execute("UPDATE Cache SET value = ? WHERE key = 'k'", (bytes(damaged),))
        db.commit()
        assert store.disk_body(mark) is None  # its checksum does not match
        assert store.get("k") is None  # and the full path drops it
        store.put("k", meta(len(body)), body)
        assert store.get("k") is not None
        mark = store.disk_mark("k")
        assert mark is not None
        (record,) = db.execute("SELECT value FROM Cache WHERE key = 'k'").fetchone()
        changed = bytes(record).replace(b'"OK"', b'"NO"')  # the metadata, not the body
        assert changed != record
        db.execute("UPDATE Cache SET value = ? WHERE key = 'k'", (changed,))
        db.commit()
        assert store.disk_body(mark) is None
    finally:
        db.close()


def test_the_stores_own_reads_sweep_removed_files(tmp_path: Path) -> None:
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    other = TieredStore.open(tmp_path, memory_size=0, memory_object_max=256 * KIB)
    store.disk.open_files.recheck = 3600.0
    path = stored(store, "k", os.urandom(50 * KIB))
    other.delete("k")
    store.put("j", meta(3, url="http://a/j"), b"abc")
    assert store.get("j") is not None
    assert holds(path)  # swept at most every RECHECK seconds
    store.disk.open_files.recheck = 0.0
    assert store.get("j") is not None  # a read that follows the database sweeps too
    assert not holds(path)


# -- sendfile: a body written from its kept file straight to a socket (the fast hit layer's disk hits) -------------

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback: (the proxy's non-blocking side, the client's side)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
    ours.setblocking(False)
    return ours, client


def received(client: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    client.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        chunk = client.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def nothing_waiting(client: socket.socket) -> bool:
    client.setblocking(False)
    try:
        client.recv(1)
    except BlockingIOError:
        return True
    finally:
        client.setblocking(True)
    return False


def kept(tmp_path: Path, size: int = 100 * KIB) -> tuple[TieredStore, bytes, str, DiskMark]:
    """A store whose entry "k" (``size`` random bytes) was read once, with its body file and mark."""
    store = TieredStore.open(tmp_path, memory_size=0, memory_object_max=max(256 * KIB, 2 * size))
    data = os.urandom(size)
    path = stored(store, "k", data)
    mark = store.disk_mark("k")
    assert mark is not None
    return store, data, path, mark


def test_send_writes_head_and_body_from_the_file(tmp_path: Path) -> None:
    store, data, _, mark = kept(tmp_path)
    ours, client = socket_pair()
    with ours, client:
        head = HEAD % len(data)
        for _ in range(3):  # again and again through the one kept descriptor
            sent = store.disk_send(mark, head, ours.fileno())
            assert sent is not None
            assert (sent.rest, sent.written, sent.whole) == (b"", len(head) + len(data), True)
            assert received(client, len(head) + len(data)) == head + data
        assert nothing_waiting(client)


def test_what_the_socket_does_not_take_comes_back_in_order(tmp_path: Path) -> None:
    store, data, _, mark = kept(tmp_path, 3 * 1024 * KIB)
    ours, client = socket_pair()
    with ours, client:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * KIB)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KIB)
        head = HEAD % len(data)
        sent = store.disk_send(mark, head, ours.fileno())  # the client reads nothing meanwhile
        assert sent is not None and sent.whole
        assert sent.written > 0
        assert sent.rest  # the buffers hold far less than 3 MiB
        assert sent.written + len(sent.rest) == len(head) + len(data)
        direct = received(client, sent.written)
        assert direct + sent.rest == head + data


def test_a_changed_entry_or_file_writes_nothing(tmp_path: Path) -> None:
    store, data, path, mark = kept(tmp_path)
    ours, client = socket_pair()
    with ours, client:
        time.sleep(0.02)  # past the file system's timestamp granularity
        with open(path, "r+b") as f:  # a byte flipped in place: same inode and size
            f.seek(10)
            f.write(bytes([data[10] ^ 0xFF]))
        assert store.disk_send(mark, b"head", ours.fileno()) is None
        assert nothing_waiting(client)
        stored(store, "j", data)
        other = store.disk_mark("j")
        assert other is not None
        store.put("j", meta(4, '"2"', "http://a/j"), b"new!")  # rewritten since the mark: its slot moved
        assert store.disk_send(other, b"head", ours.fileno()) is None
        assert nothing_waiting(client)


def test_a_file_cut_short_after_its_check_ends_the_response_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, data, path, mark = kept(tmp_path)
    real = os.sendfile

    def truncating(out: int, fd: int, offset: int, count: int) -> int:
        os.truncate(path, 40 * KIB)  # behind the store's back, between the fstat and the copy
        return real(out, fd, offset, count)

    monkeypatch.setattr(openfiles.os, "sendfile", truncating)
    ours, client = socket_pair()
    with ours, client:
        head = HEAD % len(data)
        sent = store.disk_send(mark, head, ours.fileno())
        assert sent is not None and not sent.whole
        assert sent.written == len(head) + 40 * KIB
        assert received(client, sent.written) + sent.rest == head + data[: 40 * KIB]  # a prefix, never more
    assert not holds(path)  # the descriptor of the damaged file is closed


def test_a_peer_that_has_gone_gets_nothing_direct_and_the_whole_answer_back(tmp_path: Path) -> None:
    store, data, _, mark = kept(tmp_path)
    ours, client = socket_pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # a reset
    time.sleep(0.05)
    with ours:
        head = HEAD % len(data)
        sent = store.disk_send(mark, head, ours.fileno())
        assert sent is not None and sent.whole
        assert sent.written == 0
        assert sent.rest == head + data  # for the writer, which meets the reset its own way
