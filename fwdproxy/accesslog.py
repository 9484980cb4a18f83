"""Access log lines: Squid's native format (so existing log tools work) or one JSON object per line."""

from __future__ import annotations

import enum
import json
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
    ms = int(rec.time * 1000)
    mime = rec.content_type.split(";", 1)[0].strip()
    return (
        f"{ms // 1000}.{ms % 1000:03d} {int(rec.elapsed * 1000):6d} {_field(rec.client)} "
        f"{squid_tag(rec)}/{rec.status:03d} {rec.bytes} {_field(rec.method)} {_field(rec.url)} - "
        f"{hierarchy(rec)} {_field(mime)}"
    )


def json_line(rec: LogRecord) -> str:
    """One JSON object; keys are stable, absent values are null."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec.time)) + f".{int(rec.time * 1000) % 1000:03d}Z"
    return json.dumps(
        {
            "time": stamp,
            "client": rec.client,
            "method": rec.method,
            "url": rec.url,
            "status": rec.status,
            "bytes": rec.bytes,
            "duration": round(rec.elapsed, 6),
            "cache_status": rec.cache_status or None,
            "outcome": rec.outcome.value,
            "upstream": rec.upstream or None,
            "server": rec.server or None,
            "tunnel": rec.tunnel.value,
            "content_type": rec.content_type or None,
            "aborted": rec.aborted,
        },
        separators=(",", ":"),
    )


def line(rec: LogRecord, fmt: LogFormat) -> str:
    """The record in the chosen format, without the newline."""
    match fmt:
        case LogFormat.SQUID:
            return squid_line(rec)
        case LogFormat.JSON:
            return json_line(rec)
        case _:
            assert_never(fmt)
