"""Every addon file under addons/ loads alone as a mitmdump script (``mitmdump -s addons/<file>.py``) and the
proxy starts with it: the layout STYLE.md promises, and what an operator trying one addon does."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.support import REPO, mitmdump_argv

SCRIPTS = sorted(p for p in (REPO / "addons").glob("*.py") if not p.name.startswith("_"))
"""The addon files (the ``_`` modules are helpers, not addons; fwdproxy.py is the whole chain)."""
STARTED = "proxy listening at 127.0.0.1:"
FAILED = ("error in script", "Traceback", "Error logged")


def test_the_addon_files_are_the_ones_expected() -> None:
    """A new addon file is covered by the test below without listing it; this guards against the glob
    finding nothing (a moved folder would make the test below pass empty)."""
    names = {p.stem for p in SCRIPTS}
    assert {"cache", "egress", "readtimeout", "admin", "fwdproxy"} <= names
    assert len(names) >= 14


def test_every_addon_file_loads_alone_and_the_proxy_starts(
    tmp_path: Path, confdir: Path, proxy_ca_file: Path
) -> None:
    assert proxy_ca_file.exists()  # made once before: the scripts start at once and must not race to make it
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for script in SCRIPTS:
        out = tmp_path / f"{script.stem}.out"
        argv = mitmdump_argv(
            *("--listen-host", "127.0.0.1", "--listen-port", "0", "--set", f"confdir={confdir}"),
            *("-s", str(script)),
        )
        with out.open("wb") as sink:  # the child keeps its own descriptor
            proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        running[script.stem] = (proc, out)
    outputs: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 90  # 15 interpreters starting at once on a busy 2-core machine
        while time.monotonic() < deadline and len(outputs) < len(running):
            for name, (proc, out) in running.items():
                text = out.read_text(errors="replace")
                if name not in outputs and (STARTED in text or proc.poll() is not None):
                    time.sleep(0.5)  # a script error during the first hooks is logged just after
                    outputs[name] = out.read_text(errors="replace")
            time.sleep(0.2)
    finally:
        for proc, _ in running.values():
            proc.terminate()
        for proc, _ in running.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    not_started = {
        n: outputs.get(n, "(no answer in time)")[-800:] for n in running if STARTED not in outputs.get(n, "")
    }
    assert not not_started
    broken = {n: text[-800:] for n, text in outputs.items() if any(word in text for word in FAILED)}
    assert not broken
