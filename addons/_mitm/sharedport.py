"""One listening port for several worker processes: mitmproxy's regular-mode listener with SO_REUSEPORT.

``fwdproxy run --workers N`` (fwdproxy/workers.py) starts N proxies whose listeners join one SO_REUSEPORT
group; fwdproxy/engine.py ``build`` attaches a :class:`SharedPort` to a worker's Master. Listed in the
register (addons/_mitm/__init__.py; docs/mitmproxy-notes.md §21).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mitmproxy.addons import proxyserver
from mitmproxy.proxy import mode_servers

from fwdproxy_addons._mitm.mark import marked


class SharedPort:
    """Makes the regular-mode listener join a SO_REUSEPORT group, so worker processes share one port.

    mitmproxy binds its listener itself (``AsyncioServerInstance.listen`` in proxy/mode_servers.py calls
    ``asyncio.start_server(handle_stream, host, port)``). ``Servers.update`` (addons/proxyserver.py) sends
    its ``changed`` signal after making the server instances and before starting them; there we give each
    regular-mode instance a ``listen`` that passes ``reuse_port=True``. The kernel then spreads incoming
    connections over the workers' sockets by a hash of the client address and port.
    """

    def __init__(self, servers: proxyserver.Servers) -> None:
        self.servers = servers
        servers.changed.connect(self.patch)  # a weak reference: the Master keeps us alive (see build)

    def patch(self) -> None:
        for instance in self.servers:
            if isinstance(instance, mode_servers.RegularInstance) and not instance.is_running:
                instance.listen = _shared_listener(instance)  # type: ignore[method-assign,assignment]


def _shared_listener(instance: mode_servers.RegularInstance) -> Callable[[str, int], Any]:
    @marked
    async def listen(host: str, port: int) -> list[asyncio.Server]:
        return [await asyncio.start_server(instance.handle_stream, host or None, port, reuse_port=True)]

    return listen
