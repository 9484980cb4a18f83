"""mitmproxy's AddonManager with a table of hooks per event: replaces ``Master.addons`` in fwdproxy's own Master.

Not a patch of mitmproxy's classes (mitmdump's manager is left alone): ``fwdproxy run`` builds its Master
(fwdproxy/engine.py ``build``) with this subclass, which overrides the dispatch methods listed in the
register (addons/_mitm/__init__.py; docs/mitmproxy-notes.md §20).
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks
from mitmproxy.master import Master

log = logging.getLogger("fwdproxy")


class HookTable(addonmanager.AddonManager):
    """mitmproxy's AddonManager, but each event's hooks are looked up once per chain, not once per call.

    The stock manager walks every addon (and its children) for every event of every flow, through a
    generator, a ``getattr`` and a ``contextlib`` wrapper each, then does it all again for an ``update``
    event nobody here listens to: about a sixth of a cache hit's CPU with our dozen addons. This one keeps
    the same order, error handling (an addon's exception is logged and the next addon still runs;
    AddonHalt stops the event) and sync/async support. The table is rebuilt when the chain changes;
    an addon must not swap its hook methods or child addons while running (none of ours does).
    """

    def __init__(self, master: Master) -> None:
        super().__init__(master)
        self._hooks: dict[str, tuple[Callable[..., Any], ...]] = {}

    def hooks_for(self, name: str) -> tuple[Callable[..., Any], ...]:
        """Every callable hook named ``name``, in chain order (children after their parent)."""
        found = self._hooks.get(name)
        if found is None:
            found = self._hooks[name] = tuple(
                func
                for addon in addonmanager.traverse(self.chain)
                if callable(func := getattr(addon, name, None)) and not inspect.ismodule(func)
            )
        return found

    def register(self, addon: Any) -> Any:
        self._hooks.clear()
        return super().register(addon)

    def add(self, *addons: Any) -> None:
        super().add(*addons)
        self._hooks.clear()

    def remove(self, addon: Any) -> None:
        super().remove(addon)
        self._hooks.clear()

    def clear(self) -> None:
        super().clear()
        self._hooks.clear()

    async def trigger_event(self, event: hooks.Hook) -> None:
        await self._call(self.hooks_for(event.name), event.args())

    async def _call(self, funcs: tuple[Callable[..., Any], ...], args: list[Any]) -> None:
        for func in funcs:
            try:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as e:  # as mitmproxy's safecall: one addon's bug never stops the others
                log.error("Addon error: %s", e, exc_info=sys.exc_info())

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        args = event.args()  # a dataclasses.fields() walk: once per event, not once per use
        await self._call(self.hooks_for(event.name), args)
        if isinstance(args[0], flow.Flow) and (update := self.hooks_for("update")):
            await self._call(update, [[args[0]]])
