"""``fwdproxy run --workers N``: several processes on one port and one cache, stopped together."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO, Origin, Proxy, Reply, client, fwdproxy_argv, run_cli

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")


def workers_of(proxy: Proxy) -> list[int]:
    pid = proxy.proc.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def connections_per_worker(proxy: Proxy) -> dict[int, int]:
    """Established client connections on the proxy port held by each worker (from /proc/net/tcp)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == proxy.port and fields[3] == "01":  # ESTABLISHED
                inodes.add(fields[9])
    counts = {}
    for pid in workers_of(proxy):
        fds = Path(f"/proc/{pid}/fd")
        targets = {os.readlink(fd) for fd in fds.iterdir() if fd.name.isdigit()}
        counts[pid] = sum(f"socket:[{i}]" in targets for i in inodes)
    return counts


def get(sock: socket.socket, url: str) -> tuple[int, dict[str, str], bytes]:
    """One absolute-form GET on a keep-alive connection; status, headers, body."""
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return read_response(sock)


def test_two_workers_share_the_port_the_load_and_the_cache(start_proxy, origin: Origin) -> None:
    url = origin.route("/shared", Reply(200, {"Cache-Control": "max-age=600"}, b"stored once"))
    proxy = start_proxy("--workers", "2")
    pids = workers_of(proxy)
    assert len(pids) == 2
    socks = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(24)]
    try:
        answers = [get(s, url) for s in socks]
        assert all(status == 200 and body == b"stored once" for status, _, body in answers)
        counts = connections_per_worker(proxy)
        assert sorted(counts) == sorted(pids) and all(n > 0 for n in counts.values()), counts
        assert sum(counts.values()) == 24
        # One origin request: after the first commit every worker answers from the shared disk tier
        # (a worker that started its fetch before it could be seen would add one; none does here since
        # the requests ran one after another).
        assert origin.hits["/shared"] == 1
        assert sum("hit" in h["cache-status"].split(";")[1] for _, h, _ in answers) == 23
    finally:
        for s in socks:
            s.close()


def test_sigterm_stops_every_worker_and_exits_zero(start_proxy) -> None:
    proxy = start_proxy("--workers", "2")
    pids = workers_of(proxy)
    assert proxy.stop() == 0
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)
    assert "Traceback" not in proxy.stderr_path.read_text()


def test_a_dead_worker_is_replaced(start_proxy, origin: Origin) -> None:
    url = origin.route("/after", Reply(200, {}, b"still here"))
    proxy = start_proxy("--workers", "2")
    victim = workers_of(proxy)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = workers_of(proxy)
        if len(now) == 2 and victim not in now and "starting a new one" in proxy.log():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"no replacement worker: {workers_of(proxy)}\n{proxy.log()}")
    assert f"pid {victim}) exited with status -9" in proxy.log()
    time.sleep(1)  # the replacement prints its listening line to the supervisor once it listens
    for _ in range(6):  # fresh connections, so both workers (the new one too) are asked
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            assert get(s, url)[2] == b"still here"
    assert proxy.stop() == 0


def test_killing_the_supervisor_leaves_no_worker_behind(start_proxy) -> None:
    proxy = start_proxy("--workers", "2")
    pids = workers_of(proxy)
    proxy.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)  # Linux PR_SET_PDEATHSIG: they got SIGTERM


def test_stdout_is_one_line_with_the_real_port(tmp_path: Path, confdir: Path) -> None:
    argv = fwdproxy_argv(
        "run", "--workers", "2", "--listen-port", "0", "--admin-port", "0",
        "--cache-dir", str(tmp_path / "cache"), "--confdir", str(confdir),
    )  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert re.fullmatch(r"fwdproxy listening at 127\.0\.0\.1:[1-9][0-9]*\n", first), first
        proc.send_signal(signal.SIGINT)  # as Ctrl-C, to the supervisor alone
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rest == "" and proc.returncode == 0


def test_busy_port_with_workers_exits_nonzero(start_proxy, tmp_path: Path, confdir: Path) -> None:
    first = start_proxy()
    out = run_cli(
        "run", "--workers", "2", "--listen-port", str(first.port), "--admin-port", "0",
        "--cache-dir", str(tmp_path / "c2"), "--confdir", str(confdir),
    )  # fmt: skip
    assert out.returncode == 1
    assert (
        "is already in use (another fwdproxy? pick --listen-port)" in out.stderr
        and "listening at" not in out.stdout
    )


def test_bad_worker_count_is_one_clear_line(tmp_path: Path) -> None:
    out = run_cli("run", "--listen-port", "0", "--cache-dir", str(tmp_path), "--workers", "many")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "fwdproxy: --workers: 'many' is not a number of workers; try e.g. 2, or auto for one per core"
    )


