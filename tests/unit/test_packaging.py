"""What the distribution installs: fwdproxy and fwdproxy_addons (the addons/ folder), no generic `addons`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def installed_name(folder: Path) -> str:
    parts = folder.relative_to(REPO).parts
    top = {folder: package for package, folder in SETUPTOOLS["package-dir"].items()}.get(parts[0], parts[0])
    return ".".join([top, *parts[1:]])


def test_every_package_folder_is_installed_under_its_package_name() -> None:
    folders = [p.parent for top in ("fwdproxy", "addons") for p in (REPO / top).rglob("__init__.py")]
    assert sorted(installed_name(f) for f in folders) == sorted(SETUPTOOLS["packages"])


def test_no_generic_top_level_name() -> None:
    assert SETUPTOOLS["package-dir"] == {"fwdproxy_addons": "addons"}
    assert {p.split(".")[0] for p in SETUPTOOLS["packages"]} == {"fwdproxy", "fwdproxy_addons"}


def test_only_the_mitmdump_entry_script_touches_sys_path() -> None:
    touching = sorted(
        str(p.relative_to(REPO))
        for top in ("fwdproxy", "addons")
        for p in (REPO / top).rglob("*.py")
        if "sys.path" in p.read_text()
    )
    assert touching == ["addons/fwdproxy.py"]
    bootstraps = [
        p for p in (REPO / "addons").rglob("*.py") if re.search(r"^import addons\b", p.read_text(), re.M)
    ]
    assert bootstraps == []
