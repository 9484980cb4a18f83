"""The Master that `fwdproxy run` builds: which addons it loads, and how its hook table dispatches."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from mitmproxy import exceptions
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import tflow

from fwdproxy import engine
from fwdproxy.config import Settings
from fwdproxy_addons._mitm.dispatch import HookTable

LEAN = ["core", "proxyserver", "nextlayer", "tlsconfig"]
"""mitmproxy's own addons, and no more (mitmproxy-notes §12): a new one here costs every flow."""
OURS = ["lifecycle", "access", "tunnel", "anonymize", "cache", "egress", "originerrors"]
"""Our chain in request order; others may be added (admin, accesslog), but never before these."""


def _names(master: object) -> list[str]:
    from mitmproxy.addonmanager import _get_name

    return [_get_name(a) for a in master.addons.chain]  # type: ignore[attr-defined]


def test_fwdproxy_run_loads_only_the_lean_builtins_then_our_chain(tmp_path) -> None:
    async def build() -> list[str]:
        master, _ = engine.build(Settings(listen_port=0, cache_dir=str(tmp_path), confdir=str(tmp_path)))
        try:
            assert master.options.connection_strategy == "lazy"  # hits never open an origin connection
            assert isinstance(master.addons, HookTable)
            return _names(master)
        finally:
            await master.addons.get("cache").done()

    names = asyncio.run(build())
    assert names[:4] == LEAN
    mitm_builtin = {
        "core",
        "proxyserver",
        "nextlayer",
        "tlsconfig",
        "dumper",
        "termlog",
        "proxyauth",
        "block",
        "upstreamauth",
        "save",
        "script",
        "clientplayback",
        "serverplayback",
    }
    assert not set(names[4:]) & mitm_builtin, names
    ours = [n for n in names[4:] if n in OURS]
    assert ours == OURS, names
    assert names[-1] == "anonymizeresponses" or "anonymize" in names[-1]  # strips backend names last


class Recorder:
    def __init__(self, name: str, calls: list[str], *, fail: bool = False, halt: bool = False) -> None:
        self.name, self.calls, self.fail, self.halt = name, calls, fail, halt

    async def request(self, flow: object) -> None:
        await asyncio.sleep(0)
        self.calls.append(self.name)
        if self.fail:
            raise ValueError(f"{self.name} broke")
        if self.halt:
            raise exceptions.AddonHalt


class Parent:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.addons = [Recorder("child", calls)]

    def request(self, flow: object) -> None:
        self.calls.append("parent")


@pytest.mark.parametrize(
    "chain, expected",
    [
        pytest.param(["a", "b"], ["a", "b"], id="in chain order, async hooks awaited"),
        pytest.param(["a", "fail:b", "c"], ["a", "b", "c"], id="an error is logged and the next addon runs"),
        pytest.param(["a", "halt:b", "c"], ["a", "b"], id="AddonHalt stops the event"),
    ],
)
def test_hook_table_dispatches_like_mitmproxy(chain: list[str], expected: list[str], caplog) -> None:
    from mitmproxy import options
    from mitmproxy.master import Master

    async def run() -> list[str]:
        calls: list[str] = []
        master = Master(options.Options())
        master.addons = HookTable(master)
        for spec in chain:
            kind, _, name = spec.rpartition(":")
            master.addons.add(Recorder(name, calls, fail=kind == "fail", halt=kind == "halt"))
        with caplog.at_level(logging.ERROR):
            await master.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        return calls

    assert asyncio.run(run()) == expected
    assert ("b broke" in caplog.text) is ("fail:b" in chain)


def test_hook_table_follows_chain_changes_and_child_addons() -> None:
    from mitmproxy import options
    from mitmproxy.master import Master

    async def run() -> list[str]:
        calls: list[str] = []
        master = Master(options.Options())
        master.addons = HookTable(master)
        first = Recorder("first", calls)
        master.addons.add(first)
        await master.addons.trigger_event(HttpRequestHook(tflow.tflow()))
        master.addons.add(Parent(calls))
        master.addons.remove(first)
        await master.addons.trigger_event(HttpRequestHook(tflow.tflow()))
        return calls

    assert asyncio.run(run()) == ["first", "parent", "child"]


