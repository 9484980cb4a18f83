"""Answers the cache addon makes itself: from a stored entry, from a leader's growing body, or a 504 (not an addon)."""

import logging
import secrets
import time

from mitmproxy import connection, http

from fwdproxy import cache, ranges
from fwdproxy import store as storage
from fwdproxy.bodysource import FileBody, GrowingBody
from fwdproxy.cache import CacheStatus
from fwdproxy.cache.answer import answer, range_of
from fwdproxy.cache.exchange import Exchange
from fwdproxy.cache.key import vary_matches
from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.inflight import Flight
from fwdproxy.sidecar import Sidecar, response_head
from fwdproxy.store.fleet import Growing
from fwdproxy_addons import _respond
from fwdproxy_addons._cachehttp import make_response, read_body
from fwdproxy_addons._notes import notes

log = logging.getLogger("fwdproxy.cache")


def serve(
    flow: http.HTTPFlow,
    ex: Exchange,
    meta: StoredResponse,
    body: bytes | storage.BodyFile,
    status: CacheStatus,
    now: float,
    sidecar: Sidecar | None,
    *,
    stream: bool = True,
) -> None:
    """Answer from a stored entry: in memory, or through the sidecar when the body is a file (``stream``:
    only before the flow has gone to the origin)."""
    ans = answer(ex.request, meta, body, now)
    if ans.file is not None and sidecar is not None and stream:
        head = response_head(ans.status, ans.reason, [*ans.headers, ("Cache-Status", cache.render(status))])
        try:
            token = sidecar.offer(head, FileBody(ans.file.file, ans.parts))
        except (OSError, ValueError) as e:
            log.warning("cannot stream %s from disk: %s", ex.request.url, e)
        else:
            repoint(flow, sidecar.port, token)
            return
    content = ans.content if ans.file is None else read_body(ans.file)  # no sidecar (tests): read it
    if ans.parts is not None:
        content = b"".join(p if isinstance(p, bytes) else content[p.start : p.end + 1] for p in ans.parts)
    flow.response = make_response(
        ans.status, ans.reason, ans.headers, content, status, now, stable=ans.stable and ans.parts is None
    )


def repoint(flow: http.HTTPFlow, port: int, token: str) -> None:
    """Send the flow to the sidecar, which streams the body like an origin would (mitmproxy-notes §4)."""
    flow.request.scheme = "http"
    flow.request.host = "127.0.0.1"
    flow.request.port = port
    flow.request.path = "/" + token
    flow.server_conn = connection.Server(address=("127.0.0.1", port))
    notes(flow).sidecar = True


def can_tail(ex: Exchange, flight: Flight, sidecar: Sidecar | None) -> bool:
    """Whether a follower can read the leader's growing body as it is: same variant, a sidecar, and the whole
    body or ranges of it (a 416 waits for the stored entry)."""
    return (
        sidecar is not None
        and flight.meta is not None
        and vary_matches(flight.meta, ex.request)
        and not isinstance(range_of(ex.request, flight.meta), ranges.Unsatisfiable)
        and not cache.client_conditional_matches(ex.request, flight.meta)
    )


def tail(flow: http.HTTPFlow, ex: Exchange, flight: Flight, sidecar: Sidecar) -> bool:
    """Serve a follower from the leader's temp file while it grows (Squid's collapsed forwarding)."""
    assert flight.meta is not None and flight.progress is not None
    if flight.path is None or flight.progress.failed:
        return False
    meta = flight.meta
    status = ex.collapsed_status(meta.status)
    headers = cache.served_headers(meta, now=time.time())
    code, reason, parts = meta.status, meta.reason, None
    if isinstance(wanted := range_of(ex.request, meta), ranges.Partial):
        # A range of the body on its way: a 206 whose parts wait for their bytes (uv's parallel ranges
        # behind one whole fetch, --range-fetch-whole-below).
        layout = ranges.partial_body(
            wanted, meta.body_length, meta.headers.get("content-type"), secrets.token_hex(16)
        )
        kept = headers.without("content-length", "content-range", *(k for k, _ in layout.headers))
        headers, parts = Headers(kept.fields + layout.headers.fields), layout.parts
        code, reason = 206, "Partial Content"
    else:
        headers = headers.with_("Content-Length", str(meta.body_length))
    head = response_head(code, reason, [*headers, ("Cache-Status", cache.render(status))])
    try:
        token = sidecar.offer(head, GrowingBody(flight.path, flight.progress, parts))
    except (OSError, ValueError) as e:  # the temp file was committed (renamed) meanwhile
        log.debug("cannot tail %s: %s", flight.path, e)
        return False
    repoint(flow, sidecar.port, token)
    return True


def stream_growing(flow: http.HTTPFlow, ex: Exchange, growing: Growing, sidecar: Sidecar | None) -> bool:
    """Serve a big shared hit while it is copied in (issue 20), as ``tail`` serves a leader's body: every byte
    sent was checked against its chunk's digest; a copy that fails cuts the transfer (never a wrong byte).
    False when it cannot be offered (no sidecar, or the copy was committed meanwhile)."""
    if sidecar is None:
        return False
    meta = growing.meta
    headers = cache.served_headers(meta, now=time.time()).with_("Content-Length", str(meta.body_length))
    head = response_head(meta.status, meta.reason, [*headers, ("Cache-Status", cache.render(ex.status()))])
    try:
        token = sidecar.offer(head, GrowingBody(growing.path, growing.progress))
    except (OSError, ValueError) as e:  # committed (renamed) meanwhile: the local copy answers
        log.debug("cannot stream %s from the shared tier: %s", ex.request.url, e)
        return False
    repoint(flow, sidecar.port, token)
    return True


def gateway_timeout(flow: http.HTTPFlow, ex: Exchange) -> None:
    """§5.2.1.7 only-if-cached, or --offline: nothing usable is stored and the origin may not be asked."""
    flow.response = _respond.text(504, f"{ex.request.url} is not in the cache ({ex.reason})")
    flow.response.headers["Cache-Status"] = cache.render(ex.reject_status())
