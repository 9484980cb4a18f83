"""Body sources without sockets: parts to spans, ownership of files, and Progress."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from fwdproxy.bodysource import FileBody, GrowingBody, Progress, Slice, _spans
from fwdproxy.ranges import ByteRange


@pytest.mark.parametrize(
    "parts, size, expected",
    [
        pytest.param(None, 10, [Slice(0, 10)], id="whole file"),
        pytest.param(None, 0, [], id="empty file sends nothing"),
        pytest.param([ByteRange(5, 9)], 10, [Slice(5, 5)], id="ByteRange is inclusive"),
        pytest.param(
            [b"--a\r\n", ByteRange(0, 0), b""], 10, [b"--a\r\n", Slice(0, 1)], id="empty parts dropped"
        ),
        pytest.param([Slice(3, 0), Slice(3, 2)], 10, [Slice(3, 2)], id="zero-length slice dropped"),
    ],
)
def test_spans(
    parts: list[bytes | ByteRange | Slice] | None, size: int, expected: list[bytes | Slice]
) -> None:
    assert _spans(parts, size) == expected


@pytest.mark.parametrize(
    "part, error",
    [
        pytest.param((0, 10), TypeError, id="a plain tuple is ambiguous: (start, end) or (offset, length)?"),
        pytest.param(Slice(-1, 2), ValueError, id="negative offset"),
        pytest.param("text", TypeError, id="str"),
    ],
)
def test_bad_parts(part: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        _spans([part], 10)  # type: ignore[list-item]


def test_open_returns_the_length_and_close_closes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    f = open(path, "rb")
    body = FileBody(f, [b"ab", ByteRange(2, 4)])
    assert body.open() == 5
    body.close()
    assert f.closed
    with pytest.raises(RuntimeError, match="once"):
        body.open()


def test_an_unopened_descriptor_is_closed_too(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.touch()
    fd = os.open(path, os.O_RDONLY)
    FileBody(fd).close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_growing_body_needs_a_length_or_parts(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.touch()
    for progress, parts, error in [
        (Progress(), None, "needs Progress"),
        (Progress(50), [ByteRange(40, 59)], "past"),
    ]:
        body = GrowingBody(path, progress, parts)
        with pytest.raises(ValueError, match=error):
            body.open()
        body.close()
    body = GrowingBody(path, Progress(), [ByteRange(100, 199)])
    assert body.open() == 100  # the length is unknown yet: the slice will wait for its bytes
    body.close()


def test_progress_is_absolute_monotonic_and_finishes_once() -> None:
    async def main() -> None:
        p = Progress()
        waiter = asyncio.create_task(p.wait())
        await asyncio.sleep(0)
        p.advance(10)
        p.advance(5)  # a stale total is ignored
        await waiter
        assert p.available == 10 and not p.done
        waiter = asyncio.create_task(p.wait())
        await asyncio.sleep(0)
        p.finish(False)
        p.finish(True)  # the first word counts
        await waiter
        assert p.failed and p.done and not p.ok

    asyncio.run(main())


def test_progress_without_waiters_needs_no_loop() -> None:
    """The tee calls advance from plain synchronous code; no event loop has to be running."""
    p = Progress(3)
    p.advance(1)
    p.advance(3)
    p.finish(True)
    assert (p.available, p.done, p.failed) == (3, True, False)
