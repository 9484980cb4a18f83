"""Readable origin errors: DNS failure, refused connection and timeout become plain-text 502/504 naming the host."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1, _http2

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons import _respond
from fwdproxy import errors
from fwdproxy.units import parse_duration

log = logging.getLogger("fwdproxy.errors")

GOOD_FOR = 30.0
"""Seconds an origin address counts as reachable after a connection to it worked. Within that window no probe
is made, so a busy origin costs one probe connection per half minute, not one per request."""


def _plain_error_response(status_code: int, message: str = "") -> bytes:
    """Stands in for mitmproxy's HTML error page on HTTP/1 (errors found after our probe, e.g. origin TLS)."""
    resp = _respond.text(
        status_code, message or _respond.REASONS.get(status_code, "error"), {"Connection": "close"}
    )
    return http1.assemble_response(resp)


def _plain_error_body(status_code: int, message: str) -> bytes:
    """Stands in for mitmproxy's HTML error body on HTTP/2 (mitmproxy still labels it text/html): one line
    that names fwdproxy, as on HTTP/1, e.g. for an origin certificate that does not cover the host asked for."""
    return f"fwdproxy: {message or _respond.REASONS.get(status_code, 'error')}\n".encode()


class OriginErrors:
    """Checks that an origin accepts connections before mitmproxy connects, so failures get a clear answer.

    mitmproxy reports a failed origin connection with an HTML page that often omits the host, and waits for the
    operating system's connect timeout (minutes). A short probe on the first request to an address answers
    DNS failures, refusals and timeouts ourselves, for HTTP/1 and HTTP/2 clients alike.
    """

    def __init__(self) -> None:
        self.timeout = 10.0
        self.good_until: dict[tuple[str, int], float] = {}

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "fwd_connect_timeout",
            str,
            "10s",
            "How long to wait for an origin to accept a connection (504 after).",
        )
        _http1.make_error_response = _plain_error_response
        # _http2 imported format_error from _base; its error responses call it by that module-level name.
        _http2.format_error = _plain_error_body  # type: ignore[attr-defined]

    def configure(self, updated: set[str]) -> None:
        if "fwd_connect_timeout" in updated:
            try:
                self.timeout = parse_duration(ctx.options.fwd_connect_timeout)
            except ValueError as e:
                raise exceptions.OptionsError(f"fwd_connect_timeout: {e}") from e

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """A coroutine probing the origin, or None when no probe is needed (sync for hits and known origins)."""
        if (
            flow.response is not None
            or flow.server_conn.via is not None
            or flow.server_conn.connected
            or flow.metadata.get("fwd_sidecar")
        ):
            return None
        address = (flow.request.host, flow.request.port)
        now = time.monotonic()
        # A flow with a stale entry behind it (the cache set fwd_probe) is always probed: if the origin is down,
        # the cache can still answer from that entry (RFC 5861 stale-if-error), which mitmproxy's own
        # connection error would not let it do.
        if self.good_until.get(address, 0.0) > now and not flow.metadata.get("fwd_probe"):
            return None
        return self._probe(flow, address, now)

    async def _probe(self, flow: http.HTTPFlow, address: tuple[str, int], now: float) -> None:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(*address), self.timeout)
        except (OSError, TimeoutError) as e:
            status, message = errors.describe_connect_error(address[0], address[1], e, self.timeout)
            log.info("%s %s: %s", flow.request.method, flow.request.pretty_url, message)
            flow.response = _respond.text(status, message)
            flow.metadata["fwd_error"] = message
            return
        writer.close()
        if len(self.good_until) > 10_000:
            self.good_until = {k: v for k, v in self.good_until.items() if v > now}
        self.good_until[address] = now + GOOD_FOR

    def response(self, flow: http.HTTPFlow) -> None:
        if (
            flow.server_conn.via is None
            and flow.server_conn.timestamp_start
            and "fwd_error" not in flow.metadata
        ):
            self.good_until[(flow.request.host, flow.request.port)] = time.monotonic() + GOOD_FOR

    def error(self, flow: http.HTTPFlow) -> None:
        self.good_until.pop((flow.request.host, flow.request.port), None)
        if flow.error and flow.request.host:
            log.info("%s %s failed: %s", flow.request.method, flow.request.pretty_url, flow.error.msg)


addons = [OriginErrors()]
