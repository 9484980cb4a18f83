"""Sizes (``256MiB``) and durations (``10m``) as written in flags and TOML, parsed and formatted."""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 365 * 86400}
_NUMBER_UNIT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(value: str | int) -> int:
    """Bytes from ``1048576``, ``512KiB``, ``256MiB``, ``10GiB`` (also KB/MB/GB, powers of 1000)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; try e.g. 256MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is negative; a size is 0 or more bytes, e.g. 256MiB")
        return value
    m = _NUMBER_UNIT.fullmatch(value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size; try e.g. 1048576, 512KiB, 256MiB or 10GiB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``100ms``, ``90``, ``90s``, ``10m``, ``12h``, ``7d``, ``2w``, ``1y``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; try e.g. 90, 10m, 12h or 7d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative; a duration is 0 or more seconds, e.g. 10m")
        return float(value)
    m = _NUMBER_UNIT.fullmatch(value)
    if not m or m.group(2).lower() not in _DURATION_UNITS:
        raise ValueError(f"{value!r} is not a duration; try e.g. 90, 90s, 10m, 12h or 7d")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


def table_duration(value: object, key: str, *, positive: bool = False) -> float:
    """A duration read from a TOML table: ``key`` names it in the error (``cache.rule[0].max_ttl: 'x' is not a
    duration; try …``); ``positive`` refuses 0."""
    if not isinstance(value, str | int | float):
        raise ValueError(f"{key}: {value!r} is not a duration; try e.g. 90, 10m, 12h or 7d")
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None
    if positive and seconds <= 0:
        raise ValueError(f"{key}: {value!r} is zero; use a positive duration such as 10s")
    return seconds


def format_size(n: float) -> str:
    """``1.5 MiB``-style text for a byte count (powers of 1024, as the size flags' defaults are written)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``45s``, ``12m``, ``3h5m``, ``2d3h``: two units at most; negative durations keep their sign."""
    sign, s = ("-", -seconds) if seconds < 0 else ("", seconds)
    s = int(s)
    if s < 60:
        return f"{sign}{s}s"
    if s < 3600:
        return f"{sign}{s // 60}m" + (f"{s % 60}s" if s % 60 and s < 600 else "")
    if s < 86400:
        return f"{sign}{s // 3600}h" + (f"{s % 3600 // 60}m" if s % 3600 // 60 else "")
    return f"{sign}{s // 86400}d" + (f"{s % 86400 // 3600}h" if s % 86400 // 3600 else "")


def size_text(n: int) -> str:
    """A byte count as a size flag is written: ``256MiB``, ``10GiB``, ``1500`` (the largest exact unit)."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def duration_text(seconds: float) -> str:
    """Seconds as a duration flag is written: ``10s``, ``5m``, ``1d``, ``0.5s`` (the largest exact unit)."""
    if seconds and seconds == int(seconds):
        whole = int(seconds)
        for unit, factor in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
            if whole % factor == 0:
                return f"{whole // factor}{unit}"
        return f"{whole}s"
    if 0 < seconds < 0.5 and round(seconds * 1000, 6).is_integer():  # --shared-timeout's 100ms
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s" if seconds else "0"
