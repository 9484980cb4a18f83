"""Origin connection errors become a status and a sentence naming the host and cause."""

from __future__ import annotations

import errno
import socket

import pytest

from fwdproxy.errors import describe_connect_error


@pytest.mark.parametrize(
    "exc, status, text",
    [
        (
            socket.gaierror(-2, "Name or service not known"),
            502,
            "cannot resolve host 'h.example' (DNS lookup failed",
        ),
        (TimeoutError(), 504, "h.example:443 did not accept a connection within 10 s"),
        (ConnectionRefusedError(111, "Connection refused"), 502, "h.example:443 refused the connection"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), 502, "h.example:443 is unreachable"),
        (
            OSError(errno.ECONNRESET, "Connection reset by peer"),
            502,
            "cannot connect to h.example:443: Connection reset",
        ),
    ],
)
def test_describe_connect_error(exc: BaseException, status: int, text: str) -> None:
    got_status, message = describe_connect_error("h.example", 443, exc, 10.0)
    assert got_status == status
    assert message.startswith(text)
