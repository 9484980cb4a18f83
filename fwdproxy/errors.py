"""What to tell a client when the origin cannot be reached: status code and one readable sentence."""

from __future__ import annotations

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


def describe_tls_error(host: str, message: str) -> str:
    """A message for a failed TLS handshake with the origin."""
    return f"TLS handshake with {host} failed: {message}"
