"""One SettingsSource per chain: typed settings from `fwdproxy run`, the table-parsed fwd_* options under mitmdump."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from fwdproxy import config, options
from fwdproxy.config import Settings
from fwdproxy_addons.admin import Admin
from fwdproxy_addons.cache import Cache
from fwdproxy_addons.egress import Egress
from fwdproxy_addons.fwdproxy import chain
from fwdproxy_addons.guard import Guard
from fwdproxy_addons.lifecycle import Lifecycle
from fwdproxy_addons.readtimeout import ReadTimeout
from fwdproxy_addons.strict import Strict


def _by_type(addons: list[Any], cls: type) -> Any:
    (found,) = [a for a in addons if type(a) is cls]
    return found


def _close(addons: list[Any]) -> None:
    store = _by_type(addons, Cache).store
    if store is not None:
        store.close()


def test_chain_hands_neighbours_over_explicitly() -> None:
    addons = chain()
    cache, egress, admin = _by_type(addons, Cache), _by_type(addons, Egress), _by_type(addons, Admin)
    assert admin.cache is cache and admin.egress is egress
    lifecycle = _by_type(addons, Lifecycle)
    assert lifecycle.cache is cache and lifecycle.admin is admin
    assert _by_type(addons, Guard).admin_addon is admin
    sources = {id(a.source) for a in addons if hasattr(a, "source")}
    assert len(sources) == 1  # one source: the chain parses a change once, not once per addon


def test_typed_settings_reach_the_addons_without_options(tmp_path: Path) -> None:
    given = config.from_file_and_flags(
        {"cache_dir": str(tmp_path / "c"), "read_timeout": "2.5", "header_timeout": "3s", "admin_port": "0"}
    )
    addons = chain(given)
    with taddons.context(*addons) as tctx:
        assert tctx.options.fwd_read_timeout == "1m"  # the mitmproxy option is untouched (its default) ...
        assert _by_type(addons, ReadTimeout).timeout == 2.5  # ... the addon has the typed value
        assert _by_type(addons, Cache).opened[0] == str(tmp_path / "c")
        tctx.configure(_by_type(addons, Strict), fwd_read_timeout="9s")  # a --set on top still applies
        assert _by_type(addons, ReadTimeout).timeout == 9.0
        assert _by_type(addons, Cache).opened[0] == str(tmp_path / "c")  # the rest stays as given
        _close(addons)


def test_the_config_file_is_read_once_per_change_for_the_whole_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.toml"
    path.write_text(
        '[[cache.rule]]\nmatch = "*.whl"\nimmutable = true\n'
        '[upstreams.corp]\nmembers = [{ url = "http://10.0.0.5:3128" }]\n'
    )
    reads: list[str] = []
    real = config.read_toml
    monkeypatch.setattr(config, "read_toml", lambda p, where="": reads.append(p) or real(p, where))
    addons = chain()
    with taddons.context(*addons) as tctx:
        tctx.configure(addons[0], fwd_cache_dir=str(tmp_path / "c"), fwd_admin_port=0, fwd_config=str(path))
        assert reads == [str(path)]
        assert _by_type(addons, Cache).config.rules[0].pattern == "*.whl"
        assert [g.name for g in _by_type(addons, Egress).config.groups] == ["corp"]
        tctx.configure(addons[0], fwd_read_timeout="5s")  # another option: the file is not read again
        assert reads == [str(path)]
        _close(addons)


def test_a_bad_value_is_refused_and_the_old_settings_stay(tmp_path: Path) -> None:
    addons = chain()
    with taddons.context(*addons) as tctx:
        tctx.configure(addons[0], fwd_cache_dir=str(tmp_path / "c"), fwd_admin_port=0, fwd_read_timeout="4s")
        with pytest.raises(exceptions.OptionsError, match="fwd_read_timeout: 'soon' is not a duration"):
            tctx.configure(addons[0], fwd_read_timeout="soon")
        assert tctx.options.fwd_read_timeout == "4s"
        assert _by_type(addons, ReadTimeout).timeout == 4.0
        _close(addons)


def test_every_fwd_option_is_declared_by_the_chain() -> None:
    addons = chain()
    with taddons.context(*addons) as tctx:
        declared = {name for name in tctx.options.keys() if name.startswith("fwd_")}
        assert declared == set(options.BY_MITM)
        for name, opt in options.BY_MITM.items():
            assert tctx.options.default(name) == options.mitm_default(opt), name
        _close(addons)


def test_engine_settings_are_not_reparsed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # fwdproxy run: nothing of ours goes through the text parser when no --set fwd_... is given.
    calls: list[str] = []
    real = options.convert
    monkeypatch.setattr(
        options, "convert", lambda opt, value, where: calls.append(where) or real(opt, value, where)
    )
    from fwdproxy import engine

    async def build() -> None:
        master, _ = engine.build(
            Settings(listen_port=0, cache_dir=str(tmp_path / "c"), confdir=str(tmp_path))
        )
        await master.addons.get("cache").done()

    asyncio.run(build())
    assert calls == []
