"""``--workers N``: N proxy processes on one listening port and one cache directory, and their supervisor.

The supervisor (the process the user started) reserves the port by binding a SO_REUSEPORT socket that
never listens (so it learns the real port for ``--listen-port 0`` and keeps it while workers come and
go), then starts N workers (``python -m fwdproxy.workers``, settings on stdin). Each worker is a whole
proxy whose listener joins the same SO_REUSEPORT group (addons/_mitm/sharedport.py); the kernel spreads new
connections over the listening sockets by a hash of the client's address and port. Only the
supervisor prints ``fwdproxy listening at HOST:PORT``, once every worker listens.

SIGINT/SIGTERM stop every worker (SIGTERM, then SIGKILL after STOP_GRACE) and exit 0; a second signal
makes them exit at once. A worker that dies is logged and replaced; one that fails while starting, or RESTART_LIMIT deaths within
RESTART_WINDOW, stop them all with exit status 1. Workers also get SIGTERM if the supervisor itself is
killed (Linux PR_SET_PDEATHSIG), so none is left behind.

What is per process: the memory tier, the sidecar; statistics are per process too, but each worker
leaves its counters in the cache directory so the status page adds them all up (workerstats). The disk tier and its generation marks
are shared, so an entry committed by one worker is a hit in every other, and a purge anywhere takes
effect everywhere at the next lookup. Collapsing crosses processes through the cache's per-key lock
files (inflight.KeyLocks): a follower in another worker waits for the commit, then reads the entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from fwdproxy import __version__, runtime, workerstats
from fwdproxy.config import Settings

log = logging.getLogger("fwdproxy")

STOP_GRACE = 10.0
"""Seconds a worker has, beyond --shutdown-grace, to exit after SIGTERM before it is killed."""
START_TIMEOUT = 60.0
"""Seconds a worker may take to start listening (imports, CA, opening the cache) before it counts as failed."""
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
"""More than RESTART_LIMIT worker deaths within this many seconds mean something is wrong: stop."""
LISTENING = "fwdproxy listening at "


def reserve(host: str, port: int) -> socket.socket:
    """A bound, never listening SO_REUSEPORT socket holding the port for the workers.

    Raises:
        OSError: the port is taken (also when another process of ours listens there already: a
        SO_REUSEPORT group would otherwise quietly share its traffic with us).
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    if port:
        probe = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, str(address[0]))
        with socket.socket(socket.AF_INET6 if ":" in probe else socket.AF_INET, kind) as s:
            s.settimeout(1.0)
            if s.connect_ex((probe, port)) == 0:
                raise OSError(f"something already listens on {probe}:{port}")
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(eq=False)
class Worker:
    """One running worker process."""

    index: int
    proc: asyncio.subprocess.Process
    listening: asyncio.Future[str]
    """Resolves to the worker's HOST:PORT once it listens."""


