"""Where ``--workers N`` processes leave their counters for each other: one small JSON file per worker.

Each worker writes its ``metrics.Stats.state()`` every STATS_EVERY seconds and when it stops, atomically, to
``<cache-dir>/stats/run-<supervisor pid>/worker-<index>.json``; whichever worker answers /, /stats.json or
/metrics adds the others' files to its own live counters. A replacement worker starts from its
predecessor's file, so a crash loses at most the last STATS_EVERY seconds of that worker's counts. The
directory is per run (the supervisor's pid), so a restarted proxy starts from zero as a single process
does; the supervisor removes the directories of runs that are over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fwdproxy import jsonfile
from fwdproxy.store import TierStats

STATS_EVERY = 1.0
"""Seconds between a worker's writes: the lag of the merged numbers, and what a SIGKILL can lose. One
small file a second costs nothing next to the traffic, and keeps request handling free of file I/O."""
SUBDIR = "stats"


def run_dir(cache_dir: str, run: str) -> Path:
    """The directory shared by the workers of one run (``run`` names it: the supervisor's pid)."""
    return Path(os.path.expanduser(cache_dir)) / SUBDIR / f"run-{run}"


def path_for(directory: Path, index: int) -> Path:
    """The file of worker ``index`` (1-based)."""
    return directory / f"worker-{index}.json"


@dataclass(frozen=True, slots=True)
class WorkerFile:
    """What one worker last wrote."""

    index: int
    pid: int
    updated: float
    """When it was written (Unix time)."""
    state: Mapping[str, Any]
    """Its ``Stats.state()``."""
    memory: TierStats | None = None
    """Its memory tier's occupancy (each worker has its own)."""


def write(
    path: Path,
    index: int,
    pid: int,
    updated: float,
    state: Mapping[str, Any],
    memory: TierStats | None = None,
) -> None:
    """Replace the worker's file atomically (readers see the old or the new one, never half).

    Raises:
        OSError: it cannot be written (the caller logs it; the next write tries again).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"worker": index, "pid": pid, "updated": updated, "stats": state}
    if memory is not None:
        doc["memory"] = dataclasses.asdict(memory)
    jsonfile.write_atomically(path, doc)


def read(path: Path) -> WorkerFile | None:
    """A worker's file; None when it is missing or unreadable (then that worker's counts are left out)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        memory = doc.get("memory")
        tier = None if memory is None else TierStats(**{k: int(v) for k, v in memory.items()})
        return WorkerFile(
            int(doc["worker"]), int(doc["pid"]), float(doc["updated"]), dict(doc["stats"]), tier
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def read_all(directory: Path) -> dict[int, WorkerFile]:
    """Every worker's file in a run directory, by index."""
    found: dict[int, WorkerFile] = {}
    with contextlib.suppress(OSError):
        for path in directory.glob("worker-*.json"):
            if (got := read(path)) is not None:
                found[got.index] = got
    return found


def remove_finished(cache_dir: str, alive: Callable[[int], bool]) -> None:
    """Remove the run directories whose supervisor is gone (never those of a live one)."""
    base = Path(os.path.expanduser(cache_dir)) / SUBDIR
    with contextlib.suppress(OSError):
        for directory in base.glob("run-*"):
            pid = directory.name.removeprefix("run-")
            if pid.isdigit() and not alive(int(pid)):
                shutil.rmtree(directory, ignore_errors=True)
