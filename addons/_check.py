"""Talking to an upstream proxy outside mitmproxy: a connect probe and an active health check."""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

from fwdproxy.balance import Member


async def connects(member: Member, timeout: float) -> str | None:
    """None when ``member`` accepts a TCP connection within ``timeout`` seconds, else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(member.host, member.port), timeout)
    except TimeoutError:
        return f"no connection within {timeout:g}s"
    except OSError as e:
        return e.strerror or str(e)
    writer.close()
    return None


async def fetch(member: Member, url: str, timeout: float) -> str | None:
    """None when ``member`` serves ``url`` (any status below 500 but 407; a CONNECT 2xx for https), else why."""
    try:
        return await asyncio.wait_for(_fetch(member, url), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except (OSError, ValueError, EOFError, asyncio.LimitOverrunError) as e:
        return str(e) or type(e).__name__


async def _fetch(member: Member, target: str) -> str | None:
    tls = ssl.create_default_context() if member.scheme == "https" else None
    reader, writer = await asyncio.open_connection(member.host, member.port, ssl=tls)
    try:
        parts = urlsplit(target)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        host = parts.hostname or ""
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # https: the CONNECT reaching the origin's port is the check (we do not speak TLS to the origin).
        line = f"CONNECT {authority} HTTP/1.1" if https else f"GET {target} HTTP/1.1"
        head = [line, f"Host: {authority}", "Connection: close", "User-Agent: fwdproxy-health-check"]
        if member.proxy_authorization is not None:
            head.append(f"Proxy-Authorization: {member.proxy_authorization}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        status_line = await reader.readuntil(b"\r\n")
        fields = status_line.split(None, 2)
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
            return f"not an HTTP answer: {status_line[:80]!r}"
        status = int(fields[1])
        if (https and not 200 <= status < 300) or status >= 500 or status == 407:
            return f"answered {status}"
        return None
    finally:
        writer.close()
