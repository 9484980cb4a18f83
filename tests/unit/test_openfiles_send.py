"""OpenFiles.send (fwdproxy/store/openfiles.py) at its edges: the socket taking part of the head or nothing,
the file growing, failing or cut between its check and the copy, a descriptor opened by the send itself,
and the kept descriptor never closed by another thread in the middle of a send. What the client receives
followed by ``Sent.rest`` must always be the head and the body, or a prefix of them with ``whole`` false."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import TieredStore, openfiles
from fwdproxy.store.openfiles import OpenFiles, Seen, Sent
from fwdproxy.store.tiered import DiskMark

KIB = 1024
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"


def _meta(length: int, url: str) -> StoredResponse:
    return StoredResponse(url, 200, "OK", Headers.of({"ETag": '"1"'}), 1.0, 2.0, length)


def _kept(store: TieredStore, key: str, body: bytes) -> DiskMark:
    """``body`` stored under ``key`` and read once (checksum confirmed): the mark a fast hit sends from."""
    store.put(key, _meta(len(body), "http://a/" + key), body)
    entry = store.get(key)
    assert entry is not None and entry.body == body
    mark = store.disk_mark(key)
    assert mark is not None and mark.path is not None
    return mark


def _open_paths() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return out


def _holds(path: str) -> bool:
    return any(p in (path, f"{path} (deleted)") for p in _open_paths())


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback TCP pair: (the proxy's non-blocking side, the client's side)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
    ours.setblocking(False)
    client.settimeout(5)
    with ours, client:
        yield ours, client


def _receive(client: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = client.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _nothing_more(client: socket.socket) -> bool:
    client.settimeout(0.05)
    try:
        client.recv(1)
    except TimeoutError:
        return True
    finally:
        client.settimeout(5)
    return False


def _fill(ours: socket.socket) -> int:
    """Fill the socket's buffers until it takes nothing more; the bytes written."""
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * KIB)
    n = 0
    while True:
        try:
            n += ours.send(b"f" * 4096)
        except BlockingIOError:
            return n


def _store(tmp_path: Path) -> TieredStore:
    return TieredStore.open(tmp_path, memory_size=0, memory_object_max=4096 * KIB)


def _delivered(client: socket.socket, sent: Sent, skip: int = 0) -> bytes:
    """What the client ends up with: the bytes written directly (after ``skip`` filler), then ``rest``."""
    assert _receive(client, skip) == b"f" * skip
    return _receive(client, sent.written) + sent.rest


def test_a_full_socket_takes_nothing_and_everything_comes_back(tmp_path: Path, pair) -> None:
    ours, client = pair
    store = _store(tmp_path)
    data = os.urandom(300 * KIB)
    mark = _kept(store, "k", data)
    filler = _fill(ours)
    head = HEAD % len(data)
    sent = store.disk_send(mark, head, ours.fileno())
    assert sent is not None
    assert sent.whole
    assert sent.written == 0
    assert sent.rest == head + data
    assert _delivered(client, sent, filler) == head + data
    assert _holds(mark.path or "")  # still kept: nothing was wrong with the file


