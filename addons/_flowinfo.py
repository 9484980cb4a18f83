"""Facts about a finished flow that the metrics (admin.py) and the access log share (not an addon).

Both addons sit after the cache in the chain, so in their ``response`` hooks the Cache-Status field is final.
"""

import time
from collections.abc import Iterable

from mitmproxy import http
from mitmproxy.net.http import http1

from fwdproxy import target
from fwdproxy.accesslog import TunnelMode
from fwdproxy.metrics import Outcome, classify
from fwdproxy_addons._notes import notes, peek


def note_request(flow: http.HTTPFlow) -> tuple[str, str]:
    """Call in ``requestheaders`` (which runs before every ``request`` hook): remember what was asked; the
    (URL, lower-case host). The URL's authority, not the Host field: a forward proxy goes where the target
    says (RFC 9112 §3.2.2), and mitmproxy's pretty_* would re-parse Host on every call.

    The URL is the cache key's (issue 16): built from the scheme, host, port and path that are forwarded,
    never from ``request.url``, a string that an HTTP/2 :path such as "@other.host/x" makes name another host
    when parsed back."""
    noted = notes(flow)
    asked = noted.asked
    if asked is None:
        request = flow.request
        url = target.key_url(request.scheme, request.host, request.port, request.path)
        asked = noted.asked = (url, request.host.lower())
    return asked


def asked_url(flow: http.HTTPFlow) -> str:
    """The URL the client asked for (not the sidecar's, for a big hit)."""
    asked = noted.asked if (noted := peek(flow)) is not None else None
    return asked[0] if asked else flow.request.url


def asked_host(flow: http.HTTPFlow) -> str:
    asked = noted.asked if (noted := peek(flow)) is not None else None
    return asked[1] if asked else flow.request.host.lower()


def note_local(flow: http.HTTPFlow) -> None:
    """Call in the ``request`` hook of an addon placed after the cache: a response now was made here."""
    if flow.response is not None:
        notes(flow).local = True


def count_streamed(flow: http.HTTPFlow) -> None:
    """Call in ``responseheaders`` after the cache's: count the bytes of a streamed body (once per flow)."""
    resp = flow.response
    if resp is None or not resp.stream:
        return
    noted = notes(flow)
    if noted.sent is not None:
        return
    noted.sent = 0
    inner = resp.stream

    def counting(chunk: bytes) -> bytes | Iterable[bytes]:
        noted.sent = (noted.sent or 0) + len(chunk)
        return inner(chunk) if callable(inner) else chunk

    resp.stream = counting


def body_bytes(flow: http.HTTPFlow) -> int:
    """Body bytes sent to the client (streamed ones as counted, else the held body)."""
    if (noted := peek(flow)) is not None and noted.sent is not None:
        return noted.sent
    if flow.response is None or flow.request.method == "HEAD":
        return 0
    raw = flow.response.raw_content
    if raw is not None:
        return len(raw)
    try:
        return int(flow.response.headers.get("content-length", "0"))
    except ValueError:
        return 0


def sent_bytes(flow: http.HTTPFlow) -> int:
    """Head plus body, as Squid counts a reply (HTTP/1 framing; close enough for HTTP/2)."""
    if flow.response is None:
        return 0
    try:
        head = len(http1.assemble_response_head(flow.response))
    except ValueError:
        head = 0
    return head + body_bytes(flow)


def outcome(flow: http.HTTPFlow) -> Outcome:
    """What the cache did, from the Cache-Status it set."""
    return classify(field(flow.response.headers, b"cache-status") if flow.response else None)


def field(headers: http.Headers, lower_name: bytes) -> str | None:
    """``headers.get(name)`` (every line joined with ", "), reading the raw fields: mitmproxy's get()
    converts the name of every field to look one up, several times slower on a hit's path."""
    values = [value for name, value in headers.fields if name.lower() == lower_name]
    if not values:
        return None
    return (values[0] if len(values) == 1 else b", ".join(values)).decode("utf-8", "surrogateescape")


def is_local(flow: http.HTTPFlow, result: Outcome) -> bool:
    """Answered by the proxy itself, neither from the cache nor by an origin."""
    noted = peek(flow)
    return result is Outcome.NONE and noted is not None and (noted.local or bool(noted.error))


def ttfb(flow: http.HTTPFlow, result: Outcome) -> float | None:
    """Seconds from the end of the request to the origin's first response byte; None when none was asked."""
    if result in (Outcome.HIT, Outcome.STALE, Outcome.COLLAPSED) or is_local(flow, result):
        return None
    resp = flow.response
    start = flow.request.timestamp_end or flow.request.timestamp_start
    if resp is None or not resp.timestamp_start or not start:
        return None
    return max(0.0, resp.timestamp_start - start)


def upstream(flow: http.HTTPFlow) -> str:
    """host:port of the upstream proxy this flow went through, "" when direct."""
    via = flow.server_conn.via
    if via is None:
        return ""
    host, port = via[1]
    return f"{host}:{port}"


def server(flow: http.HTTPFlow) -> str:
    """The origin address the flow's connection reached ("" when none)."""
    peer = flow.server_conn.peername
    return str(peer[0]) if peer else ""


def client_ip(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    return str(peer[0]) if peer else ""


def tunnel_mode(flow: http.HTTPFlow) -> TunnelMode:
    """Intercepted when the request came through a CONNECT tunnel whose TLS we terminated."""
    if flow.request.scheme == "https" and flow.client_conn.tls_established:
        return TunnelMode.INTERCEPTED
    return TunnelMode.NONE


def started(flow: http.HTTPFlow) -> float:
    return flow.request.timestamp_start or time.time()


def elapsed(flow: http.HTTPFlow) -> float:
    end = (flow.response.timestamp_end if flow.response else None) or time.time()
    return max(0.0, end - started(flow))
