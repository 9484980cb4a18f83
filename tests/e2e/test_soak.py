"""The soak script, short (issue 9, point 4): 10 s, 50 connections, every body checked, nothing leaks."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO


def test_short_soak_has_no_wrong_body_no_error_and_no_leak() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak"), "--duration", "10", "--connections", "50"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    assert "wrong      0 bodies" in report and "errors     0 unexpected" in report, report
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
    assert int(lines["requests"].split()[1]) > 200, report
    for outcome in ("hit", "revalidated (304)"):
        assert outcome in lines["outcomes"], report
