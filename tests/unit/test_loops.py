"""fwdproxy.loops: which loop `fwdproxy run` gets, mitmproxy's eager task factory on uvloop, and the body
copy that stands in for `loop.sendfile` where uvloop has none."""

from __future__ import annotations

import asyncio
import tempfile

import pytest

from fwdproxy import bodysource, cli, loops


def test_auto_is_uvloop_when_installed_else_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loops.chosen("auto") == "uvloop"  # a dependency of the project: installed in this venv
    assert loops.chosen("uvloop") == "uvloop"
    assert loops.chosen("asyncio") == "asyncio"
    monkeypatch.setattr(loops, "_uvloop", lambda: None)
    assert loops.chosen("auto") == "asyncio"
    assert loops.loop_factory("auto") is None
    with pytest.raises(ValueError, match="uvloop is not installed"):
        loops.chosen("uvloop")
    with pytest.raises(ValueError, match="one of auto, uvloop, asyncio"):
        loops.chosen("libev")


def test_run_refuses_to_start_when_uvloop_is_asked_for_and_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    monkeypatch.setattr(loops, "_uvloop", lambda: None)
    status = cli.main(
        ["run", "--event-loop", "uvloop", "--cache-dir", str(tmp_path / "c"), "--listen-port", "0"]
    )
    assert status == 2
    assert "--event-loop uvloop: uvloop is not installed" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # refused before anything was made


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_the_loop_runs_mitmproxys_eager_task_factory(kind: str) -> None:
    """mitmproxy's Master.run sets asyncio.eager_task_factory; on uvloop that must not fail, and tasks start
    eagerly (a task that never waits is done as soon as create_task returns)."""

    async def main() -> tuple[str, bool, bool, int]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        ran: list[int] = []

        async def quick() -> int:
            ran.append(1)
            return 7

        task = asyncio.create_task(quick(), name="quick")
        done_at_once = task.done()
        named = task.get_name() == "quick"
        loop.set_task_factory(None)
        return loops.running(), done_at_once, named, await task + len(ran)

    running, done_at_once, named, result = loops.run(main(), kind)
    assert running == kind
    assert done_at_once
    assert named
    assert result == 8


def test_bodies_reach_the_client_whole_on_a_loop_without_sendfile() -> None:
    """On uvloop `loop.sendfile` raises NotImplementedError: a slice goes out through memory, from its offset."""
    data = bytes(range(256)) * 4096  # 1 MiB, every offset distinguishable

    async def main() -> bytes:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        with tempfile.TemporaryFile() as f:
            f.write(data)
            f.flush()

            async def serve(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                offset, end = 1000, len(data) - 3
                while offset < end:
                    offset += await bodysource._sendfile(w, f, offset, end - offset)  # noqa: SLF001
                w.close()

            server = await asyncio.start_server(serve, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            got.set_result(await reader.read())
            writer.close()
            server.close()
        return await got

    assert loops.run(main(), "uvloop") == data[1000:-3]
