"""Validation (§4.3): conditional requests, the client's own conditionals, 304 and HEAD freshening."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from fwdproxy.cache.directives import header_date
from fwdproxy.cache.headers import served_headers, storable_headers
from fwdproxy.http_model import Headers, Request, Response, StoredResponse

NOT_MODIFIED_FIELDS = (
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
    "last-modified",
)
"""RFC 9110 §15.4.5: what a 304 carries (Last-Modified helps caches without an ETag); Age is added."""

ORIGIN_PRECONDITIONS = ("if-match", "if-unmodified-since", "if-range")
"""§4.3.2: preconditions meant for the origin; a request carrying one is forwarded with its own only."""

_OWS = " \t"


def parse_etags(value: str) -> list[str]:
    """RFC 9110 §8.8.3: ``"*"`` or a list of entity-tags (``"x"``, ``W/"x"``); invalid members dropped."""
    if value.strip(_OWS) == "*":
        return ["*"]
    tags: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        start = i
        if value.startswith('W/"', i) or value.startswith('"', i):
            end = value.find('"', value.index('"', i) + 1)
            if end >= 0:
                tags.append(value[start : end + 1])
                i = end + 1
                continue
        i = value.find(",", i)
        if i < 0:
            break
    return tags


def normalize_etag(value: str | None) -> str | None:
    """One entity-tag, with quotes added to a bare token (a sloppy origin's ``abc`` means ``"abc"``)."""
    if value is None:
        return None
    text = value.strip(_OWS)
    tags = parse_etags(text)
    if len(tags) == 1 and tags[0] == text and text != "*":
        return text
    weak, bare = (True, text[2:]) if text.startswith("W/") else (False, text)
    if bare and not any(c in bare for c in '", \t'):
        return f'{"W/" if weak else ""}"{bare}"'
    return None


def _stored_etag(headers: Headers) -> str | None:
    lines = headers.get_all("etag")
    return normalize_etag(lines[0]) if lines else None


def weak_match(a: str, b: str) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison: the opaque-tags are equal."""
    return a.removeprefix("W/") == b.removeprefix("W/")


def strong_match(a: str, b: str) -> bool:
    """RFC 9110 §8.8.3.2 strong comparison: neither is weak and they are equal."""
    return not a.startswith("W/") and not b.startswith("W/") and a == b


def has_validator(headers: Headers) -> bool:
    """§4.3.1: an ETag or a valid Last-Modified to validate with."""
    return _stored_etag(headers) is not None or header_date(headers, "last-modified") is not None


def conditional_request_headers(request: Request, stored: Sequence[StoredResponse]) -> Headers:
    """§4.3.1: the request's headers with validators for the stored responses (the selected one first).

    If-None-Match gets the union of the client's entity-tags and ours (§4.3.2); If-Modified-Since gets the
    selected response's Last-Modified, replacing the client's, whose date is then checked here against
    the freshened entry (see on_not_modified). A request with If-Match, If-Unmodified-Since or If-Range
    is for the origin and is forwarded as sent.
    """
    headers = request.headers
    if any(name in headers for name in ORIGIN_PRECONDITIONS) or not stored:
        return headers
    ours = list(dict.fromkeys(t for s in stored if (t := _stored_etag(s.headers)) is not None))
    if "if-none-match" in headers:
        theirs = parse_etags(headers.get("if-none-match") or "")
        if theirs and "*" not in theirs:
            union = theirs + [t for t in ours if t not in theirs]
            headers = headers.with_("If-None-Match", ", ".join(union))
    elif ours:
        headers = headers.with_("If-None-Match", ", ".join(ours))
    last_modified = stored[0].headers.get_all("last-modified")
    if last_modified and header_date(stored[0].headers, "last-modified") is not None:
        headers = headers.with_("If-Modified-Since", last_modified[0].strip(_OWS))
    return headers


def client_conditional_matches(request: Request, stored: StoredResponse) -> bool:
    """§4.3.2: the client's If-None-Match (or, without it, If-Modified-Since) holds for ``stored``.

    True means: answer 304 (not_modified_response) instead of the stored response.
    """
    if request.method.upper() not in ("GET", "HEAD") or not 200 <= stored.status < 300:
        return False  # RFC 9110 §13.2.1: conditionals apply to a 2xx selected representation
    if "if-none-match" in request.headers:
        tags = parse_etags(request.headers.get("if-none-match") or "")
        if "*" in tags:
            return True
        etag = _stored_etag(stored.headers)
        return etag is not None and any(weak_match(t, etag) for t in tags)  # RFC 9110 §13.1.2
    since = header_date(request.headers, "if-modified-since")
    if since is None:
        return False  # RFC 9110 §13.1.3: an invalid date is ignored
    for name in ("last-modified", "date"):
        if (when := header_date(stored.headers, name)) is not None:
            return when <= since
    return stored.response_time <= since


def not_modified_response(stored: StoredResponse, *, now: float) -> Response:
    """RFC 9110 §15.4.5: a 304 for the client, with ETag, Cache-Control, Date, Expires, Vary... and Age."""
    keep = (*NOT_MODIFIED_FIELDS, "age")
    headers = served_headers(stored, now=now)
    return Response(304, Headers(tuple((k, v) for k, v in headers if k.lower() in keep)), "Not Modified")


def select_for_update(
    response: Response, candidates: Sequence[StoredResponse], *, assume_ours: bool = False
) -> list[StoredResponse]:
    """§4.3.4: the stored responses a 304 (or HEAD 200) applies to.

    A strong ETag selects every candidate with that ETag; weak validators (a W/ ETag, Last-Modified)
    select the most recent candidate matching all of them. Without any validator, a single candidate is
    selected if it has none either, or if ``assume_ours`` (only our own validators were sent: the
    origin merely left them out of its 304).
    """
    etag = _stored_etag(response.headers)
    if etag is not None and not etag.startswith("W/"):
        return [c for c in candidates if (s := _stored_etag(c.headers)) is not None and strong_match(s, etag)]
    last_modified = header_date(response.headers, "last-modified")
    if etag is None and last_modified is None:
        if len(candidates) == 1 and (assume_ours or not has_validator(candidates[0].headers)):
            return [candidates[0]]
        return []

    def matches(c: StoredResponse) -> bool:
        s = _stored_etag(c.headers)
        ok_etag = etag is None or (s is not None and weak_match(s, etag))
        ok_lm = last_modified is None or header_date(c.headers, "last-modified") == last_modified
        return ok_etag and ok_lm

    found = [c for c in candidates if matches(c)]
    return [max(found, key=lambda c: c.response_time)] if found else []


def freshen(
    stored: StoredResponse, response: Response, *, request_time: float, response_time: float
) -> StoredResponse:
    """§4.3.4: stored headers updated from a 304 (or HEAD) response.

    Every field the response carries replaces the stored one, except hop-by-hop fields and
    Content-Length (the stored body is unchanged). The stored Age and Date never survive: the new
    response_time restarts the clock, and a response without Date gets one from response_time.
    """
    incoming = storable_headers(response.headers).without("content-length")
    replaced = {k.lower() for k, _ in incoming} | {"age", "date"}
    kept = tuple((k, v) for k, v in stored.headers if k.lower() not in replaced)
    headers = storable_headers(Headers(kept + incoming.fields), response_time=response_time)
    # The recorded lifetime was computed from the old headers: the caller records the new one
    # (record_lifetime); until then the entry is explained from its headers, as an older one is.
    return dataclasses.replace(
        stored, headers=headers, request_time=request_time, response_time=response_time, lifetime=None
    )


class After304(enum.StrEnum):
    """What to send the client after the origin answered a revalidation with 304."""

    SERVE_STORED = "serve-stored"
    """Answer with the freshened stored response (status and body from the store)."""
    SEND_304 = "send-304"
    """The client's own conditional holds for the freshened entry: answer not_modified_response()."""
    PASS_THROUGH = "pass-through"
    """The 304 is about the client's own entity-tags, not ours: forward it as it is."""
    RETRY = "retry"
    """No stored response is identified: repeat the request without our validators."""


@dataclass(frozen=True, slots=True)
class NotModified:
    """The outcome of a 304 from the origin."""

    action: After304
    updated: tuple[StoredResponse, ...] = ()
    """Freshened entries to write back to the store (§4.3.4)."""
    serve: StoredResponse | None = None
    """The entry to answer from (SERVE_STORED, SEND_304)."""


def on_not_modified(
    request: Request,
    response: Response,
    candidates: Sequence[StoredResponse],
    *,
    request_time: float,
    response_time: float,
) -> NotModified:
    """§4.3.3, §4.3.4: apply a 304 to the candidates used for conditional_request_headers (selected first)."""
    client_conditional = "if-none-match" in request.headers or "if-modified-since" in request.headers
    ours_sent = any(has_validator(c.headers) for c in candidates)
    if client_conditional and not ours_sent:
        return NotModified(After304.PASS_THROUGH)  # only the client's validators went out: it is theirs
    selected = select_for_update(response, candidates, assume_ours=not client_conditional)
    if not selected:
        theirs = client_conditional and has_validator(response.headers)
        return NotModified(After304.PASS_THROUGH if theirs else After304.RETRY)
    updated = tuple(
        freshen(s, response, request_time=request_time, response_time=response_time) for s in selected
    )
    first = next((u for s, u in zip(selected, updated, strict=True) if s is candidates[0]), updated[0])
    if client_conditional and client_conditional_matches(request, first):
        return NotModified(After304.SEND_304, updated, first)
    return NotModified(After304.SERVE_STORED, updated, first)


def freshen_from_head(
    stored: StoredResponse, response: Response, *, request_time: float, response_time: float
) -> StoredResponse | None:
    """§4.3.5: a stored GET response updated from a 200 response to HEAD; None means drop it.

    Any ETag, Last-Modified or Content-Length in the HEAD response must match the stored one, else
    the stored response no longer describes the resource. Other statuses leave it unchanged.
    """
    if response.status != 200:
        return stored
    head_etag = response.headers.get_all("etag")
    if head_etag and normalize_etag(head_etag[0]) != _stored_etag(stored.headers):
        return None
    if "last-modified" in response.headers and header_date(response.headers, "last-modified") != header_date(
        stored.headers, "last-modified"
    ):
        return None
    length = response.headers.get_all("content-length")
    if length and (len(set(length)) != 1 or length[0].strip(_OWS) != str(stored.body_length)):
        return None
    return freshen(stored, response, request_time=request_time, response_time=response_time)
