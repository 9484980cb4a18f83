"""What the addons note about one flow for each other: one typed record under one flow.metadata key (not an addon).

Every fact an addon leaves on a flow for another addon (or for its own later hooks) is a field of FlowNotes;
no other module reads or writes ``flow.metadata``. ``notes(flow)`` makes the record on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mitmproxy import http

if TYPE_CHECKING:
    from fwdproxy.cache.exchange import Exchange
    from fwdproxy.cache.filling import Held
    from fwdproxy.cache.piecing import Capture
    from fwdproxy.inflight import Flight

KEY = "fwd"
"""The one flow.metadata key fwdproxy uses."""


@dataclass(slots=True)
class FlowNotes:
    """Facts about one flow, each written by one addon (named) and read by the ones after it."""

    asked: tuple[str, str] | None = None
    """_flowinfo: (URL, lower-case host) as the client asked, before the cache may re-point a big hit at its
    sidecar."""
    local: bool = False
    """_flowinfo: the response existed before the request left the proxy (403, cache hit, PURGE, …)."""
    sent: int | None = None
    """_flowinfo: body bytes of a streamed response, counted as they pass (None: not streamed)."""
    admin: bool = False
    """admin: answered by the Admin addon (PURGE, http://fwdproxy.local/); not a proxied request."""
    error: str | None = None
    """errors, readtimeout: the origin could not be reached and the response is ours (a 502/504 the cache may
    replace with a stored one); the text says why."""
    excess: bool = False
    """guard: the origin sent bytes past the end its framing announced (the framed message was kept and the
    origin connection closed, addons/_http1.py)."""
    sidecar: bool = False
    """cache: re-pointed at the cache's sidecar; stays local: no probe, no upstream, no read timeout, no
    storing."""
    cache: Exchange | None = None
    """cache: the flow's exchange (fwdproxy/cache/exchange.py): where it is and what was decided."""
    held: Held | None = None
    """cache: what it holds for the flow while the origin answers (a stored body, a writer, a flight)."""
    background: bool = False
    """cache: our own background revalidation (RFC 5861 §3)."""
    shared_tried: bool = False
    """cache: this request looked in the fleet's shared tier on a local miss (issue 20; once per flow)."""
    shared_hit: bool = False
    """cache: that look copied the entry into the local tiers: the hit that follows says ``detail=shared``."""
    resume: FlowNotes | None = None
    """cache: our own Range request finishing a body whose leader's client left: the leader's notes."""
    whole: tuple[Flight, int | None] | None = None
    """cache: our own whole fetch for range requests on a miss: the flight it leads and its lock descriptor,
    taken over when the cache sees it (--range-fetch-whole-below)."""
    pieces: Capture | None = None
    """cache: the bytes of an origin 206 being kept as a piece of a partial entry as they stream."""
    egress: Any = None
    """egress: the upstream proxy chosen for the flow (its Chosen record; typed loosely so that this module
    imports no addon that imports it)."""


def notes(flow: http.HTTPFlow) -> FlowNotes:
    """The flow's notes, made on first use."""
    found: FlowNotes | None = flow.metadata.get(KEY)
    if found is None:
        found = flow.metadata[KEY] = FlowNotes()
    return found


def peek(flow: http.HTTPFlow) -> FlowNotes | None:
    """The flow's notes if any addon wrote some (reading needs no record)."""
    return flow.metadata.get(KEY)
