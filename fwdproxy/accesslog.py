"""Access log lines: Squid's native format (so existing log tools work) or one JSON object per line."""

from __future__ import annotations

import enum
import functools
import json
import math
import time
from dataclasses import dataclass
from typing import assert_never

from fwdproxy.metrics import FROM_CACHE, Outcome, cache_status_params


class LogFormat(enum.StrEnum):
    SQUID = "squid"
    JSON = "json"


class TunnelMode(enum.StrEnum):
    """How the client's connection reached the request: the json format's "tunnel"."""

    NONE = "none"
    """Plain HTTP in absolute form, no CONNECT."""
    INTERCEPTED = "intercepted"
    """Inside a CONNECT tunnel whose TLS the proxy terminated (so it could cache)."""
    PASSTHROUGH = "passthrough"
    """A CONNECT tunnel relayed blindly; logged once, when it closes."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One line's worth of facts about an answered (or abandoned) request."""

    time: float
    """When the request started, epoch seconds."""
    elapsed: float
    """Seconds until the response was sent (or the tunnel closed)."""
    client: str
    method: str
    url: str
    """Absolute URL; host:port for CONNECT."""
    status: int
    """0 when no response was sent (aborted)."""
    bytes: int
    """Bytes sent to the client: response head and body."""
    outcome: Outcome
    cache_status: str = ""
    """The Cache-Status field as sent, "" when none."""
    upstream: str = ""
    """host:port of the upstream proxy used, "" when direct (or not forwarded at all)."""
    server: str = ""
    """Address of the origin connection, "" when none was used."""
    content_type: str = ""
    tunnel: TunnelMode = TunnelMode.NONE
    local: bool = False
    """Answered by the proxy itself (403/407, readable 502/504, PURGE, the status page)."""
    aborted: bool = False
    """The exchange failed before a whole response reached the client."""


def squid_tag(rec: LogRecord) -> str:
    """Squid's result code (%Ss), e.g. TCP_HIT, TCP_REFRESH_UNMODIFIED, TCP_DENIED, TCP_TUNNEL."""
    params = cache_status_params(rec.cache_status) or {}
    if rec.local or rec.method == "CONNECT":
        if rec.status in (403, 407):
            tag = "TCP_DENIED"
        elif rec.method == "CONNECT":
            tag = "TCP_TUNNEL" if rec.tunnel is TunnelMode.PASSTHROUGH else "NONE_NONE"
        else:
            tag = "TCP_MISS" if rec.status >= 500 else "NONE_NONE"
    else:
        match rec.outcome:
            case Outcome.HIT:
                tag = (
                    "TCP_IMS_HIT"
                    if rec.status == 304
                    else "TCP_NEGATIVE_HIT"
                    if rec.status >= 400
                    else "TCP_HIT"
                )
            case Outcome.STALE:
                tag = "TCP_REFRESH_FAIL_OLD" if params.get("detail") == "stale-if-error" else "TCP_HIT"
            case Outcome.REVALIDATED:
                tag = "TCP_REFRESH_UNMODIFIED"
            case Outcome.COLLAPSED:
                tag = "TCP_CF_HIT"
            case Outcome.REFRESH:
                tag = "TCP_REFRESH_MODIFIED"
            case Outcome.MISS:
                tag = "TCP_CLIENT_REFRESH_MISS" if params.get("fwd") == "request" else "TCP_MISS"
            case Outcome.BYPASS | Outcome.NONE:
                tag = "TCP_MISS"
    return tag + "_ABORTED" if rec.aborted else tag


def hierarchy(rec: LogRecord) -> str:
    """Squid's %Sh/%<a: where the response came from."""
    if rec.local or rec.outcome in FROM_CACHE or (not rec.server and not rec.upstream):
        return "HIER_NONE/-"
    if rec.upstream:
        return f"FIRSTUP_PARENT/{rec.upstream}"
    return f"HIER_DIRECT/{rec.server}"


def _field(value: str) -> str:
    """A space-free log field ("-" when empty), as Squid writes them."""
    return value.replace(" ", "%20") if value else "-"


def squid_line(rec: LogRecord) -> str:
    """``time.ms elapsed client code/status bytes method URL user hierarchy/peer type`` (Squid's "squid")."""
    return _squid_head(rec.time, rec.elapsed, rec.client) + _squid_rest(
        rec.method, rec.url, rec.status, rec.bytes, rec.outcome, rec.cache_status,
        rec.upstream, rec.server, rec.content_type, rec.tunnel, rec.local, rec.aborted,
    )  # fmt: skip


