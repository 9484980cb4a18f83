"""Sizes and durations written as the flags' defaults are (--help, README)."""

from __future__ import annotations

import pytest

from fwdproxy.units import duration_text, parse_duration, parse_size, size_text


@pytest.mark.parametrize(
    "n, text",
    [
        (256 * 1024**2, "256MiB"),
        (10 * 1024**3, "10GiB"),
        (1024**2, "1MiB"),
        (1536, "1536"),
        (3072, "3KiB"),
        (0, "0"),
    ],
)
def test_size_text_is_written_as_flags_are(n: int, text: str) -> None:
    assert size_text(n) == text
    assert parse_size(text) == n


@pytest.mark.parametrize(
    "seconds, text", [(10.0, "10s"), (60.0, "1m"), (86400.0, "1d"), (90.0, "90s"), (0.5, "0.5s"), (0.0, "0")]
)
def test_duration_text_is_written_as_flags_are(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text
    assert parse_duration(text) == seconds