class Supervisor:
    """Starts, watches, replaces and stops the workers."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.workers: dict[int, Worker] = {}
        self.stopping = asyncio.Event()
        self.deaths: list[float] = []

    def stop_signal(self) -> None:
        """The first SIGINT/SIGTERM stops the workers gracefully; another one makes them exit at once."""
        if self.stopping.is_set():
            for worker in self.workers.values():  # a worker exits at once on its second signal
                if worker.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.send_signal(signal.SIGTERM)
        self.stopping.set()

    def worker_settings(self, index: int, port: int) -> Settings:
        """The settings of worker ``index`` (1-based): this port, one process, one status page."""
        s = dataclasses.replace(
            self.settings, listen_port=port, workers=1, worker=index, worker_run=str(os.getpid())
        )
        if index > 1 and "admin_port" in {f.name for f in dataclasses.fields(s)}:
            # One status page (worker 1's); it adds up every worker's counters (workerstats).
            off: dict[str, Any] = {"admin_port": 0}
            s = dataclasses.replace(s, **off)
        return s

    async def spawn(self, index: int, port: int) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fwdproxy.workers",
            str(index),
            str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Its own session: a terminal's Ctrl-C reaches the supervisor alone, which passes on exactly
            # one SIGTERM (a second signal would cut the worker's graceful stop short).
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(pickle.dumps(self.worker_settings(index, port)))
        await proc.stdin.drain()
        proc.stdin.close()
        worker = Worker(index, proc, asyncio.get_running_loop().create_future())
        asyncio.get_running_loop().create_task(self._read(worker))
        self.workers[index] = worker
        return worker

    async def _read(self, worker: Worker) -> None:
        assert worker.proc.stdout is not None
        while line := await worker.proc.stdout.readline():
            text = line.decode(errors="replace").strip()
            if text.startswith(LISTENING) and not worker.listening.done():
                worker.listening.set_result(text.removeprefix(LISTENING))
            elif text:
                print(text, flush=True)  # anything else a worker prints is the user's to see
        if not worker.listening.done():
            worker.listening.set_result("")

    async def start_all(self, port: int) -> str | None:
        """Start every worker; their common HOST:PORT, or None (all stopped again) when one failed."""
        started = [await self.spawn(i, port) for i in range(1, self.count + 1)]
        try:
            addresses = await asyncio.wait_for(asyncio.gather(*(w.listening for w in started)), START_TIMEOUT)
        except TimeoutError:
            addresses = [""]
        if all(addresses) and len(set(addresses)) == 1:
            return addresses[0]
        log.error("a worker could not start (its log is above); stopping the others")
        await self.stop_all()
        return None

    async def watch(self, port: int) -> int:
        """Replace workers that die until asked to stop; the exit status."""
        while not self.stopping.is_set():
            waits = {asyncio.ensure_future(w.proc.wait()): w for w in self.workers.values()}
            stop = asyncio.ensure_future(self.stopping.wait())
            done, _ = await asyncio.wait([*waits, stop], return_when=asyncio.FIRST_COMPLETED)
            for fut in waits:
                fut.cancel()
            stop.cancel()
            if self.stopping.is_set():
                break
            for fut in done:
                if fut is stop:
                    continue
                worker = waits[fut]
                if self._too_many_deaths():
                    log.error(
                        "worker %d (pid %d) exited with status %s; %d workers died within %gs, stopping",
                        worker.index, worker.proc.pid, worker.proc.returncode, RESTART_LIMIT + 1, RESTART_WINDOW,
                    )  # fmt: skip
                    await self.stop_all()
                    return 1
                log.warning(
                    "worker %d (pid %d) exited with status %s; starting a new one",
                    worker.index, worker.proc.pid, worker.proc.returncode,
                )  # fmt: skip
                replacement = await self.spawn(worker.index, port)
                try:
                    ok = await asyncio.wait_for(asyncio.shield(replacement.listening), START_TIMEOUT)
                except TimeoutError:
                    ok = ""
                if not ok and not self.stopping.is_set():
                    log.error("the new worker %d could not start; stopping", worker.index)
                    await self.stop_all()
                    return 1
        await self.stop_all()
        return 0

    def _too_many_deaths(self) -> bool:
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW] + [now]
        return len(self.deaths) > RESTART_LIMIT

    async def stop_all(self) -> None:
        """SIGTERM every worker, SIGKILL those still running after --shutdown-grace plus STOP_GRACE, and reap
        them all (each worker lets its requests in flight finish for --shutdown-grace, see addons/lifecycle.py)."""
        running = [w.proc for w in self.workers.values() if w.proc.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        limit = self.settings.shutdown_grace + STOP_GRACE
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), limit)
        except TimeoutError:
            for proc in running:
                if proc.returncode is None:
                    log.warning("worker pid %d did not stop within %gs; killing it", proc.pid, limit)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in running))


async def supervise(s: Settings, count: int) -> int:
    """Run ``count`` workers on one port until SIGINT/SIGTERM; 0 after a clean stop, else 1."""
    try:
        reserved = reserve(s.listen_host, s.listen_port)
    except OSError as e:
        if e.errno in (None, errno.EADDRINUSE):  # reserve() found a listener there, or bind said so
            print(f"fwdproxy: {runtime.listen_failure(s.listen_host, s.listen_port)}", file=sys.stderr)
        else:
            print(
                f"fwdproxy: cannot listen on {s.listen_host}:{s.listen_port}: {e.strerror}", file=sys.stderr
            )
        return 1
    supervisor = Supervisor(s, count)
    me: runtime.Running | None = None
    workerstats.remove_finished(s.cache_dir, runtime.pid_alive)  # counters of runs that are over
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.stop_signal)
    try:
        port = reserved.getsockname()[1]
        address = await supervisor.start_all(port)
        if address is None:
            return 1
        if supervisor.stopping.is_set():
            await supervisor.stop_all()
            return 0
        me = _running(s, address)
        runtime.write(me)  # before the listening line: whoever waits for it may run `fwdproxy env` at once
        print(f"{LISTENING}{address}", flush=True)
        for line in runtime.banner(me):
            log.info("%s", line)
        log.info("%d workers share port %d (pids %s)", count, port, ", ".join(
            str(w.proc.pid) for w in supervisor.workers.values()))  # fmt: skip
        return await supervisor.watch(port)
    finally:
        reserved.close()
        if me is not None:
            runtime.remove(me)
        shutil.rmtree(workerstats.run_dir(s.cache_dir, str(os.getpid())), ignore_errors=True)


def _running(s: Settings, address: str) -> runtime.Running:
    """The runtime file's record of this supervisor and its workers."""
    host, _, port = address.rpartition(":")
    confdir = os.path.expanduser(s.confdir)
    return runtime.Running(
        host=runtime.client_host(host),
        port=int(port),
        admin_port=s.admin_port,
        confdir=confdir,
        ca=os.path.join(confdir, "mitmproxy-ca-cert.pem"),
        cache_dir=os.path.expanduser(s.cache_dir),
        pid=os.getpid(),
        version=__version__,
        started=time.time(),
    )


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this process when the supervisor dies (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the supervisor died before prctl: do not run orphaned
        raise SystemExit(1)


def main(argv: list[str]) -> int:
    """Worker entry point: ``python -m fwdproxy.workers INDEX SUPERVISOR_PID`` with pickled Settings on stdin."""
    index, parent = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    settings: Settings = pickle.loads(sys.stdin.buffer.read())
    from fwdproxy import engine, logs, loops

    logs.setup(settings.quiet, settings.verbose, prefix=f"[w{index}]")
    return loops.run(engine.serve(settings, shared_port=True), settings.event_loop)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
