"""Sizes and durations written as the flags' defaults are (--help, README)."""

from __future__ import annotations

import pytest

from fwdproxy.units import duration_text, parse_duration, parse_size, size_text, table_duration


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


@pytest.mark.parametrize(
    ("value", "positive", "expected"),
    [("10m", False, 600.0), (0, False, 0.0), (90, True, 90.0), ("1.5h", True, 5400.0)],
)
def test_table_duration_reads_what_both_tables_accept(value: object, positive: bool, expected: float) -> None:
    assert table_duration(value, "t.k", positive=positive) == expected


@pytest.mark.parametrize(
    ("value", "positive", "message"),
    [
        ([1], False, r"^t\.k: \[1\] is not a duration; try e\.g\. 90"),
        ("soon", False, r"^t\.k: 'soon' is not a duration"),
        (-1, False, r"^t\.k: -1 is negative"),
        (0, True, r"^t\.k: 0 is zero; use a positive duration"),
        ("0s", True, r"^t\.k: '0s' is zero"),
    ],
)
def test_table_duration_names_the_key_in_its_errors(value: object, positive: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        table_duration(value, "t.k", positive=positive)
