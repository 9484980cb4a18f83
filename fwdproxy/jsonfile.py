"""Small JSON files that readers in other processes may open at any moment: written whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomically(path: Path, value: Any, *, indent: int | None = None) -> None:
    """Write ``value`` as JSON to a temporary file beside ``path``, then rename it over ``path`` (a reader sees
    the old file or the new one, never half of one).

    Raises:
        OSError: the directory is not writable; nothing is left behind.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(
                value,
                f,
                indent=indent,
                sort_keys=indent is not None,
                separators=None if indent else (",", ":"),
            )
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
