"""Hit counts per cache key, kept in a small JSON file beside the store (which records no hits itself).

The proxy adds its counts every few seconds (merging with what other processes wrote); `fwdproxy cache ls`
reads them. Counts belong to a URL's primary key, so they survive a refresh of the entry but not a purge.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

from fwdproxy import jsonfile

FILENAME = "hits.json"
MAX_KEYS = 100_000
"""Above this many keys the least-hit half is dropped when saving, so the file stays a few MB at most."""


def path_for(cache_dir: str | os.PathLike[str]) -> Path:
    """Where the hit counts of a cache directory live."""
    return Path(os.path.expanduser(os.fspath(cache_dir))) / FILENAME


def load(path: Path) -> dict[str, int]:
    """The counts on disk; an absent or unreadable file is no counts (they are a convenience, not data)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, int) and v > 0}


def _save(path: Path, counts: Mapping[str, int]) -> None:
    if len(counts) > MAX_KEYS:
        counts = dict(Counter(counts).most_common(MAX_KEYS // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    jsonfile.write_atomically(path, counts)


def add(path: Path, deltas: Mapping[str, int]) -> None:
    """Add counts to the file (read, merge, atomic replace). Raises OSError when it cannot be written."""
    if not deltas:
        return
    counts = Counter(load(path))
    counts.update(deltas)
    _save(path, counts)


def remove(path: Path, keys: Iterable[str] | None = None) -> None:
    """Forget the counts of these primary keys (all when None); a missing file is fine."""
    if keys is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    counts = load(path)
    doomed = [k for k in keys if k in counts]
    if doomed:
        for k in doomed:
            del counts[k]
        _save(path, counts)
