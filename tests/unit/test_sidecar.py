"""The sidecar over real loopback sockets: complete files, ranges, growing files, tokens, memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fwdproxy import bodysource
from fwdproxy.bodysource import FileBody, GrowingBody, Progress, Slice
from fwdproxy.http_model import Headers
from fwdproxy.ranges import ByteRange, Partial, assemble, parse_range, partial_body
from fwdproxy.sidecar import Sidecar, _is_loopback, _token_of, response_head

DATA = random.Random(7).randbytes(300_001)
MiB = 1024 * 1024


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(params=["sendfile", "fallback"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with zero-copy sendfile and with asyncio's read/write fallback."""
    if request.param == "fallback":
        monkeypatch.delattr(os, "sendfile")
    return str(request.param)


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "body"
    path.write_bytes(DATA)
    return path


@contextlib.asynccontextmanager
async def sidecar(**kw: float) -> AsyncIterator[Sidecar]:
    sc = Sidecar(**kw)
    await sc.start()
    try:
        yield sc
    finally:
        await sc.close()


def head(length: int, status: str = "200 OK", *extra: tuple[str, str]) -> bytes:
    fields = [("Content-Type", "application/octet-stream"), ("Content-Length", str(length)), *extra]
    code, reason = status.split(" ", 1)
    return response_head(int(code), reason, fields)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool
    """The body reached its Content-Length."""


async def read_reply(reader: asyncio.StreamReader, method: str = "GET") -> Reply:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode().split("\r\n")[:-2]
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if method == "HEAD":
        return Reply(status, headers, b"", True)
    try:
        body = await reader.readexactly(int(headers["content-length"]))
    except asyncio.IncompleteReadError as e:
        return Reply(status, headers, e.partial, False)
    return Reply(status, headers, body, True)


async def fetch(port: int, token: str, method: str = "GET") -> Reply:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} /{token} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
    try:
        return await read_reply(reader, method)
    finally:
        writer.close()


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for a server-side effect the client cannot observe directly."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 5 s")


# --- complete files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["path", "fd", "file object"])
def test_full_body(data_file: Path, mode: str, ref: str) -> None:
    async def main() -> None:
        async with sidecar() as sc:
            opened = {"path": lambda: str(data_file), "fd": lambda: os.open(data_file, os.O_RDONLY)}
            file = opened.get(ref, lambda: open(data_file, "rb"))()
            token = sc.offer(head(len(DATA)), FileBody(file))
            reply = await fetch(sc.port, token)
            assert (reply.status, reply.complete, reply.body == DATA) == (200, True, True)
            assert reply.headers["content-length"] == str(len(DATA))
            await until(lambda: sc.stats.transfers_done == 1)
            assert sc.stats.bytes_sent == len(head(len(DATA))) + len(DATA)
            assert sc.stats.transfers_active == 0

    run(main())


@pytest.mark.parametrize(
    "range_value",
    [
        pytest.param("bytes=100-199", id="single range"),
        pytest.param("bytes=-1", id="last byte"),
        pytest.param("bytes=500-599,0-99,-50", id="multipart, a slice at 0 after another"),
        pytest.param("bytes=0-0,2-2,4-4,299990-", id="multipart, four"),
    ],
)
def test_partial_body_is_byte_exact(data_file: Path, mode: str, range_value: str) -> None:
    partial = parse_range(range_value, len(DATA))
    assert isinstance(partial, Partial)
    layout = partial_body(partial, len(DATA), "application/octet-stream", "b0undary")

    async def main() -> None:
        async with sidecar() as sc:
            fields = Headers.of([("Accept-Ranges", "bytes"), *layout.headers])
            f = open(data_file, "rb")
            token = sc.offer(response_head(206, "Partial Content", fields), FileBody(f, layout.parts))
            reply = await fetch(sc.port, token)
            assert reply.status == 206 and reply.complete
            assert reply.body == assemble(layout, DATA)
            await until(lambda: f.closed)

    run(main())