def _squid_head(when: float, elapsed: float, client: str) -> str:
    ms = int(when * 1000)
    # printf-style: half the time of the f-string's format specs, on every logged request.
    return "%d.%03d %6d %s " % (ms // 1000, ms % 1000, int(elapsed * 1000), _field(client))  # noqa: UP031


LINE_MEMO = 4096
"""Ends of lines remembered (each a few hundred bytes): a hit's line differs from the last one for the same
answer only in its time, duration and client, and building the rest costs more than writing it."""


@functools.lru_cache(maxsize=LINE_MEMO)
def _squid_rest(
    method: str, url: str, status: int, size: int, outcome: Outcome, cache_status: str,
    upstream: str, server: str, content_type: str, tunnel: TunnelMode, local: bool, aborted: bool,
) -> str:  # fmt: skip
    """A squid line after its client field: everything of the record but its time, duration and client."""
    rec = LogRecord(
        0.0, 0.0, "", method, url, status, size, outcome, cache_status, upstream, server, content_type, tunnel,
        local, aborted,
    )  # fmt: skip
    mime = content_type.split(";", 1)[0].strip()
    return f"{squid_tag(rec)}/{status:03d} {size} {_field(method)} {_field(url)} - {hierarchy(rec)} {_field(mime)}"


def json_line(rec: LogRecord) -> str:
    """One JSON object; keys are stable, absent values are null."""
    # json.dumps of the whole object (separators "," and ":") is its members' texts joined in order: the
    # members that change per request are made here, the others come remembered.
    return (
        _json_head(rec.time, rec.client)
        + _json_middle(rec.method, rec.url, rec.status, rec.bytes)
        + _json_duration(rec.elapsed)
        + _json_rest(
            rec.cache_status, rec.outcome, rec.upstream, rec.server, rec.tunnel, rec.content_type, rec.aborted
        )
    )


def _json_head(when: float, client: str) -> str:
    stamp, ms, text = _stamp(int(when)), int(when * 1000) % 1000, _json_string(client)
    return '{"time":"%s.%03dZ","client":%s,' % (stamp, ms, text)  # noqa: UP031 (as _squid_head)


@functools.lru_cache(maxsize=1024)
def _json_string(text: str) -> str:
    return json.dumps(text)  # clients repeat: their address is encoded once


def _json_duration(elapsed: float) -> str:
    rounded = round(elapsed, 6)
    # json writes a finite float as its repr (and an int as its repr), only much slower.
    text = repr(rounded) if type(rounded) in (float, int) and math.isfinite(rounded) else json.dumps(rounded)
    return f'"duration":{text},'


@functools.lru_cache(maxsize=64)
def _stamp(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


@functools.lru_cache(maxsize=LINE_MEMO)
def _json_middle(method: str, url: str, status: int, size: int) -> str:
    return (
        json.dumps({"method": method, "url": url, "status": status, "bytes": size}, separators=(",", ":"))[
            1:-1
        ]
        + ","
    )


@functools.lru_cache(maxsize=LINE_MEMO)
def _json_rest(
    cache_status: str, outcome: Outcome, upstream: str, server: str, tunnel: TunnelMode, content_type: str, aborted: bool
) -> str:  # fmt: skip
    return json.dumps(
        {
            "cache_status": cache_status or None,
            "outcome": outcome.value,
            "upstream": upstream or None,
            "server": server or None,
            "tunnel": tunnel.value,
            "content_type": content_type or None,
            "aborted": aborted,
        },
        separators=(",", ":"),
    )[1:]


def line(rec: LogRecord, fmt: LogFormat) -> str:
    """The record in the chosen format, without the newline."""
    match fmt:
        case LogFormat.SQUID:
            return squid_line(rec)
        case LogFormat.JSON:
            return json_line(rec)
        case _:
            assert_never(fmt)


@dataclass(frozen=True, slots=True)
class Repeat:
    """A record whose line is written again for other requests answered the same way, which differ only in
    their time, duration and client (the fast hit layer's kept responses): the rest of the line is made once."""

    record: LogRecord
    fmt: LogFormat
    middle: str
    """JSON: the members between the client and the duration; squid: ""."""
    rest: str
    """The line after the last per-request field."""


def repeat(rec: LogRecord, fmt: LogFormat) -> Repeat:
    """What ``repeat_line`` needs to write ``rec``'s line for another time, duration and client."""
    match fmt:
        case LogFormat.SQUID:
            return Repeat(
                rec, fmt, "", squid_line(rec)[len(_squid_head(rec.time, rec.elapsed, rec.client)) :]
            )
        case LogFormat.JSON:
            middle = _json_middle(rec.method, rec.url, rec.status, rec.bytes)
            rest = _json_rest(
                rec.cache_status,
                rec.outcome,
                rec.upstream,
                rec.server,
                rec.tunnel,
                rec.content_type,
                rec.aborted,
            )
            return Repeat(rec, fmt, middle, rest)
        case _:
            assert_never(fmt)


def repeat_line(rep: Repeat, when: float, elapsed: float, client: str) -> str:
    """``line(rec, fmt)`` of the repeated record with this time, duration and client."""
    if rep.fmt is LogFormat.SQUID:
        return _squid_head(when, elapsed, client) + rep.rest
    return _json_head(when, client) + rep.middle + _json_duration(elapsed) + rep.rest
