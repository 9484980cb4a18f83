"""The runtime file: how the running proxy was started, so `fwdproxy env` and `fwdproxy cache` can find it.

`fwdproxy run` writes one small JSON file per running proxy when it listens, in two places: the cache dir
(``<cache-dir>/fwdproxy.run.json``, found by whoever knows the cache dir) and a per-user directory
(``$XDG_RUNTIME_DIR/fwdproxy/`` or ``~/.cache/fwdproxy/run/``, one ``<host>_<port>.json`` per proxy, found by
``fwdproxy env`` with no arguments). A clean stop removes both; a file whose process is gone (kill -9, a
crash) is recognised as stale by its pid and ignored (and removed when found).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from fwdproxy import jsonfile

CACHE_DIR_NAME = "fwdproxy.run.json"
FORMAT = 1
"""Bumped when a field changes meaning; a file of another format is ignored (as if no proxy ran)."""


@dataclass(frozen=True, slots=True)
class Running:
    """One running proxy, as its runtime file tells it."""

    host: str
    """The address clients use: the listen host, or 127.0.0.1 for a wildcard listen address."""
    port: int
    admin_port: int
    """0 when the status page is off."""
    confdir: str
    ca: str
    """The CA certificate clients must trust (PEM)."""
    cache_dir: str
    pid: int
    """The process the user started (the supervisor with --workers)."""
    version: str
    started: float
    format: int = FORMAT

    @property
    def proxy_url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    def env_command(self) -> str:
        """The exact line that points a shell at this proxy (printed in the start banner)."""
        return f'eval "$(fwdproxy env --proxy {self.proxy_url} --confdir {_quote(self.confdir)})"'


def _quote(path: str) -> str:
    return shlex.quote(path)


def client_host(listen_host: str) -> str:
    """The address a local client reaches a listener on: loopback for a wildcard address."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen_host, listen_host)


def user_dir(environ: dict[str, str] | None = None) -> Path:
    """Where runtime files are found without knowing the cache dir."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "fwdproxy"
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "fwdproxy" / "run"


def paths(running: Running, environ: dict[str, str] | None = None) -> tuple[Path, Path]:
    """The two files for ``running``: in its cache dir, and in the per-user directory."""
    safe_host = running.host.replace(":", "_").replace("/", "_")
    return (
        Path(os.path.expanduser(running.cache_dir)) / CACHE_DIR_NAME,
        user_dir(environ) / f"{safe_host}_{running.port}.json",
    )


def write(running: Running, environ: dict[str, str] | None = None) -> list[Path]:
    """Write both files atomically; returns those written (a directory we cannot write is skipped)."""
    written = []
    for path in paths(running, environ):
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            jsonfile.write_atomically(path, asdict(running), indent=1)
            written.append(path)
        except OSError:
            continue
    return written


def remove(running: Running, environ: dict[str, str] | None = None) -> None:
    """Remove both files if they are still this process's (another proxy may have taken the port since)."""
    for path in paths(running, environ):
        found = read(path, alive=lambda pid: True)
        if found is not None and found.pid == running.pid:
            path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def read(path: Path, alive: Callable[[int], bool] = pid_alive) -> Running | None:
    """The proxy a runtime file describes, or None (missing, unreadable, another format, or stale)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        running = Running(**data)
    except (OSError, ValueError, TypeError):
        return None
    if running.format != FORMAT or not isinstance(running.pid, int):
        return None
    if not alive(running.pid):
        path.unlink(missing_ok=True)  # stale: its process is gone (kill -9, a crash)
        return None
    return running


def find(environ: dict[str, str] | None = None, alive: Callable[[int], bool] = pid_alive) -> list[Running]:
    """Every running proxy in the per-user directory, the most recently started first."""
    directory = user_dir(environ)
    try:
        files = sorted(directory.glob("*.json"))
    except OSError:
        return []
    found = [r for p in files if (r := read(p, alive)) is not None]
    return sorted(found, key=lambda r: r.started, reverse=True)


def in_cache_dir(cache_dir: str, alive: Callable[[int], bool] = pid_alive) -> Running | None:
    """The proxy running on ``cache_dir``, if any."""
    return read(Path(os.path.expanduser(cache_dir)) / CACHE_DIR_NAME, alive)


def describe(running: Running, now: float) -> str:
    """One line naming a running proxy, for stderr."""
    age = now - running.started
    return (
        f"{running.proxy_url} (pid {running.pid}, fwdproxy {running.version}, up {int(age)}s, "
        f"confdir {running.confdir}, cache {running.cache_dir})"
    )


def banner(running: Running) -> list[str]:
    """What the start banner says after the listening line: the CA and how to point a shell at the proxy."""
    return [
        f"CA certificate (trust it to cache HTTPS): {running.ca}",
        f"set up this shell (pip, npm, curl, git, cargo, apt …): {running.env_command()}",
        f"try: curl -x {running.proxy_url} --cacert {_quote(running.ca)} https://example.org/",
    ]


def listen_failure(host: str, port: int) -> str:
    """Why ``host:port`` cannot be listened on, in one sentence (after a listener failed to bind)."""
    shown = f"{client_host(host) if host in ('', '0.0.0.0', '::') else host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return f"{shown} is already in use (another fwdproxy? pick --listen-port)"
        return f"cannot listen on {shown}: {e.strerror or e}"
    return f"cannot listen on {shown}"
