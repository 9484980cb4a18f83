"""The proxy never talks to itself (issue 16 point 5): every spelling of a local address on its own port or
its admin port gets 508 and opens no connection back; --max-connections caps open client connections."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from tests.e2e.test_admin_auth import admin as admin_get
from tests.e2e.test_security import free_port
from tests.support import Origin, Proxy, client

# The same loopback target, spelt as getaddrinfo (and so mitmproxy's connect) accepts it.
LOOPBACK_SPELLINGS = (
    "127.1",
    "0x7f000001",
    "2130706433",
    "0177.0.0.1",
    "127.0.0.1.",
    "0.0.0.0",
    "[::ffff:127.0.0.1]",
    "localhost.",
    "LocalHost",
    "a.localhost",
)


def exchange(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``data`` on a new connection and read until the proxy closes it."""
    with socket.create_connection((host, port), timeout=15) as sock:
        sock.sendall(data)
        out = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                out += chunk
    return out


def get(port: int, target: str, host: str = "127.0.0.1") -> bytes:
    return exchange(port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), host)


def connect(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        out = b""
        while b"\r\n\r\n" not in out and (chunk := sock.recv(65536)):
            out += chunk
    return out


def requests_seen(admin: int) -> int:
    return int(admin_get(admin, "/stats.json").json()["requests"]["total"])


def names_resolving_to(address: str) -> list[str]:
    """This machine's host name when the resolver maps it to ``address`` (the path through getaddrinfo)."""
    name = socket.gethostname()
    try:
        found = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    except OSError:
        return []
    return [name] if address in found else []


def test_every_spelling_of_self_is_508_on_the_proxy_and_admin_ports(start_proxy) -> None:
    admin, port = free_port(), free_port()
    # --max-connections bounds the damage should a spelling slip through and loop.
    proxy = start_proxy(
        *("--listen-port", str(port), "--admin-port", str(admin), "--max-connections", "64"),
        *("--connect-port", str(port), "--connect-port", str(admin)),
    )
    hosts = [*LOOPBACK_SPELLINGS, *names_resolving_to("127.0.0.1")]
    for host in hosts:
        reply = get(proxy.port, f"http://{host}:{proxy.port}/")
        assert reply.startswith(b"HTTP/1.1 508 Loop Detected\r\n"), (host, reply[:300])
        assert b"is this proxy itself" in reply
        reply = get(proxy.port, f"http://{host}:{admin}/stats.json")
        assert reply.startswith(b"HTTP/1.1 508 "), (host, reply[:300])
        assert b"admin port" in reply and b"open_connections" not in reply  # not proxied to the admin port
    for target in (f"0x7f000001:{proxy.port}", f"127.1:{admin}", f"localhost.:{proxy.port}"):
        assert connect(proxy.port, target).startswith(b"HTTP/1.1 508 "), target
    # Exactly the requests we sent reached the proxy: none of them came back through it.
    assert requests_seen(admin) == 2 * len(hosts)
    log = proxy.log()
    assert log.count("is this proxy itself") == len(hosts) + 2
    assert log.count("is this proxy's admin port") == len(hosts) + 1


def test_origin_on_a_port_of_ours_elsewhere_is_not_a_loop(start_proxy, origin: Origin) -> None:
    """The cheap check is a port check: a different loopback address on the proxy's port is another server."""
    proxy = start_proxy("--listen-host", "127.0.0.3", "--allow", "127.0.0.0/8")
    with client(proxy) as c:
        assert c.get(origin.url("/")).text == "hello from origin\n"
        # 127.0.0.1:<proxy port> is not the proxy bound to 127.0.0.3: forwarded (nothing listens there).
        assert c.get(f"http://127.0.0.1:{proxy.port}/").status_code != 508


def local_interface_address() -> str | None:
    """A non-loopback address of this machine (a UDP connect sends nothing; it only picks a source)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


def test_wildcard_listener_catches_interface_addresses_and_ipv6(start_proxy) -> None:
    admin = free_port()
    proxy = start_proxy(
        "--listen-host",
        "0.0.0.0",
        "--allow",
        "127.0.0.0/8",
        "--admin-port",
        str(admin),
        "--max-connections",
        "64",
    )
    hosts = ["127.0.0.2", "0.0.0.0", "[::ffff:127.0.0.5]"]
    if (address := local_interface_address()) is not None:
        hosts.append(address)
    for host in hosts:
        reply = get(proxy.port, f"http://{host}:{proxy.port}/")
        assert reply.startswith(b"HTTP/1.1 508 "), (host, reply[:300])
    assert requests_seen(admin) == len(hosts)


def test_ipv6_unspecified_is_self_on_an_ipv6_listener(start_proxy) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    proxy = start_proxy("--listen-host", "::1", "--allow", "::1/128")
    for host in ("[::]", "[::1]", "[0:0:0:0:0:0:0:1]", "localhost"):
        reply = get(proxy.port, f"http://{host}:{proxy.port}/", host="::1")
        assert reply.startswith(b"HTTP/1.1 508 "), (host, reply[:300])


def open_and_use(proxy: Proxy, count: int, wait: float = 0.0) -> list[socket.socket]:
    """``count`` keep-alive connections that each got an answer (so the proxy has counted them); each is
    retried for up to ``wait`` seconds while the proxy may still be releasing closed ones."""
    socks = []
    for _ in range(count):
        deadline = time.monotonic() + wait
        while True:
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                sock.sendall(b"GET http://fwdproxy.local/stats.json HTTP/1.1\r\nHost: fwdproxy.local\r\n\r\n")
                if sock.recv(65536).startswith(b"HTTP/1.1 200"):
                    break
            sock.close()
            assert time.monotonic() < deadline, "an allowed connection was not served"
            time.sleep(0.1)
        socks.append(sock)
    return socks


def refused(proxy: Proxy) -> bool:
    """Whether a new connection is closed without an answer to its request."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        try:
            sock.sendall(b"GET http://fwdproxy.local/ HTTP/1.1\r\nHost: fwdproxy.local\r\n\r\n")
            return sock.recv(65536) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


def test_max_connections_refuses_the_sixth_and_accepts_again_after_closes(start_proxy) -> None:
    proxy = start_proxy("--max-connections", "5")
    socks = open_and_use(proxy, 5)
    try:
        assert refused(proxy)
        assert refused(proxy)  # refusals are not counted as open
        assert "--max-connections 5" in proxy.log()
        for sock in socks[:2]:
            sock.close()
        socks = socks[2:]
        socks += open_and_use(proxy, 2, wait=10)  # the proxy sees the closes a moment later
        assert refused(proxy)
    finally:
        for sock in socks:
            sock.close()
