"""The runtime file: written where `fwdproxy env` and `fwdproxy cache` look, stale when its process is gone."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from fwdproxy import runtime


def running(
    tmp_path: Path, pid: int | None = None, port: int = 3128, started: float = 100.0
) -> runtime.Running:
    return runtime.Running(
        host="127.0.0.1", port=port, admin_port=3129, confdir=str(tmp_path / "conf"),
        ca=str(tmp_path / "conf" / "mitmproxy-ca-cert.pem"), cache_dir=str(tmp_path / "cache"),
        pid=os.getpid() if pid is None else pid, version="0.1.0", started=started,
    )  # fmt: skip


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "xdg").mkdir()
    return {"XDG_RUNTIME_DIR": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_written_to_the_cache_dir_and_the_user_dir_and_read_back(tmp_path: Path, environ) -> None:
    me = running(tmp_path)
    written = runtime.write(me, environ)
    assert written == [
        tmp_path / "cache" / runtime.CACHE_DIR_NAME,
        tmp_path / "xdg" / "fwdproxy" / "127.0.0.1_3128.json",
    ]
    assert json.loads(written[1].read_text())["pid"] == os.getpid()
    assert runtime.find(environ) == [me]
    assert runtime.in_cache_dir(me.cache_dir) == me
    runtime.remove(me, environ)
    assert not any(p.exists() for p in written)
    assert runtime.find(environ) == []


def test_without_xdg_runtime_dir_the_user_dir_is_under_the_cache_home(tmp_path: Path) -> None:
    assert runtime.user_dir({"HOME": str(tmp_path)}) == tmp_path / ".cache" / "fwdproxy" / "run"
    assert runtime.user_dir({"XDG_RUNTIME_DIR": str(tmp_path / "missing"), "HOME": "/h"}) == Path(
        "/h/.cache/fwdproxy/run"
    )


def test_a_file_whose_process_is_gone_is_stale_and_removed(tmp_path: Path, environ) -> None:
    gone = running(tmp_path, pid=dead_pid())
    paths = runtime.write(gone, environ)
    assert runtime.find(environ) == []
    assert not paths[1].exists()  # removed when found stale
    assert runtime.in_cache_dir(gone.cache_dir) is None


def test_several_running_newest_first_and_garbage_ignored(tmp_path: Path, environ) -> None:
    old = running(tmp_path, port=1, started=1.0)
    new = running(tmp_path, port=2, started=2.0)
    runtime.write(old, environ)
    runtime.write(new, environ)
    (runtime.user_dir(environ) / "junk.json").write_text("{not json")
    (runtime.user_dir(environ) / "other.json").write_text(json.dumps({"format": 99}))
    assert runtime.find(environ) == [new, old]


def test_remove_leaves_another_process_file_alone(tmp_path: Path, environ) -> None:
    mine = running(tmp_path)
    theirs = running(tmp_path, pid=1)  # init: alive, and not us
    runtime.write(theirs, environ)
    runtime.remove(mine, environ)
    assert runtime.find(environ) == [theirs]


def test_env_command_and_banner_name_the_exact_proxy() -> None:
    me = runtime.Running("::1", 8080, 0, "/c d", "/c d/ca.pem", "/x", 1, "v", 0.0)
    assert me.proxy_url == "http://[::1]:8080"
    assert me.env_command() == """eval "$(fwdproxy env --proxy http://[::1]:8080 --confdir '/c d')\""""
    assert any(me.env_command() in line for line in runtime.banner(me))


@pytest.mark.parametrize(
    "listen, client", [("", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::", "::1"), ("10.1.2.3", "10.1.2.3")]
)
def test_client_host(listen: str, client: str) -> None:
    assert runtime.client_host(listen) == client


def test_listen_failure_names_a_port_in_use() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert runtime.listen_failure("127.0.0.1", port) == (
            f"127.0.0.1:{port} is already in use (another fwdproxy? pick --listen-port)"
        )
