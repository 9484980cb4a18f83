"""The README stays true: every flag and every fwd_* option is documented."""

from __future__ import annotations

import re

from fwdproxy import config
from tests.support import REPO


def test_every_flag_in_readme() -> None:
    readme = (REPO / "README.md").read_text()
    for opt in config.OPTIONS:
        flag = "--" + opt.name.replace("_", "-")
        assert f"`{flag}" in readme, flag


def test_every_fwd_option_in_readme() -> None:
    readme = (REPO / "README.md").read_text()
    declared = set()
    for path in (REPO / "addons").glob("*.py"):
        declared |= set(re.findall(r'add_option\(\s*"(fwd_[a-z_]+)"', path.read_text()))
    missing = sorted(name for name in declared if name not in readme)
    assert not missing, missing
