"""The README stays true: its options tables are the ones the options table renders."""

from __future__ import annotations

from fwdproxy import optiondocs, options
from tests.support import REPO

FIX = "regenerate with `.venv/bin/python -m fwdproxy.optiondocs` and paste it into README.md"


def test_run_options_table_is_derived_from_the_options_table() -> None:
    readme = (REPO / "README.md").read_text()
    assert optiondocs.readme_run_table() in readme, FIX


def test_mitmdump_options_table_is_derived_from_the_options_table() -> None:
    readme = (REPO / "README.md").read_text()
    assert optiondocs.readme_mitm_table() in readme, FIX


def test_every_flag_and_fwd_option_is_in_the_tables() -> None:
    tables = optiondocs.readme_run_table() + optiondocs.readme_mitm_table()
    for opt in options.OPTIONS:
        if opt.flag:
            assert f"`{opt.flag_name}" in tables, opt.name
        if opt.ours:
            assert f"`{opt.mitm_name}`" in tables, opt.name


def test_no_addon_declares_an_option_by_hand() -> None:
    # Every fwd_* option comes from the table (addons/_settings.py SettingsSource.declare).
    for path in (REPO / "addons").glob("*.py"):
        assert "loader.add_option(" not in path.read_text() or path.name == "_settings.py", path.name
