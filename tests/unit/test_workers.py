"""Worker counts and the port reservation of --workers (no proxies started here)."""

from __future__ import annotations

import socket

import pytest

from fwdproxy.config import from_file_and_flags, worker_count
from fwdproxy.workers import reserve


@pytest.mark.parametrize(
    "value, cores, expected",
    [("1", 8, 1), ("3", 8, 3), (4, 8, 4), ("auto", 8, 8), ("AUTO", None, 1), (" auto ", 2, 2)],
)
def test_worker_count(value: str | int, cores: int | None, expected: int) -> None:
    assert worker_count(value, cores) == expected


@pytest.mark.parametrize("value", ["0", "-2", "many", "2.5", ""])
def test_bad_worker_count(value: str) -> None:
    with pytest.raises(ValueError, match="number of workers"):
        worker_count(value, 4)


def test_settings_default_to_one_worker_and_read_the_toml_key(tmp_path) -> None:
    assert from_file_and_flags({}).workers == 1
    path = tmp_path / "f.toml"
    path.write_text('workers = "auto"\n')
    assert from_file_and_flags({"config": str(path)}).workers >= 1
    with pytest.raises(ValueError, match=r"f.toml: workers: 0 is not"):
        path.write_text("workers = 0\n")
        from_file_and_flags({"config": str(path)})


def test_reserve_holds_the_port_without_taking_connections() -> None:
    held = reserve("127.0.0.1", 0)
    port = held.getsockname()[1]
    try:
        assert port != 0
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # bound, not listening: refused
        joined = socket.socket()
        joined.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        joined.bind(("127.0.0.1", port))  # a worker's listener may join
        joined.listen()
        with pytest.raises(OSError, match="already listens"):
            reserve("127.0.0.1", port)  # but a second proxy on a port in use is refused
        joined.close()
    finally:
        held.close()
