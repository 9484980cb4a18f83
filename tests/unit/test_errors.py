"""Origin connection errors become a status and a sentence naming the host and cause."""

from __future__ import annotations

import errno
import socket

import pytest

from fwdproxy.errors import (
    Stall,
    describe_connect_error,
    describe_origin_failure,
    describe_read_timeout,
    describe_tls_error,
    read_stall,
)


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


@pytest.mark.parametrize(
    "idle, timeout, started, expected",
    [
        pytest.param(59.9, 60, False, Stall.NONE, id="within the read timeout"),
        pytest.param(60, 60, False, Stall.NO_RESPONSE, id="9110 15.6.5 no response head: 504"),
        pytest.param(61, 60, True, Stall.MID_BODY, id="body stopped: cut the transfer"),
        pytest.param(10**6, 0, False, Stall.NONE, id="0 turns the read timeout off"),
    ],
)
def test_read_stall(idle: float, timeout: float, started: bool, expected: Stall) -> None:
    assert read_stall(idle=idle, timeout=timeout, response_started=started) is expected


def test_read_timeout_messages_name_the_origin() -> None:
    assert describe_read_timeout("h.example", 80, 60, Stall.NO_RESPONSE) == (
        "h.example:80 sent no response within 60 s (read timeout)"
    )
    assert "h.example:80 stopped sending the body for 1.5 s" in describe_read_timeout(
        "h.example", 80, 1.5, Stall.MID_BODY
    )


@pytest.mark.parametrize(
    "message, text",
    [
        pytest.param(
            "Certificate verify failed: unable to get local issuer certificate",
            "h.example:443 presented a certificate that is not trusted (unable to get local issuer certificate)",
            id="untrusted certificate",
        ),
        pytest.param(
            "The remote server does not speak TLS.",
            "h.example:443 does not speak TLS (is it a plain-HTTP port?)",
            id="plain HTTP on a TLS port",
        ),
        pytest.param(
            "OpenSSL Error([('SSL routines', '', 'unexpected eof')])",
            "TLS handshake with h.example:443 failed: OpenSSL Error(",
            id="anything else names the host",
        ),
    ],
)
def test_describe_tls_error(message: str, text: str) -> None:
    assert describe_tls_error("h.example", 443, message).startswith(text)


@pytest.mark.parametrize(
    "message, text",
    [
        ("server closed connection", "h.example:80 closed the connection before sending a response"),
        ("connection closed early", "h.example:80 closed the connection before sending a response"),
        (
            "Cannot parse HTTP response: Bad HTTP response line: b'SSH-2.0'",
            "h.example:80 sent a malformed response (Cannot parse HTTP response: Bad HTTP response line",
        ),
        (
            "[Errno 104] Connection reset by peer",
            "h.example:80 reset the connection before sending a response",
        ),
        ("something new", "h.example:80 failed: something new"),
    ],
)
def test_describe_origin_failure(message: str, text: str) -> None:
    status, got = describe_origin_failure("h.example", 80, message)
    assert status == 502
    assert got.startswith(text)
