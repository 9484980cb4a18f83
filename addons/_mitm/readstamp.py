"""A patch to mitmproxy's connection handler (not an addon): the time of each connection's last read.

mitmproxy keeps no such time per connection; its own ``tcp_timeout`` watches a client's whole handler, 10
minutes by default. ``ConnectionHandler.server_event`` is wrapped to stamp the connection of every
``DataReceived`` with ``time.monotonic()`` (attribute :data:`LAST_READ`), which the read-timeout addon
(addons/readtimeout.py) compares with its clock. :func:`apply` makes the change; addons/_mitm/__init__.py
calls it once per process, after checking the target (docs/mitmproxy-notes.md §19).
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

from mitmproxy.proxy import events, server

from fwdproxy_addons._mitm.mark import marked

LAST_READ = "fwd_last_read"
"""Attribute set on every mitmproxy Connection when bytes arrive on it: time.monotonic() of the last read."""


def apply() -> None:
    """Wrap ``ConnectionHandler.server_event``."""
    handler = server.ConnectionHandler
    original = handler.server_event

    @marked
    def server_event(self: server.ConnectionHandler, event: events.Event) -> Coroutine[Any, Any, None]:
        # A plain function handing back the original coroutine: no extra coroutine frame per event.
        if type(event) is events.DataReceived:
            setattr(event.connection, LAST_READ, time.monotonic())
        return original(self, event)

    handler.server_event = server_event  # type: ignore[method-assign]
