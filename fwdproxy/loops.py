"""The event loop ``fwdproxy run`` runs on (``--event-loop``): uvloop when it is installed, else asyncio's own.

Why uvloop: once the fast hit layer answers a memory hit below mitmproxy's HTTP layer, most of a hit's CPU is
the event loop's own socket work (reading the request, writing the response, the selector), not ours.
uvloop does that work in C on libuv with the same asyncio API; mitmproxy runs on it unchanged. Measured with
``scripts/bench --quick --fast-only`` on the 2-core VM: a plain 1 KiB fast hit 0.058 ms of CPU on asyncio's
loop, 0.042 ms on uvloop (README, "Event loop"). The full (flow) path gains little: it is bound by Python.

One adaptation: mitmproxy's ``Master.run`` sets ``asyncio.eager_task_factory`` on the running loop. uvloop
on Python 3.13 calls a task factory with an ``eager_start`` keyword that 3.13's own eager factory does not
take (a ``TypeError`` on the first task). The uvloop loop built here hands ``eager_start`` on only when it
has a value, which asyncio's factories accept (docs/mitmproxy-notes.md §24).

``mitmdump -s addons/fwdproxy.py`` keeps mitmdump's loop: only ``fwdproxy run`` (and its workers) choose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

KINDS = ("auto", "uvloop", "asyncio")

TaskFactory = Callable[..., "asyncio.Future[Any]"]


def _uvloop() -> Any | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def chosen(kind: str) -> str:
    """The loop ``kind`` gets here: ``uvloop`` or ``asyncio``. ValueError when uvloop is asked for and missing."""
    if kind not in KINDS:
        raise ValueError(f"--event-loop {kind!r}: one of {', '.join(KINDS)}")
    if kind == "asyncio":
        return "asyncio"
    if _uvloop() is not None:
        return "uvloop"
    if kind == "uvloop":
        raise ValueError(
            "--event-loop uvloop: uvloop is not installed here (pip install uvloop; not on Windows)"
        )
    return "asyncio"


def _passing_eager_start_only_when_set(factory: TaskFactory) -> TaskFactory:
    def create(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        *,
        eager_start: bool | None = None,
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        if eager_start is not None:
            kwargs["eager_start"] = eager_start
        return factory(loop, coro, **kwargs)

    create.__wrapped__ = factory  # type: ignore[attr-defined]
    return create


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What ``asyncio.run(..., loop_factory=)`` should get for ``kind`` (None: asyncio's default loop)."""
    if chosen(kind) == "asyncio":
        return None
    uvloop = _uvloop()
    assert uvloop is not None

    class Loop(uvloop.Loop):  # type: ignore[misc,name-defined]
        def set_task_factory(self, factory: TaskFactory | None) -> None:
            if factory is not None and not hasattr(factory, "__wrapped__"):
                factory = _passing_eager_start_only_when_set(factory)
            super().set_task_factory(factory)

    return Loop


def run[T](main: Coroutine[Any, Any, T], kind: str) -> T:
    """``asyncio.run(main)`` on the loop ``kind`` names (see ``chosen``)."""
    return asyncio.run(main, loop_factory=loop_factory(kind))


def running() -> str:
    """The name of the running loop's implementation, for the startup log and the status page."""
    uvloop = _uvloop()
    return (
        "uvloop" if uvloop is not None and isinstance(asyncio.get_running_loop(), uvloop.Loop) else "asyncio"
    )
