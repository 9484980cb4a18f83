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


def test_serve_stale_on_error_is_passed_on_only_when_set() -> None:
    """Left at its default the addon keeps "1d" (unreachable origins only); set, it covers 5xx as well."""
    assert engine.mitm_options(Settings())["fwd_serve_stale_on_error"] == "1d"
    explicit = Settings(serve_stale_on_error=86400.0, explicit=frozenset({"serve_stale_on_error"}))
    assert engine.mitm_options(explicit)["fwd_serve_stale_on_error"] == "86400s"
