"""What to tell a client when the origin cannot be reached: status code and one readable sentence."""

from __future__ import annotations

import enum
import errno
import socket


def describe_connect_error(host: str, port: int, exc: BaseException, timeout: float) -> tuple[int, str]:
    """Status (502, or 504 for a timeout) and a message that names the host and the cause."""
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        reason = exc.strerror or str(exc)
        return 502, f"cannot resolve host {host!r} (DNS lookup failed: {reason})"
    if isinstance(exc, TimeoutError):
        return 504, f"{where} did not accept a connection within {timeout:g} s (connect timeout)"
    if isinstance(exc, ConnectionRefusedError):
        return 502, f"{where} refused the connection (nothing listens there, or a firewall rejects it)"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return 502, f"{where} is unreachable from this proxy ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return 502, f"cannot connect to {where}: {exc.strerror}"
    return 502, f"cannot connect to {where}: {exc}"


def describe_tls_error(host: str, port: int, message: str) -> str:
    """A message for a failed TLS handshake with the origin (``message`` is mitmproxy's)."""
    where = f"{host}:{port}"
    if message.startswith(VERIFY_FAILED):
        return f"{where} presented a certificate that is not trusted ({message[len(VERIFY_FAILED) :]})"
    if message.startswith("The remote server does not speak TLS"):
        return f"{where} does not speak TLS (is it a plain-HTTP port?)"
    return f"TLS handshake with {where} failed: {message}"


VERIFY_FAILED = "Certificate verify failed: "
"""How mitmproxy's TLS layer words an origin certificate it does not trust (mitmproxy/proxy/layers/tls.py)."""


def describe_origin_failure(host: str, port: int, message: str) -> tuple[int, str]:
    """Status and sentence for an origin that failed before its response head, from mitmproxy's message."""
    where = f"{host}:{port}"
    if message in ("server closed connection", "connection closed early"):
        return 502, f"{where} closed the connection before sending a response"
    if message.startswith(("Cannot parse HTTP response", "unexpected server response")):
        return 502, f"{where} sent a malformed response ({message})"
    if "reset" in message.lower():
        return 502, f"{where} reset the connection before sending a response"
    return 502, f"{where} failed: {message}"


class Stall(enum.Enum):
    """How a request waiting on its origin is doing, judged by the read timeout."""

    NONE = "none"
    """Bytes arrived within the timeout (or the timeout is off)."""
    NO_RESPONSE = "no-response"
    """No response head within the timeout: answer 504 (RFC 9110 §15.6.5)."""
    MID_BODY = "mid-body"
    """The body stopped arriving: cut the transfer so the client sees it end early (never a short success)."""


def read_stall(*, idle: float, timeout: float, response_started: bool) -> Stall:
    """Judge a request whose origin sent nothing for ``idle`` seconds; a timeout of 0 is off."""
    if timeout <= 0 or idle < timeout:
        return Stall.NONE
    return Stall.MID_BODY if response_started else Stall.NO_RESPONSE


def describe_read_timeout(host: str, port: int, timeout: float, stall: Stall) -> str:
    """A message naming the origin and the read timeout that ran out."""
    if stall is Stall.MID_BODY:
        return f"{host}:{port} stopped sending the body for {timeout:g} s (read timeout); transfer cut"
    return f"{host}:{port} sent no response within {timeout:g} s (read timeout)"