def test_head_sends_only_the_head_and_closes_the_file(data_file: Path) -> None:
    async def main() -> None:
        async with sidecar() as sc:
            f = open(data_file, "rb")
            token = sc.offer(head(len(DATA)), FileBody(f))
            reply = await fetch(sc.port, token, "HEAD")
            assert reply.status == 200 and reply.headers["content-length"] == str(len(DATA))
            await until(lambda: f.closed)
            assert sc.stats.bytes_sent == len(head(len(DATA)))
            assert (await fetch(sc.port, token)).status == 404

    run(main())


def test_keep_alive_carries_several_transfers(data_file: Path) -> None:
    """mitmproxy reuses its connection to the sidecar for later flows of one client connection."""

    async def main() -> None:
        async with sidecar() as sc:
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.port)
            for parts in (None, [ByteRange(10, 19)], None):
                body = FileBody(str(data_file), parts)
                token = sc.offer(head(10 if parts else len(DATA)), body)
                writer.write(f"GET /{token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                reply = await read_reply(reader)
                assert reply.body == (DATA[10:20] if parts else DATA)
            writer.close()

    run(main())


def test_file_shorter_than_its_slices_is_a_failed_transfer(data_file: Path, mode: str) -> None:
    async def main() -> None:
        async with sidecar() as sc:
            token = sc.offer(head(len(DATA)), FileBody(str(data_file)))
            os.truncate(data_file, 1000)  # e.g. the store evicted and reused the file
            reply = await fetch(sc.port, token)
            assert not reply.complete and reply.body == DATA[:1000]
            await until(lambda: sc.stats.transfers_failed == 1)

    run(main())


def test_client_disconnect_is_quiet_and_closes_the_file(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)

    async def main() -> None:
        async with sidecar() as sc:
            f = open(path, "rb")
            token = sc.offer(head(64 * MiB), FileBody(f))
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.port)
            writer.write(f"GET /{token} HTTP/1.1\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(1)
            writer.transport.abort()
            await until(lambda: f.closed and sc.stats.transfers_active == 0)
            assert sc.stats.transfers_failed == 1

    with caplog.at_level(logging.DEBUG):
        run(main())
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int | None, float]]:
    """Every blocking sendfile on a sender thread: (thread name, bytes asked, bytes sent or None, seconds)."""
    calls: list[tuple[str, int, int | None, float]] = []
    real = bodysource._send_blocking

    def recording(fd: int, in_fd: int, offset: int, count: int) -> int | None:
        started = time.perf_counter()
        sent = real(fd, in_fd, offset, count)
        calls.append((threading.current_thread().name, count, sent, time.perf_counter() - started))
        return sent

    monkeypatch.setattr(bodysource, "_send_blocking", recording)
    return calls