def test_serve_freezes_the_start_up_heap_and_raises_the_gc_threshold(monkeypatch, tmp_path) -> None:
    seen: dict[str, object] = {}

    class Running:
        async def run(self) -> None:  # what the proxy runs with
            seen["thresholds"] = gc.get_threshold()
            seen["frozen"] = gc.get_freeze_count()

        def shutdown(self) -> None:
            pass

    class Listening:
        listening = True

    monkeypatch.setattr(engine, "build", lambda s, shared_port=False: (Running(), Listening()))
    before = gc.get_threshold()
    try:
        assert asyncio.run(engine.serve(Settings(listen_port=0, cache_dir=str(tmp_path)))) == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen["thresholds"] == engine.GC_THRESHOLDS != before
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 1000


def test_mitm_options_are_only_mitmproxys_own() -> None:
    # Our fwd_* values travel typed, through chain(); only mitmproxy's own options are set as options.
    assert engine.mitm_options(Settings(listen_port=0, confdir="/x")) == {
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "confdir": "/x",
        "connection_strategy": "lazy",
    }


@pytest.mark.parametrize(
    "explicit, on_5xx",
    [pytest.param(frozenset(), 0.0, id="default"), pytest.param({"serve_stale_on_error"}, 7200.0, id="set")],
)
def test_typed_settings_reach_the_addons(tmp_path, explicit: frozenset[str], on_5xx: float) -> None:
    """fwdproxy run hands the addons typed values: no fwd_* option is set, yet the addons see the settings."""
    s = Settings(
        listen_port=0,
        cache_dir=str(tmp_path / "c"),
        confdir=str(tmp_path),
        serve_stale_on_error=7200.0,
        read_timeout=2.5,
        preset=("ci",),
        explicit=frozenset(explicit),
    )

    async def build() -> None:
        master, _ = engine.build(s)
        try:
            cache = master.addons.get("cache")
            assert (
                cache.config.stale_if_disconnected == 7200.0 and cache.config.serve_stale_on_error == on_5xx
            )
            assert cache.config.rules and master.addons.get("readtimeout").timeout == 2.5
            assert cache.opened[0] == str(tmp_path / "c")  # the store opened where asked, and only there
            assert master.options.fwd_read_timeout == "1m"  # the mitmproxy option was left at its default
            master.options.update(fwd_read_timeout="7s")  # --set fwd_... still works, parsed with the table
            assert master.addons.get("readtimeout").timeout == 7.0
            assert cache.config.rules  # the rest stays as handed over
        finally:
            await master.addons.get("cache").done()

    asyncio.run(build())


def test_the_engine_hands_its_proxyserver_to_every_addon_that_needs_it(tmp_path, monkeypatch) -> None:
    """`fwdproxy run` makes mitmproxy's Proxyserver itself: the addons that need the listeners or the live
    connections get that very instance through chain(), one Server shared by all, with no lookup by name."""
    from fwdproxy_addons._neighbours import Server

    async def build() -> None:
        master, _ = engine.build(Settings(listen_port=0, cache_dir=str(tmp_path), confdir=str(tmp_path)))
        try:
            made = master.addons.get("proxyserver")
            monkeypatch.setattr(master.addons, "get", lambda name: pytest.fail(f"looked up {name}"))
            handles = {
                type(a).__name__: a.proxyserver
                for a in master.addons.chain
                if isinstance(getattr(a, "proxyserver", None), Server)
            }
            assert set(handles) == {"Lifecycle", "Admin", "Guard", "Strict", "ReadTimeout"}
            assert len({id(h) for h in handles.values()}) == 1
            assert all(h.get() is made for h in handles.values())
        finally:
            monkeypatch.undo()
            await master.addons.get("cache").done()

    asyncio.run(build())