def test_a_crowd_across_workers_makes_one_origin_request(start_proxy, origin: Origin) -> None:
    block = b"z" * 65536

    def slow() -> Iterator[bytes]:
        for _ in range(32):  # 2 MiB over about a second: above --stream-threshold, so it streams
            time.sleep(0.03)
            yield block

    url = origin.route("/crowd", Reply(200, {"Cache-Control": "max-age=600"}, chunks=slow, length=32 * 65536))
    proxy = start_proxy("--workers", "2")
    socks = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(12)]
    try:
        for s in socks:
            s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.3)
        counts = connections_per_worker(proxy)
        assert all(n > 0 for n in counts.values()), counts  # the crowd reached both workers
        bodies = [read_response(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert all(status == 200 and len(body) == 32 * 65536 for status, _, body in bodies)
    assert origin.hits["/crowd"] == 1


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The next response on a keep-alive connection: status, headers, body (Content-Length framed)."""
    reader = sock.makefile("rb")
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, reader.read(int(headers["content-length"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def admin_get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", trust_env=False, timeout=10)


def requests_in_metrics(port: int) -> float:
    text = admin_get(port, "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return sum(s.value for s in families["fwdproxy_requests"].samples if s.name == "fwdproxy_requests_total")


def settle(admin: int, log: Path, expected: int) -> dict:
    """/stats.json once it and the access log both count ``expected`` requests (workers write each second)."""
    deadline = time.monotonic() + 15
    while True:
        stats = admin_get(admin, "/stats.json").json()
        lines = len(log.read_text().splitlines()) if log.exists() else 0
        if stats["requests"]["total"] == lines == expected and all(
            w["open_connections"] == 0 for w in stats["workers"]
        ):
            return stats
        if time.monotonic() > deadline:
            pytest.fail(
                f"stats {stats['requests']['total']} / {stats['workers']}, log {lines}, expected {expected}"
            )
        time.sleep(0.2)


def test_every_worker_is_counted_and_the_counts_survive_a_replacement(
    start_proxy, origin: Origin, tmp_path: Path
) -> None:
    cached = origin.route("/kept", Reply(200, {"Cache-Control": "max-age=600"}, b"kept"))
    passed = origin.route("/passed", Reply(200, {"Cache-Control": "no-store"}, b"passed"))
    admin, log = free_port(), tmp_path / "access.log"
    proxy = start_proxy("--workers", "2", "--admin-port", str(admin), "--access-log", str(log))

    def fresh_connections(n: int) -> int:
        hits = 0
        for i in range(n):  # a new connection (a new client port) each: the kernel spreads them
            with socket.create_connection(("127.0.0.1", proxy.port)) as s:
                status, headers, body = get(s, cached if i % 3 else passed)
                assert status == 200 and body in (b"kept", b"passed")
                hits += "hit" in headers["cache-status"].split(";")[1]
        return hits

    hits = fresh_connections(40)
    stats = settle(admin, log, 40)
    assert stats["worker_count"] == 2
    rows = {w["worker"]: w for w in stats["workers"]}
    assert sorted(rows) == [1, 2] and all(w["requests"] > 0 for w in rows.values()), rows
    assert sum(w["requests"] for w in rows.values()) == 40
    assert {w["pid"] for w in rows.values()} == set(workers_of(proxy))
    assert stats["hits"] == hits and stats["served_from_cache"] == hits > 0
    assert sum(m["requests"] for m in stats["timeline"]) == 40
    assert stats["top_hosts"][0]["requests"] == hits
    assert requests_in_metrics(admin) == 40
    assert stats["cache"]["memory"]["limit"] == 2 * 256 * 2**20, "each worker's memory tier, added up"
    page = admin_get(admin, "/").text
    assert 'data-workers="2"' in page and 'id="requests-total" data-value="40"' in page

    victim = rows[2]["pid"]
    before = rows[2]["requests"]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        stats = admin_get(admin, "/stats.json").json()
        assert stats["requests"]["total"] >= 40, "the totals went down when a worker died"
        now = {w["worker"]: w for w in stats["workers"]}
        if now.get(2, {}).get("pid") not in (None, victim):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no replacement for worker 2: {stats['workers']}\n{proxy.log()}")
        time.sleep(0.2)
    assert now[2]["requests"] >= before, "the replacement starts from its predecessor's counts"
    hits += fresh_connections(20)
    stats = settle(admin, log, 60)
    assert stats["hits"] == hits and requests_in_metrics(admin) == 60
    assert {w["pid"] for w in stats["workers"]} == set(workers_of(proxy))

    # Worker 1 serves the admin port from its live counters; its file catches up within a second.
    time.sleep(1.5)
    first = {w["worker"]: w for w in stats["workers"]}[1]["pid"]
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            stats = admin_get(admin, "/stats.json").json()
        except httpx.TransportError:
            stats = None  # the admin port is down until worker 1's replacement listens
        if stats is not None:
            assert stats["requests"]["total"] == 60, "the totals changed when the admin worker died"
            if {w["worker"]: w for w in stats["workers"]}[1]["pid"] != first:
                break
        if time.monotonic() > deadline:
            pytest.fail(f"no replacement for worker 1: {stats}\n{proxy.log()}")
        time.sleep(0.2)
    assert stats["hits"] == hits and requests_in_metrics(admin) == 60


def test_intercepted_https_across_workers_is_counted_once_per_request(
    start_proxy, tls_origin: Origin, proxy_ca_file: Path, tmp_path: Path
) -> None:
    url = tls_origin.route("/tls", Reply(200, {"Cache-Control": "max-age=600"}, b"secret but cacheable"))
    admin, log = free_port(), tmp_path / "access.log"
    proxy = start_proxy(
        "--workers", "2", "--admin-port", str(admin), "--access-log", str(log),
        "--connect-port", str(tls_origin.port),
    )  # fmt: skip
    for _ in range(12):  # one CONNECT tunnel each, two requests inside it
        with client(proxy, proxy_ca_file) as c:
            assert [c.get(url).content for _ in range(2)] == [b"secret but cacheable"] * 2
    deadline = time.monotonic() + 15
    while True:
        stats = admin_get(admin, "/stats.json").json()
        lines = log.read_text().splitlines() if log.exists() else []
        # The access log also has one NONE_NONE line per intercepted CONNECT; the counters count requests.
        requests = [line for line in lines if " CONNECT " not in line]
        if stats["requests"]["total"] == len(requests) == 24 and len(lines) == 36:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"stats {stats['requests']} {stats['workers']}; log:\n" + "\n".join(lines))
        time.sleep(0.2)
    assert all(w["requests"] > 0 for w in stats["workers"]), stats["workers"]
    assert stats["served_from_cache"] == sum(" TCP_HIT/" in line for line in requests) == 23