def test_a_head_taken_in_part_continues_in_rest_in_order(
    tmp_path: Path, pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, client = pair
    store = _store(tmp_path)
    data = os.urandom(200 * KIB)
    mark = _kept(store, "k", data)
    real = os.write

    def part(fd: int, b: bytes) -> int:
        return real(fd, bytes(b[:7]))  # the socket took 7 bytes of the head

    monkeypatch.setattr(openfiles.os, "write", part)
    head = HEAD % len(data)
    sent = store.disk_send(mark, head, ours.fileno())
    assert sent is not None
    assert sent.whole
    assert sent.written == 7  # no body byte may go out before the whole head
    assert sent.rest == head[7:] + data
    assert _delivered(client, sent) == head + data
    assert _nothing_more(client)


def test_a_file_cut_while_the_socket_is_full_writes_nothing_and_is_dropped(
    tmp_path: Path, pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, client = pair
    store = _store(tmp_path)
    data = os.urandom(100 * KIB)
    mark = _kept(store, "k", data)
    path = mark.path or ""

    def cut_then_full(fd: int, b: bytes) -> int:
        os.truncate(path, 10 * KIB)  # between the check and the read of the body
        raise BlockingIOError(errno.EAGAIN, "full")

    monkeypatch.setattr(openfiles.os, "write", cut_then_full)
    assert store.disk_send(mark, HEAD % len(data), ours.fileno()) is None  # the caller reads the entry anew
    assert _nothing_more(client)
    assert not _holds(path)


def test_a_file_grown_after_its_check_sends_only_the_confirmed_bytes(
    tmp_path: Path, pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, client = pair
    store = _store(tmp_path)
    data = os.urandom(100 * KIB)
    mark = _kept(store, "k", data)
    real = os.write

    def grow_then_write(fd: int, b: bytes) -> int:
        with open(mark.path or "", "ab") as f:
            f.write(b"EXTRA" * 1000)
        return real(fd, b)

    monkeypatch.setattr(openfiles.os, "write", grow_then_write)
    head = HEAD % len(data)
    sent = store.disk_send(mark, head, ours.fileno())
    assert sent is not None
    assert sent.whole
    assert _delivered(client, sent) == head + data  # never a byte past the confirmed size
    assert _nothing_more(client)
    monkeypatch.undo()
    assert store.disk_send(mark, head, ours.fileno()) is None  # the next hit sees the changed file


def test_a_sendfile_failure_hands_the_rest_of_the_body_over_in_order(
    tmp_path: Path, pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, client = pair
    store = _store(tmp_path)
    data = os.urandom(300 * KIB)
    mark = _kept(store, "k", data)
    real = os.sendfile
    calls = []

    def fail_second(out: int, fd: int, offset: int, count: int) -> int:
        calls.append(offset)
        if len(calls) > 1:
            raise OSError(errno.EINVAL, "sendfile refused")
        return real(out, fd, offset, min(count, 50 * KIB))

    monkeypatch.setattr(openfiles.os, "sendfile", fail_second)
    head = HEAD % len(data)
    sent = store.disk_send(mark, head, ours.fileno())
    assert sent is not None
    assert sent.whole
    assert sent.written == len(head) + 50 * KIB
    assert sent.rest == data[50 * KIB :]
    assert _delivered(client, sent) == head + data


def test_a_file_that_fails_to_read_ends_the_answer_short(
    tmp_path: Path, pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, client = pair
    store = _store(tmp_path)
    data = os.urandom(300 * KIB)
    mark = _kept(store, "k", data)
    real = os.sendfile

    def part(out: int, fd: int, offset: int, count: int) -> int:
        if offset:
            raise OSError(errno.EIO, "disk")
        return real(out, fd, offset, 64 * KIB)

    def broken(fd: int, n: int, offset: int) -> bytes:
        raise OSError(errno.EIO, "disk")

    monkeypatch.setattr(openfiles.os, "sendfile", part)
    monkeypatch.setattr(openfiles.os, "pread", broken)
    head = HEAD % len(data)
    sent = store.disk_send(mark, head, ours.fileno())
    assert sent is not None
    assert not sent.whole  # the caller closes the connection after what it has
    assert _delivered(client, sent) == head + data[: 64 * KIB]  # a prefix, never a wrong byte
    assert not _holds(mark.path or "")


def test_a_send_opens_the_descriptor_when_none_is_kept(tmp_path: Path, pair) -> None:
    ours, client = pair
    store = _store(tmp_path)
    data = os.urandom(100 * KIB)
    mark = _kept(store, "k", data)
    store.disk.open_files.clear()  # as after a sweep or the bound: no descriptor kept
    assert not _holds(mark.path or "")
    head = HEAD % len(data)
    sent = store.disk_send(mark, head, ours.fileno())
    assert sent is not None and sent.whole
    assert _delivered(client, sent) == head + data
    assert _holds(mark.path or "")  # and kept for the next one


def test_another_thread_cannot_close_the_descriptor_mid_send(
    tmp_path: Path, pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """forget() (an entry written or evicted by the store's writer thread) waits for a send in progress, so
    the descriptor number is not closed and reused under sendfile."""
    ours, client = pair
    store = _store(tmp_path)
    data = os.urandom(100 * KIB)
    mark = _kept(store, "k", data)
    files: OpenFiles = store.disk.open_files
    forgot = threading.Event()
    real = os.sendfile
    alive_during: list[bool] = []

    def racing(out: int, fd: int, offset: int, count: int) -> int:
        if not alive_during:
            t = threading.Thread(target=lambda: (files.forget("k"), forgot.set()))
            t.start()
            time.sleep(0.2)
            alive_during.append(not forgot.is_set())
            assert os.fstat(fd).st_size == len(data)  # still our file's descriptor
        return real(out, fd, offset, count)

    monkeypatch.setattr(openfiles.os, "sendfile", racing)
    head = HEAD % len(data)
    sent = store.disk_send(mark, head, ours.fileno())
    monkeypatch.undo()
    assert alive_during == [True]
    assert forgot.wait(5)
    assert sent is not None and sent.whole
    assert _delivered(client, sent) == head + data
    assert not _holds(mark.path or "")


def test_a_seen_for_another_file_sends_nothing(tmp_path: Path, pair) -> None:
    """The path checked against the identity confirmed for the key: a different file under the same key
    (another entry's confirmed identity) writes nothing."""
    ours, client = pair
    store = _store(tmp_path)
    a = _kept(store, "a", os.urandom(100 * KIB))
    _kept(store, "b", os.urandom(120 * KIB))
    files = store.disk.open_files
    seen_b: Seen | None = store.disk._verified.get("b")
    assert seen_b is not None
    assert files.send("a", a.path or "", seen_b, b"head", ours.fileno()) is None
    assert _nothing_more(client)
