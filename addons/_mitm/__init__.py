"""Every adaptation of mitmproxy (and h11, diskcache) internals, checked and installed in one place.

fwdproxy changes a few private parts of mitmproxy 12.3 (the modules of this package) and relies on a few
more. Each is registered below as a :class:`Patch`: the attributes it replaces or uses (:class:`Target`, with
the parameters they had in 12.3), the module that makes the change and the section of docs/mitmproxy-notes.md
that says what mitmproxy does, what we change, why, and what breaks without it. :func:`install` refuses to
start on a mitmproxy outside :data:`SUPPORTED` (pyproject pins the same range) or when any target is missing
or has another signature, before changing anything; then it applies every patch, once per process.
tests/addons/test_mitm_patches.py checks each patch is in place and still has its effect.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import h11._receivebuffer
from mitmproxy import addonmanager, exceptions, hooks, http, version
from mitmproxy.addons import clientplayback, proxyserver
from mitmproxy.proxy import mode_servers, server, tunnel
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers import tls
from mitmproxy.proxy.layers.http import _hooks, _http1, _http2, _upstream_proxy
from mitmproxy.utils import typecheck

from fwdproxy.store import backend
from fwdproxy_addons._mitm import failures, fieldwalk, http1, pool, readstamp, via, wideread
from fwdproxy_addons._mitm.mark import is_ours

SUPPORTED = ((12, 3), (12, 4))
"""mitmproxy releases the patches were written for: from 12.3 up to, not including, 12.4 (as pyproject)."""


class UnsupportedMitmproxy(exceptions.OptionsError):
    """The running mitmproxy is not one the patches were written for; fwdproxy must not start.

    An OptionsError, so both ways of starting stop with its one-line message: ``fwdproxy run`` ("cannot
    start: ...", exit status 2) and ``mitmdump -s addons/fwdproxy.py`` (the script fails to load; exit 1).
    """


Kind = Literal["generator", "coroutine", "function", "class", "attribute"]


@dataclass(frozen=True, slots=True)
class Target:
    """One attribute of mitmproxy (or h11) that a patch replaces or relies on."""

    owner: Any
    """The module or class holding it."""
    name: str
    kind: Kind
    params: tuple[str, ...] = ()
    """Parameter names of a callable (of ``__init__`` for a class), as in mitmproxy 12.3."""
    uses: tuple[str, ...] = ()
    """Names the callable's code must still use (attributes the patch reads or sets on mitmproxy objects)."""
    replaced: bool = True
    """False for an attribute we only rely on (read, call or subclass)."""

    @property
    def where(self) -> str:
        if isinstance(self.owner, types.ModuleType):
            return f"{self.owner.__name__}.{self.name}"
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"


@dataclass(frozen=True, slots=True)
class Patch:
    """A change to mitmproxy's behaviour, or a reliance on its internals, documented in docs/mitmproxy-notes.md."""

    name: str
    section: str
    """The section of docs/mitmproxy-notes.md that documents it (e.g. "§14")."""
    targets: tuple[Target, ...]
    apply: Callable[[], None] | None
    """Makes the change; None for a reliance that changes nothing (or one applied when a Master is built)."""


_H1S, _H1C, _CH = _http1.Http1Server, _http1.Http1Client, server.ConnectionHandler
_GEN_EVENT = ("self", "event")
_MARK_DONE = ("self", "request", "response")

PATCHES: tuple[Patch, ...] = (
    # Order matters where two patches wrap one method: http1's wrappers of Http1Client.read_headers and
    # mark_done sit inside pool's, as when the addons installed them one by one.
    Patch(
        "HTTP/1 heads, body errors, header timeout, 1xx, excess bytes (addons/_mitm/http1.py)",
        "§15",
        (
            Target(_H1S, "read_headers", "generator", _GEN_EVENT, ("buf", "state")),
            Target(_H1S, "read_body", "generator", _GEN_EVENT),
            Target(_H1S, "_handle_event", "generator", _GEN_EVENT),
            Target(_H1S, "mark_done", "generator", _MARK_DONE),
            Target(_H1C, "read_headers", "generator", _GEN_EVENT, ("buf", "state")),
            Target(_H1C, "read_body", "generator", _GEN_EVENT),
            Target(
                h11._receivebuffer.ReceiveBuffer, "maybe_extract_lines", "function", ("self",), replaced=False
            ),
            Target(h11._receivebuffer, "blank_line_regex", "attribute", replaced=False),
            Target(
                h11._receivebuffer.ReceiveBuffer,
                "__init__",
                "function",
                ("self",),
                ("_data", "_multiple_lines_search"),
                replaced=False,
            ),
        ),
        http1.apply,
    ),
    Patch(
        "absolute-form requests to an upstream proxy (addons/_mitm/via.py)",
        "§18",
        (
            Target(
                _upstream_proxy, "HttpUpstreamProxy", "class", ("self", "ctx", "tunnel_conn", "send_connect")
            ),
            Target(
                _upstream_proxy.HttpUpstreamProxy, "start_handshake", "generator", ("self",), replaced=False
            ),
            Target(
                _upstream_proxy.HttpUpstreamProxy,
                "make",
                "function",
                ("cls", "ctx", "send_connect"),
                replaced=False,
            ),
            Target(
                http_layer.HttpLayer,
                "get_connection",
                "generator",
                ("self", "event", "reuse"),
                ("HttpUpstreamProxy",),
                replaced=False,
            ),
        ),
        via.apply,
    ),
    Patch(
        "origin failures answered by an addon, error pages in plain text (addons/_mitm/failures.py)",
        "§14",
        (
            Target(http_layer.HttpStream, "handle_protocol_error", "generator", _GEN_EVENT),
            Target(_http2.Http2Server, "_handle_event", "generator", _GEN_EVENT),
            Target(_http1, "make_error_response", "function", ("status_code", "message")),
            Target(http_layer.HttpLayer, "get_connection", "generator", ("self", "event", "reuse")),
        ),
        failures.apply,
    ),
    Patch(
        "time of each connection's last read (addons/_mitm/readstamp.py)",
        "§19",
        (Target(_CH, "server_event", "coroutine", _GEN_EVENT),),
        readstamp.apply,
    ),
    Patch(
        "shared origin connections and cached DNS (addons/_mitm/pool.py)",
        "§17",
        (
            Target(
                _CH,
                "open_connection",
                "coroutine",
                ("self", "command"),
                (
                    "ServerConnectHook",
                    "ServerConnectedHook",
                    "ServerDisconnectedHook",
                    "transports",
                    "max_conns",
                    "ConnectionIO",
                ),
            ),
            Target(_H1C, "read_headers", "generator", _GEN_EVENT),
            Target(_H1C, "mark_done", "generator", _MARK_DONE),
            Target(
                server,
                "ConnectionIO",
                "class",
                ("self", "handler", "reader", "writer"),
                replaced=False,
            ),
            # HTTPS and upstream-proxy connections opened on the socket (addons/_mitm/origintls.py).
            Target(
                http_layer.HttpLayer,
                "get_connection",
                "generator",
                ("self", "event", "reuse"),
                ("connections",),
            ),
            Target(tls, "ServerTLSLayer", "class", ("self", "context", "conn"), replaced=False),
            *(
                Target(tunnel.TunnelLayer, name, "generator", params, replaced=False)
                for name, params in (
                    ("start_handshake", ("self",)),
                    ("receive_handshake_data", ("self", "data")),
                    ("receive_data", ("self", "data")),
                    ("receive_close", ("self",)),
                    ("send_data", ("self", "data")),
                    ("send_close", ("self", "command")),
                    ("event_to_child", _GEN_EVENT),
                )
            ),
            Target(
                _upstream_proxy.HttpUpstreamProxy,
                "__init__",
                "function",
                ("self", "ctx", "tunnel_conn", "send_connect"),
                ("send_connect",),
                replaced=False,
            ),
            Target(_hooks, "HttpConnectUpstreamHook", "class", ("self", "flow"), replaced=False),
            Target(
                _http1.Http1Connection, "mark_done", "generator", _MARK_DONE, ("is_http2",), replaced=False
            ),
        ),
        pool.apply,
    ),
    Patch(
        "wide reads from the cache's sidecar (addons/_mitm/wideread.py)",
        "§16",
        (
            Target(_CH, "__init__", "function", ("self", "context"), ("transports",)),
            Target(
                _CH,
                "handle_connection",
                "coroutine",
                ("self", "connection"),
                ("reader", "read"),
                replaced=False,
            ),
        ),
        wideread.apply,
    ),
    Patch(
        "message type checks and hook arguments compiled once per class (addons/_mitm/fieldwalk.py)",
        "§25",
        (
            # mitmproxy defines MessageData.__post_init__ only when __debug__ (not under python -O).
            *(
                (Target(http.MessageData, "__post_init__", "function", ("self",), ("fields",)),)
                if __debug__
                else ()
            ),
            Target(hooks.Hook, "args", "function", ("self",), ("fields",)),
            Target(typecheck, "check_option_type", "function", ("name", "value", "typeinfo"), replaced=False),
        ),
        fieldwalk.apply,
    ),
    Patch(
        "hooks looked up once per chain (addons/_mitm/dispatch.py, fwdproxy run only)",
        "§20",
        (
            Target(addonmanager.AddonManager, "trigger_event", "coroutine", _GEN_EVENT, replaced=False),
            Target(addonmanager.AddonManager, "handle_lifecycle", "coroutine", _GEN_EVENT, replaced=False),
            Target(addonmanager.AddonManager, "register", "function", ("self", "addon"), replaced=False),
            Target(addonmanager.AddonManager, "add", "function", ("self", "addons"), replaced=False),
            Target(addonmanager.AddonManager, "remove", "function", ("self", "addon"), replaced=False),
            Target(addonmanager.AddonManager, "clear", "function", ("self",), replaced=False),
            Target(addonmanager, "traverse", "generator", ("chain",), replaced=False),
        ),
        None,
    ),
    Patch(
        "one port for all workers (addons/_mitm/sharedport.py, fwdproxy run --workers)",
        "§21",
        (
            Target(mode_servers.RegularInstance, "listen", "coroutine", ("self", "host", "port")),
            Target(
                mode_servers.RegularInstance,
                "handle_stream",
                "coroutine",
                ("self", "reader", "writer"),
                replaced=False,
            ),
            Target(
                proxyserver.Servers, "update", "coroutine", ("self", "modes"), ("changed",), replaced=False
            ),
        ),
        None,
    ),
    Patch(
        "internals the addons read or drive (proxyserver, ReplayHandler)",
        "§22",
        (
            Target(
                proxyserver.Proxyserver,
                "__init__",
                "function",
                ("self",),
                ("servers", "connections"),
                replaced=False,
            ),
            Target(
                clientplayback.ReplayHandler,
                "__init__",
                "function",
                ("self", "flow", "options"),
                replaced=False,
            ),
            Target(clientplayback.ReplayHandler, "replay", "coroutine", ("self",), replaced=False),
        ),
        None,
    ),
    Patch(
        "disk hits written to a plain client's socket beside mitmproxy's writer (addons/fasthit.py)",
        "§26",
        (
            Target(
                proxyserver.Proxyserver, "__init__", "function", ("self",), ("connections",), replaced=False
            ),
            Target(_CH, "__init__", "function", ("self", "context"), ("transports",), replaced=False),
            Target(
                _CH,
                "server_event",
                "coroutine",
                _GEN_EVENT,
                ("transports", "writer", "write"),
                replaced=False,
            ),
            Target(server, "ConnectionIO", "class", ("self", "handler", "reader", "writer"), replaced=False),
        ),
        None,
    ),
)
"""Every adaptation, in the order :func:`install` applies them."""

_installed = False


def check_version(running: str | None = None) -> None:
    """Raise UnsupportedMitmproxy unless ``running`` (default: the imported mitmproxy's) is within SUPPORTED."""
    running = version.VERSION if running is None else running
    try:
        release = tuple(int(part) for part in running.split(".")[:2])
    except ValueError:
        release = ()
    low, high = SUPPORTED
    if not (len(release) == 2 and low <= release < high):
        raise UnsupportedMitmproxy(
            f"mitmproxy {running} is installed, but fwdproxy's adaptations of its internals were written for "
            f"{low[0]}.{low[1]}.x (see docs/mitmproxy-notes.md); install a supported one, e.g. "
            f"pip install 'mitmproxy>={low[0]}.{low[1]},<{high[0]}.{high[1]}'"
        )


def problems(patches: tuple[Patch, ...] = PATCHES) -> list[str]:
    """What no longer matches mitmproxy 12.3 in the targets (empty when every patch can be applied)."""
    found = [f"{name}: {why}" for name, why in backend.diskcache_problems()]
    for patch in patches:
        for target in patch.targets:
            if (why := _mismatch(target)) is not None:
                found.append(f"{target.where} ({patch.name}, docs/mitmproxy-notes.md {patch.section}): {why}")
    return found


def _mismatch(target: Target) -> str | None:
    if not hasattr(target.owner, target.name):
        return "missing"
    value = inspect.getattr_static(target.owner, target.name)
    if isinstance(value, staticmethod | classmethod):
        value = value.__func__
    if target.kind == "attribute":
        return None
    if target.kind == "class":
        if not inspect.isclass(value):
            return "not a class"
        func = value.__init__
    else:
        func = value
        if not inspect.isfunction(func):
            return "not a function"
        is_gen, is_coro = inspect.isgeneratorfunction(func), inspect.iscoroutinefunction(func)
        if (target.kind == "generator") != is_gen or (target.kind == "coroutine") != is_coro:
            return f"no longer a {target.kind} function"
    params = tuple(inspect.signature(func).parameters)
    if params != target.params:
        return f"parameters {params}, written for {target.params}"
    code = getattr(func, "__code__", None)
    names = set(code.co_names) if code is not None else set()
    if missing := [n for n in target.uses if n not in names]:
        return f"no longer uses {', '.join(missing)}"
    return None


def install() -> None:
    """Check the mitmproxy version and every target, then apply every patch (once per process).

    Raises UnsupportedMitmproxy, before changing anything, when the version or a target does not match.
    """
    global _installed
    check_version()
    if _installed:
        return
    if found := problems():
        raise UnsupportedMitmproxy(
            f"mitmproxy {version.VERSION} does not look like the one fwdproxy's patches were written for: "
            + "; ".join(found)
        )
    for patch in PATCHES:
        if patch.apply is not None:
            patch.apply()
    _installed = True


def applied() -> dict[str, bool]:
    """For each replaced target: is the attribute mitmproxy now holds fwdproxy's? (Tests, and a status check.)"""
    return {
        target.where: is_ours(inspect.getattr_static(target.owner, target.name))
        for patch in PATCHES
        if patch.apply is not None
        for target in patch.targets
        if target.replaced
    }
