"""The access log: one line per request (and per CONNECT tunnel) in Squid's format or JSON, written in batches."""

# No `from __future__ import annotations`: mitmdump -s executes this file outside sys.modules.
import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import time
from typing import TextIO

from mitmproxy import exceptions, http, tls

from fwdproxy import accesslog, logs
from fwdproxy.accesslog import LogFormat, LogRecord, TunnelMode
from fwdproxy.metrics import Outcome
from fwdproxy_addons import _flowinfo
from fwdproxy_addons._notes import peek
from fwdproxy_addons._settings import SettingsSource

log = logging.getLogger("fwdproxy.accesslog")
requests_log = logging.getLogger(logs.REQUESTS)
"""-v: one line per request on stderr, whether or not an access log file is kept."""

FLUSH_EVERY = 1.0
"""Seconds between flushes: `tail -f` stays live while a busy proxy makes one write per second, not per line."""
BUFFER = 1 << 16


class AccessLog:
    """Writes a line for every answered request once its response is final (so it sits after the cache)."""

    def __init__(self, source: SettingsSource | None = None) -> None:
        self.source = source or SettingsSource()
        self.target: str | None = None
        """The --access-log file now open ("-": stderr; None: none)."""
        self.out: TextIO | None = None
        self.owned = False
        """The file is ours to close (not stderr)."""
        self.format = LogFormat.SQUID
        self.tunnels: dict[str, list[tuple[http.HTTPFlow, float]]] = {}
        """Client connection id → its open CONNECT tunnels (logged when the connection closes)."""
        self.passthrough: set[str] = set()
        """Client connections whose tunnel is relayed blindly."""
        self.flusher: asyncio.Task[None] | None = None

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(loader, "fwd_access_log", "fwd_log_format")

    def configure(self, updated: set[str]) -> None:
        s = self.source.current()
        self.format = LogFormat(s.log_format)
        if s.access_log != self.target:
            self._close()
            self.target = target = s.access_log
            if target == "-":
                self.out = sys.stderr
            elif target:
                path = os.path.expanduser(target)
                try:
                    self.out = open(path, "a", buffering=BUFFER, encoding="utf-8")
                except OSError as e:
                    self.target = None
                    raise exceptions.OptionsError(
                        f"fwd_access_log: cannot open {path} for appending: {e.strerror}"
                    ) from e
                self.owned = True

    def running(self) -> None:
        self.flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    def done(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
        for client_id in list(self.tunnels):
            self._log_tunnels(client_id)
        self._close()

    def _close(self) -> None:
        if self.out is not None:
            with contextlib.suppress(OSError):
                self.out.flush()
                if self.owned:
                    self.out.close()
        self.out, self.owned = None, False

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            if self.out is not None:
                try:
                    self.out.flush()
                except OSError as e:
                    log.warning("cannot write the access log: %s", e.strerror)

    def _write(self, rec: LogRecord) -> None:
        if self.out is None:
            return
        try:
            self.out.write(accesslog.line(rec, self.format) + "\n")
        except OSError as e:
            log.warning("cannot write the access log: %s", e.strerror)

    # -- hooks ----------------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        _flowinfo.note_request(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        _flowinfo.note_local(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        _flowinfo.count_streamed(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        if self.out is not None and not flow.is_replay:
            self._write(self._record(flow))
        if requests_log.isEnabledFor(logging.INFO):
            _log_request(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if self.out is not None and not flow.is_replay and flow.request.method != "CONNECT":
            self._write(self._record(flow, aborted=True))
        if requests_log.isEnabledFor(logging.INFO):
            _log_request(flow, flow.error.msg if flow.error else "failed")

    def wanted(self) -> bool:
        """Whether answered requests are logged at all (a file, or -v)."""
        return self.out is not None or requests_log.isEnabledFor(logging.INFO)

    def record(self, rec: LogRecord) -> None:
        """Log a request answered without a flow (the fast hit layer, addons/fasthit.py): the same line and
        -v line as ``response`` writes for a flow."""
        if self.out is not None:
            self._write(rec)
        if requests_log.isEnabledFor(logging.INFO):
            _request_line(rec.method, rec.url, str(rec.status), rec.cache_status or "-", rec.elapsed)

    def repeat(self, rec: LogRecord) -> accesslog.Repeat:
        """``rec`` made ready to be logged again with another time, duration and client (``record_repeat``)."""
        return accesslog.repeat(rec, self.format)

    def record_repeat(self, rep: accesslog.Repeat, when: float, elapsed: float, client: str) -> None:
        """``record`` of the repeated record with this time, duration and client, without making a record
        (the fast hit layer answering the same response again)."""
        rec = rep.record
        if self.out is not None:
            if rep.fmt is self.format:
                text = accesslog.repeat_line(rep, when, elapsed, client)
            else:  # the format changed since the repeat was made
                text = accesslog.line(
                    dataclasses.replace(rec, time=when, elapsed=elapsed, client=client), self.format
                )
            try:
                self.out.write(text + "\n")
            except OSError as e:
                log.warning("cannot write the access log: %s", e.strerror)
        if requests_log.isEnabledFor(logging.INFO):
            _request_line(rec.method, rec.url, str(rec.status), rec.cache_status or "-", elapsed)

    def _record(self, flow: http.HTTPFlow, aborted: bool = False) -> LogRecord:
        result = _flowinfo.outcome(flow)
        resp = flow.response
        return LogRecord(
            time=_flowinfo.started(flow),
            elapsed=_flowinfo.elapsed(flow),
            client=_flowinfo.client_ip(flow),
            method=flow.request.method,
            url=_flowinfo.asked_url(flow),
            status=0 if aborted or resp is None else resp.status_code,
            bytes=0 if aborted else _flowinfo.sent_bytes(flow),
            outcome=result,
            cache_status=resp.headers.get("cache-status", "") if resp else "",
            upstream=_flowinfo.upstream(flow),
            server=_flowinfo.server(flow) if _flowinfo.ttfb(flow, result) is not None else "",
            content_type=resp.headers.get("content-type", "") if resp else "",
            tunnel=_flowinfo.tunnel_mode(flow),
            local=_flowinfo.is_local(flow, result) or ((noted := peek(flow)) is not None and noted.admin),
            aborted=aborted,
        )

    def http_connected(self, flow: http.HTTPFlow) -> None:
        self.tunnels.setdefault(flow.client_conn.id, []).append((flow, time.time()))

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        if self.out is not None:  # refused (403/407): no tunnel follows
            self._write(self._connect_record(flow, time.time(), TunnelMode.NONE))

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if data.ignore_connection:  # decided by the tunnel addon, earlier in the chain
            self.passthrough.add(data.context.client.id)

    def client_disconnected(self, client) -> None:  # type: ignore[no-untyped-def]
        self._log_tunnels(client.id)

    def _log_tunnels(self, client_id: str) -> None:
        mode = TunnelMode.PASSTHROUGH if client_id in self.passthrough else TunnelMode.INTERCEPTED
        self.passthrough.discard(client_id)
        for flow, _ in self.tunnels.pop(client_id, []):
            if self.out is not None:
                self._write(self._connect_record(flow, time.time(), mode))

    def _connect_record(self, flow: http.HTTPFlow, end: float, mode: TunnelMode) -> LogRecord:
        status = flow.response.status_code if flow.response else 0
        return LogRecord(
            time=_flowinfo.started(flow),
            elapsed=max(0.0, end - _flowinfo.started(flow)),
            client=_flowinfo.client_ip(flow),
            method="CONNECT",
            url=f"{flow.request.host}:{flow.request.port}",
            status=status,
            bytes=0,  # passthrough tunnels raise no hooks per chunk (mitmproxy-notes §6): size unknown
            outcome=Outcome.NONE,
            server=_flowinfo.server(flow) if mode is TunnelMode.PASSTHROUGH else "",
            tunnel=mode,
            local=status >= 400,
        )


def _log_request(flow: http.HTTPFlow, failed: str = "") -> None:
    resp = flow.response
    status = str(resp.status_code) if resp is not None and not failed else "---"
    cache_status = resp.headers.get("cache-status", "-") if resp is not None else "-"
    _request_line(
        flow.request.method, _flowinfo.asked_url(flow), status, cache_status, _flowinfo.elapsed(flow), failed
    )


def _request_line(
    method: str, url: str, status: str, cache_status: str, elapsed: float, failed: str = ""
) -> None:
    requests_log.info(
        "%s %s %s %s %.0fms%s",
        method,
        url,
        status,
        cache_status,
        elapsed * 1000,
        f" ({failed})" if failed else "",
    )


addons = [AccessLog()]
