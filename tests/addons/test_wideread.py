"""Wide reads from the sidecar: only marked addresses, whole buffers per read, and a real big hit uses them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from mitmproxy import connection, options
from mitmproxy.proxy import mode_specs, server

from fwdproxy import engine
from fwdproxy.config import Settings
from fwdproxy_addons import _mitm
from fwdproxy_addons._mitm import wideread as _wideread
from tests.support import Origin, Reply, pattern


class _Writer:
    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default


class _IO:
    def __init__(self, reader: object) -> None:
        self.reader = reader


def test_only_readers_of_marked_addresses_are_widened() -> None:
    async def main() -> None:
        _wideread.widen(("127.0.0.1", 1))
        try:
            table = _wideread._Transports()
            marked, other, client = asyncio.StreamReader(), asyncio.StreamReader(), asyncio.StreamReader()
            table[connection.Server(address=("127.0.0.1", 1))] = _IO(marked)
            table[connection.Server(address=("127.0.0.1", 2))] = _IO(other)
            table[connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 9))] = _IO(client)
            assert type(marked) is _wideread.WideReader
            assert type(other) is asyncio.StreamReader and type(client) is asyncio.StreamReader
        finally:
            _wideread.narrow(("127.0.0.1", 1))
        later = asyncio.StreamReader()
        _wideread._Transports()[connection.Server(address=("127.0.0.1", 1))] = _IO(later)
        assert type(later) is asyncio.StreamReader  # narrowed: the port may belong to someone else now

    asyncio.run(main())


def test_a_wide_read_takes_the_whole_buffer_and_keeps_the_other_forms() -> None:
    async def main() -> None:
        reader = asyncio.StreamReader(limit=64 * 1024)
        reader.__class__ = _wideread.WideReader
        data = pattern(300_000)
        reader.feed_data(data)
        assert await reader.read(65535) == data  # mitmproxy's bound, lifted
        assert await reader.read(0) == b""
        reader.feed_data(data[:10])
        reader.feed_eof()
        assert await reader.read(-1) == data[:10]  # read to EOF, as before
        assert await reader.read(65535) == b""

    asyncio.run(main())


def test_handlers_made_after_install_widen_their_connections() -> None:
    asyncio.run(_handler_after_install())


async def _handler_after_install() -> None:
    _mitm.install()
    init = server.ConnectionHandler.__init__
    _mitm.install()  # idempotent: one wrapper, not two
    assert server.ConnectionHandler.__init__ is init and getattr(init, "_fwd_patched", False)
    handler = server.SimpleConnectionHandler(
        asyncio.StreamReader(), _Writer(), options.Options(), mode_specs.ProxyMode.parse("regular"), {}
    )
    assert isinstance(handler.transports, _wideread._Transports)


@pytest.fixture
def proxy_in_process(tmp_path: Path, confdir: Path) -> Any:
    """`fwdproxy run`'s Master on its own thread and loop; yields its port."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            master, lifecycle = engine.build(
                Settings(listen_port=0, admin_port=0, cache_dir=str(tmp_path / "c"), confdir=str(confdir))
            )
            state["master"], state["loop"] = master, asyncio.get_running_loop()
            task = asyncio.create_task(master.run())
            while lifecycle.listening is None and not task.done():
                await asyncio.sleep(0.01)
            state["port"] = lifecycle.listening[1] if lifecycle.listening else None
            ready.set()
            await task

        try:
            asyncio.run(main())
        finally:
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60) and state.get("port"), "the in-process proxy did not start"
    yield state["port"]
    state["loop"].call_soon_threadsafe(state["master"].shutdown)
    thread.join(30)


def test_a_big_hit_reads_the_sidecar_in_wide_gulps(
    proxy_in_process: int, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real = _wideread.WideReader.read

    async def recording(self: _wideread.WideReader, n: int = -1) -> bytes:
        data = await real(self, n)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(_wideread.WideReader, "read", recording)
    body = pattern(24 * 1024 * 1024, seed=3)
    url = origin.route("/big", Reply(200, {"Cache-Control": "max-age=600"}, body))
    with httpx.Client(proxy=f"http://127.0.0.1:{proxy_in_process}", trust_env=False, timeout=60) as c:
        assert c.get(url).content == body
        assert not sizes  # the miss came from the origin, read as mitmproxy always reads
        hit = c.get(url)
    assert hit.content == body and hit.headers["Cache-Status"].startswith("fwdproxy; hit")
    assert origin.hits["/big"] == 1
    assert sum(sizes) >= len(body)  # every body byte came through wide reads
    assert max(sizes) > 65535  # and they were wider than mitmproxy's own