def _pattern_file(path: Path, size: int) -> bytes:
    data = (DATA * (size // len(DATA) + 1))[:size]
    path.write_bytes(data)
    return data


def test_complete_files_go_out_in_chunks_on_sender_threads(
    data_file: Path, sends: list[tuple[str, int, int | None, float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bodysource, "SEND_CHUNK", 64 * 1024)

    async def main() -> None:
        async with sidecar() as sc:
            token = sc.offer(
                head(200_007), FileBody(str(data_file), [ByteRange(7, 200_006), b"--", Slice(0, 5)])
            )
            reply = await fetch(sc.port, token)
            assert reply.complete and reply.body == DATA[7:200_007] + b"--" + DATA[:5]

    run(main())
    assert len(sends) >= 4 and all(count <= 64 * 1024 for _, count, _, _ in sends)
    assert {name.startswith("fwdproxy-sendfile") for name, _, _, _ in sends} == {True}
    assert sum(sent or 0 for _, _, sent, _ in sends) == 200_000 + 5


def test_a_client_that_takes_nothing_is_waited_for_on_the_loop(
    tmp_path: Path, sends: list[tuple[str, int, int | None, float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender thread gives up after SEND_TIMEOUT; the loop waits, then the threads take over again."""
    monkeypatch.setattr(bodysource, "SEND_TIMEOUT", 0.2)
    size = 32 * MiB
    data = _pattern_file(tmp_path / "body", size)

    async def main() -> None:
        async with sidecar() as sc:
            token = sc.offer(head(size), FileBody(str(tmp_path / "body")))
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.port, limit=64 * 1024)
            writer.write(f"GET /{token} HTTP/1.1\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            first = await reader.readexactly(1024)
            lag = 0.0
            for _ in range(40):  # 2 s of not reading; the loop (ours and the sidecar's) stays free
                started = time.perf_counter()
                await asyncio.sleep(0.05)
                lag = max(lag, time.perf_counter() - started - 0.05)
            assert lag < 0.2
            rest = await reader.readexactly(size - 1024)
            assert first + rest == data
            writer.close()
            await until(lambda: sc.stats.transfers_done == 1)

    run(main())
    print(f"\nsendfile calls (bytes sent, seconds): {[(sent, round(t, 2)) for _, _, sent, t in sends]}")
    assert max(t for _, _, _, t in sends) < 1.5  # a thread was never held for the whole 2 s stall
    assert sends[-1][2] is not None  # and the threads carried on after it


def test_with_every_sender_busy_a_transfer_goes_on_on_the_loop(
    tmp_path: Path, sends: list[tuple[str, int, int | None, float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow clients may hold every sender thread for a chunk: others must not queue behind them."""
    data = _pattern_file(tmp_path / "body", 32 * MiB)  # more than the socket buffers take: the sender blocks
    monkeypatch.setattr(bodysource, "SEND_TIMEOUT", 30.0)

    async def main() -> None:
        async with sidecar() as sc:
            monkeypatch.setattr(bodysource, "SENDERS", 1)
            slow = sc.offer(head(len(data)), FileBody(str(tmp_path / "body")))
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.port, limit=64 * 1024)
            writer.write(f"GET /{slow} HTTP/1.1\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            await until(lambda: bodysource._senders.busy == 1)  # the slow client holds the only sender
            reply = await asyncio.wait_for(
                fetch(sc.port, sc.offer(head(len(data)), FileBody(str(tmp_path / "body")))), 5
            )
            assert reply.complete and reply.body == data
            assert len(sends) == 0  # the only sender is still blocked on the slow client
            assert await reader.readexactly(len(data)) == data
            writer.close()
            await until(lambda: sc.stats.transfers_done == 2)

    run(main())
    assert bodysource._senders.busy == 0 and len(sends) >= 1


def test_close_unblocks_a_sender_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() must not wait out a blocked sendfile, nor let the loop close a socket a thread still uses."""
    monkeypatch.setattr(bodysource, "SEND_TIMEOUT", 30.0)
    size = 64 * MiB
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(size)

    async def main() -> None:
        sc = Sidecar()
        await sc.start()
        f = open(path, "rb")
        token = sc.offer(head(size), FileBody(f))
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.port, limit=64 * 1024)
        writer.write(f"GET /{token} HTTP/1.1\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.5)  # the socket buffers fill; the sender thread blocks in sendfile
        assert sc.stats.transfers_active == 1
        started = time.perf_counter()
        await asyncio.wait_for(sc.close(), 10)
        assert time.perf_counter() - started < 5
        assert f.closed and sc.stats.transfers_active == 0
        writer.close()

    run(main())


# --- tokens ---------------------------------------------------------------------------------------------


def test_unknown_token_is_404() -> None:
    async def main() -> None:
        async with sidecar() as sc:
            reply = await fetch(sc.port, "nope")
            assert reply.status == 404 and b"unknown, used or expired" in reply.body
            assert sc.stats.not_found == 1

    run(main())


def test_token_is_good_for_one_request(data_file: Path) -> None:
    async def main() -> None:
        async with sidecar() as sc:
            token = sc.offer(head(len(DATA)), FileBody(str(data_file)))
            assert (await fetch(sc.port, token)).body == DATA
            assert (await fetch(sc.port, token)).status == 404

    run(main())


def test_expired_and_withdrawn_offers_are_404_and_close_their_files(data_file: Path) -> None:
    async def main() -> None:
        async with sidecar() as sc:
            f1, f2 = open(data_file, "rb"), open(data_file, "rb")
            expired = sc.offer(head(len(DATA)), FileBody(f1), ttl=0)
            withdrawn = sc.offer(head(len(DATA)), FileBody(f2))
            sc.withdraw(withdrawn)
            assert f2.closed
            assert (await fetch(sc.port, expired)).status == 404
            assert (await fetch(sc.port, withdrawn)).status == 404
            assert f1.closed and sc.stats.offers_pending == 0

    run(main())


def test_only_get_and_head() -> None:
    async def main() -> None:
        async with sidecar() as sc:
            token = sc.offer(head(0), None)
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.port)
            writer.write(f"POST /{token} HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode())
            reply = await read_reply(reader)
            assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD"
            assert await reader.read() == b""  # closed
            writer.close()
            assert (await fetch(sc.port, token)).status == 200  # the token survived

    run(main())


@pytest.mark.parametrize(
    "bad_head, body, error",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", "file", ValueError, id="no CRLFCRLF"),
        pytest.param(head(5), "file", ValueError, id="Content-Length is not the body's"),
        pytest.param(response_head(200, "OK", [("A", "b")]), "file", ValueError, id="no Content-Length"),
        pytest.param(head(10), [(0, 10)], TypeError, id="plain tuple part"),
        pytest.param(head(10), [Slice(len(DATA) - 5, 10)], ValueError, id="slice past the end"),
    ],
)
def test_bad_offers_raise_and_close_the_file(
    data_file: Path, bad_head: bytes, body: object, error: type[Exception]
) -> None:
    async def main() -> None:
        async with sidecar() as sc:
            f = open(data_file, "rb")
            parts = None if body == "file" else body
            with pytest.raises(error):
                sc.offer(bad_head, FileBody(f, parts))  # type: ignore[arg-type]
            assert f.closed and sc.stats.offers_pending == 0

    run(main())


def test_response_head_refuses_field_injection() -> None:
    assert response_head(200, "OK", [("A", "1")]) == b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\n"
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        response_head(200, "OK", [("A", "1\r\nSet-Cookie: x")])


def test_targets_and_peers() -> None:
    assert _token_of("/abc") == "abc"
    assert _token_of("/abc?x=1") == "abc"
    assert _token_of("http://127.0.0.1:8/abc") == "abc"
    assert [_is_loopback(p) for p in [("127.0.0.1", 1), ("::1", 1, 0, 0), ("10.0.0.1", 1), None]] == [
        True,
        True,
        False,
        False,
    ]


# --- growing files ------------------------------------------------------------------------------------


async def write_slowly(path: Path, progress: Progress, data: bytes, *, abort_at: int | None = None) -> None:
    """A leader's tee: unbuffered writes in uneven chunks, yielding between them."""
    rng = random.Random(3)
    with open(path, "ab", buffering=0) as f:
        done = progress.available
        while done < len(data):
            if abort_at is not None and done >= abort_at:
                progress.finish(False)
                return
            n = rng.randint(1, 40_000)
            f.write(data[done : done + n])
            done = min(done + n, len(data))
            progress.advance(done)
            await asyncio.sleep(0)
    progress.finish(True)


def test_growing_file_reader_starts_before_the_writer_finishes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "part"

    async def main() -> None:
        async with sidecar() as sc:
            with open(path, "wb", buffering=0) as f:
                f.write(DATA[:1000])
            progress = Progress(length=len(DATA))
            progress.advance(1000)
            token = sc.offer(head(len(DATA)), GrowingBody(str(path), progress))
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.port)
            writer.write(f"GET /{token} HTTP/1.1\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            first = await reader.readexactly(1000)
            assert first == DATA[:1000] and not progress.done
            await write_slowly(path, progress, DATA)
            assert first + await reader.readexactly(len(DATA) - 1000) == DATA
            writer.close()
            await until(lambda: sc.stats.transfers_done == 1)

    run(main())


def test_growing_file_abort_is_a_failed_transfer(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "part"
    path.touch()

    async def main() -> None:
        async with sidecar() as sc:
            progress = Progress(length=len(DATA))
            token = sc.offer(head(len(DATA)), GrowingBody(str(path), progress))
            reply, _ = await asyncio.gather(
                fetch(sc.port, token), write_slowly(path, progress, DATA, abort_at=len(DATA) // 2)
            )
            assert not reply.complete and len(reply.body) < len(DATA)
            assert reply.body == DATA[: len(reply.body)]
            assert sc.stats.transfers_failed == 1

    run(main())


def test_range_on_a_growing_file_waits_for_its_bytes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "part"
    path.touch()
    partial = parse_range("bytes=290000-290099,5-9", len(DATA))
    assert isinstance(partial, Partial)
    layout = partial_body(partial, len(DATA), None, "sep")

    async def main() -> None:
        async with sidecar() as sc:
            progress = Progress(length=len(DATA))
            h = response_head(206, "Partial Content", layout.headers)
            token = sc.offer(h, GrowingBody(path, progress, layout.parts))
            reply, _ = await asyncio.gather(fetch(sc.port, token), write_slowly(path, progress, DATA))
            assert reply.complete and reply.body == assemble(layout, DATA)

    run(main())


def test_twenty_readers_of_one_growing_file(tmp_path: Path) -> None:
    path = tmp_path / "part"
    path.touch()
    data = random.Random(5).randbytes(3 * MiB + 17)

    async def main() -> None:
        async with sidecar() as sc:
            progress = Progress(length=len(data))
            tokens = [sc.offer(head(len(data)), GrowingBody(path, progress)) for _ in range(20)]
            replies = await asyncio.gather(
                *(fetch(sc.port, t) for t in tokens), write_slowly(path, progress, data)
            )
            assert [r.body == data for r in replies[:-1]] == [True] * 20
            await until(lambda: sc.stats.transfers_done == 20)

    run(main())


def test_a_stalled_writer_cuts_the_reader_off(tmp_path: Path) -> None:
    path = tmp_path / "part"
    path.write_bytes(DATA[:10])

    async def main() -> None:
        async with sidecar(stall_timeout=0.2) as sc:
            progress = Progress(length=len(DATA))
            progress.advance(10)
            reply = await fetch(sc.port, sc.offer(head(len(DATA)), GrowingBody(path, progress)))
            assert not reply.complete and reply.body == DATA[:10]

    run(main())


def test_close_cuts_waiting_readers_and_closes_files(tmp_path: Path) -> None:
    path = tmp_path / "part"
    path.touch()

    async def main() -> None:
        sc = Sidecar()
        await sc.start()
        f = open(path, "rb")
        task = asyncio.create_task(fetch(sc.port, sc.offer(head(10), GrowingBody(f, Progress(10)))))
        await until(lambda: sc.stats.transfers_active == 1)
        await sc.close()
        assert f.closed and not (await task).complete
        g = open(path, "rb")
        with pytest.raises(RuntimeError):
            sc.offer(head(0), FileBody(g))
        assert g.closed

    run(main())


# --- memory -------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@pytest.mark.parametrize("size", [pytest.param(200 * MiB, id="200MiB")])
def test_memory_stays_flat_for_a_slow_reader(tmp_path: Path, mode: str, size: int) -> None:
    if mode == "fallback":
        size = 64 * MiB  # asyncio's fallback reads 16 KiB per executor call: slow, so a smaller file
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(size)

    async def main() -> None:
        async with sidecar() as sc:
            token = sc.offer(head(size), FileBody(str(path)))
            reset = _reset_peak()
            rss0 = _status_kib("VmRSS")
            peak = rss0
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.port, limit=64 * 1024)
            writer.write(f"GET /{token} HTTP/1.1\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            got = 0
            while got < size:
                chunk = await reader.read(64 * 1024)
                assert chunk
                got += len(chunk)
                if got % (4 * MiB) < len(chunk):  # a slow client: pause every 4 MiB
                    await asyncio.sleep(0.005)
                    peak = max(peak, _status_kib("VmRSS"))
            elapsed = time.perf_counter() - started
            writer.close()
            if reset:
                peak = max(peak, _status_kib("VmHWM"))
            growth = (peak - rss0) / 1024
            print(
                f"\n{mode}: {size // MiB} MiB in {elapsed:.2f} s = {size / MiB / elapsed:.0f} MiB/s, ", end=""
            )
            print(f"RSS growth {growth:.1f} MiB (peak {'VmHWM' if reset else 'sampled VmRSS'})")
            assert growth < 32

    run(main())
