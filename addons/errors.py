"""Readable origin errors: failures on the real origin connection become plain-text 502/504 naming the host."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from mitmproxy import connection, http, tls
from mitmproxy.proxy import server_hooks

from fwdproxy import errors
from fwdproxy_addons import _mitm, _respond
from fwdproxy_addons._mitm import failures
from fwdproxy_addons._notes import notes
from fwdproxy_addons._settings import SettingsSource

log = logging.getLogger("fwdproxy.errors")

CONNECT_TIMED_OUT = "connect timeout"
"""The cancel message of a connection attempt that outlived --connect-timeout (mitmproxy reports it as the error)."""

REMEMBERED = 512
"""Described failures kept for the streams that wait on (or later reuse) the failed connection."""


class OriginErrors:
    """Bounds mitmproxy's connect with ``fwd_connect_timeout`` and answers origin failures in plain text.

    mitmproxy has no connect timeout (the operating system's is minutes) and reports a failed origin with an
    HTML page that often omits the host. Nothing is probed beforehand: the failure is seen on the connection
    mitmproxy opens for the request, described here from the exception or TLS error, and answered through
    addons/_mitm/failures.py as an ordinary response marked ``fwd_error``, so the cache can serve a stored
    response in its place (RFC 9111 §4.2.4).
    """

    def __init__(self, source: SettingsSource | None = None) -> None:
        self.source = source or SettingsSource()
        self.timeout = self.source.given.connect_timeout
        self.failures: dict[tuple[str, int, str], tuple[int, str]] = {}
        """(host, port, mitmproxy's error text) -> our status and sentence, from the connection's hooks."""
        self.timed_out: set[connection.Server] = set()

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(loader, "fwd_connect_timeout")
        _mitm.install()
        failures.answer_with(self.answer)

    def configure(self, updated: set[str]) -> None:
        self.timeout = self.source.current().connect_timeout

    # -- the connect timeout ------------------------------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        # mitmproxy runs this hook inline in the task that then opens the connection (ConnectionHandler.
        # open_connection in mitmproxy/proxy/server.py); cancelling that task is how the attempt is cut short.
        task = asyncio.current_task()
        if task is not None and self.timeout > 0:
            timer = asyncio.get_running_loop().call_later(
                self.timeout, self._check_connect, data.server, task
            )
            # Once connected (or failed) the timer has nothing to do: drop it with the task, not 10 s later
            # (it holds the task and the connection, and a busy proxy opens many).
            task.add_done_callback(lambda _: timer.cancel())

    def _check_connect(self, server: connection.Server, task: asyncio.Task[None]) -> None:
        if task.done() or server.timestamp_tcp_setup is not None or server.error is not None:
            return
        if server.timestamp_start is None:
            # Still queued behind mitmproxy's five connections per origin (an HTTP/2 client's streams): the
            # timeout counts from the attempt itself, not from the wait for a free slot.
            asyncio.get_running_loop().call_later(self.timeout, self._check_connect, server, task)
            return
        left = server.timestamp_start + self.timeout - time.time()
        if left > 0.01:
            asyncio.get_running_loop().call_later(left, self._check_connect, server, task)
            return
        self.timed_out.add(server)
        task.cancel(CONNECT_TIMED_OUT)

    # -- describing failures ------------------------------------------------------------------------------

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        if server.address is None or server.error is None:
            return
        # mitmproxy calls this hook from inside its ``except`` clause, so the exception itself is at hand.
        exc = sys.exc_info()[1]
        if server in self.timed_out:
            self.timed_out.discard(server)
            exc = TimeoutError()
        host, port = server.address
        if exc is None:
            exc = OSError(server.error)
        self._remember(host, port, server.error, errors.describe_connect_error(host, port, exc, self.timeout))

    def tls_failed_server(self, data: tls.TlsData) -> None:
        server = data.conn
        if not isinstance(server, connection.Server) or server.address is None or server.error is None:
            return
        host, port = server.address
        self._remember(host, port, server.error, (502, errors.describe_tls_error(host, port, server.error)))

    def _remember(self, host: str, port: int, error: str, described: tuple[int, str]) -> None:
        if len(self.failures) >= REMEMBERED:
            del self.failures[next(iter(self.failures))]  # the oldest: its streams were answered long ago
        self.failures[(host, port, error)] = described

    def answer(self, flow: http.HTTPFlow, message: str) -> http.Response:
        """The response for a request whose origin failed before its response head (addons/_mitm/failures.py)."""
        host, port = flow.request.host, flow.request.port
        if (known := notes(flow).error) is not None:
            status, text = 504, str(known)  # the read timeout (addons/readtimeout.py) cut this connection
        elif (described := self.failures.get((host, port, message))) is not None:
            status, text = described
        else:
            status, text = errors.describe_origin_failure(host, port, message)
        log.info("%s %s: %s", flow.request.method, flow.request.pretty_url, text)
        notes(flow).error = text  # the cache may answer from a stored response instead
        return _respond.text(status, text)

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.error and flow.request.host:
            log.info("%s %s failed: %s", flow.request.method, flow.request.pretty_url, flow.error.msg)


addons = [OriginErrors()]
