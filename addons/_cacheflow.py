"""What the cache addon holds per flow beside its exchange, and the flows it makes itself (not an addon)."""

import asyncio
from dataclasses import dataclass

from mitmproxy import connection, http

from fwdproxy import store
from fwdproxy.inflight import Flight

COLLAPSE_WAIT = 120.0
"""Seconds a collapsed request waits for each step of its leader (headers, commit) before it goes to the
origin itself; long enough for a slow registry, short enough that a hung leader does not hang everyone."""


@dataclass(slots=True)
class Held:
    """What the cache addon holds for one flow while the origin answers (the exchange holds the decisions)."""

    body: bytes | store.BodyFile | None = None
    """The selected stored body, held while the origin is asked, so a 304 or an error can be answered from it."""
    writer: store.TieredWriter | None = None
    """The store writer the body streams into (TEE)."""
    flight: Flight | None = None
    """The flight this flow leads: followers wait on it."""
    lock_fd: int | None = None
    """The cross-process lock of a leader (fwdproxy.inflight.KeyLocks)."""
    pending: asyncio.Future[None] | None = None
    """CHECK: the body check to await before looking again."""
    leader: Flight | None = None
    """FOLLOW: the flight this flow follows (None: another process fetches the key)."""


def background_copy(flow: http.HTTPFlow) -> http.HTTPFlow:
    """A new flow for the same request, without the client's conditionals, made by the proxy itself."""
    background = http.HTTPFlow(
        flow.client_conn, connection.Server(address=(flow.request.host, flow.request.port))
    )
    background.request = flow.request.copy()
    for name in (
        "If-None-Match",
        "If-Modified-Since",
        "If-Match",
        "If-Unmodified-Since",
        "If-Range",
        "Range",
    ):
        background.request.headers.pop(name, None)
    background.is_replay = "request"  # addons/access.py: not a client's request
    return background
