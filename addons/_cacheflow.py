"""Per-flow cache state the cache addon keeps in the flow notes (addons/_notes.py; not an addon)."""

from dataclasses import dataclass, field

from mitmproxy import connection, http

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from fwdproxy import store
from fwdproxy.cache import LookupDecision
from fwdproxy.cache.status import CACHE_NAME
from fwdproxy.http_model import Headers, Request, StoredResponse
from fwdproxy.inflight import Flight

REMOTE = object()
"""_lookup's answer when another process is fetching the key."""
COLLAPSE_WAIT = 120.0
"""Seconds a collapsed request waits for each step of its leader (headers, commit) before it goes to the
origin itself; long enough for a slow registry, short enough that a hung leader does not hang everyone."""


@dataclass
class CacheFlow:
    """What the request hook learnt about one flow, for the response hooks."""

    request: Request
    """The request as the cache saw it (before validators were added)."""
    decision: LookupDecision
    primary: str = ""
    candidates: list[tuple[str, StoredResponse]] = field(default_factory=list)
    """Stored responses our validators were taken from, the selected one first (§4.3.1)."""
    body: bytes | store.BodyFile | None = None
    """The selected stored body, held while the origin is asked, so a 304 or an error can be answered from it."""
    request_time: float = 0.0
    served: bool = False
    """Answered by the cache: the response hooks leave the flow alone."""
    writer: store.TieredWriter | None = None
    key: str = ""
    complete: bool = False
    stored: bool = False
    """The response (or a 304's refresh) reached the store."""
    fwd_status: int | None = None
    """The status the next hop answered with (RFC 9211 fwd-status)."""
    lock_fd: int | None = None
    """The cross-process lock of a leader (fwdproxy.inflight.KeyLocks)."""
    flight: Flight | None = None
    """Set when this flow leads a collapsed request: followers wait on it."""
    whole_for_range: bool = False
    """Our own whole fetch for waiting range requests (--range-fetch-whole-below): given up when the body is
    bigger than that, or of unannounced length."""


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


def without_our_status(headers: Headers) -> Headers:
    """The fields minus our own Cache-Status member (set on streamed responses before they are stored);
    members of caches in front of the origin are kept (RFC 9211 §2: each cache adds its own)."""
    lines = headers.get_all("cache-status")
    if not any(CACHE_NAME in line for line in lines):
        return headers
    kept = [m.strip() for line in lines for m in line.split(",") if not m.strip().startswith(CACHE_NAME)]
    out = headers.without("cache-status")
    return out.with_("Cache-Status", ", ".join(kept)) if kept else out
