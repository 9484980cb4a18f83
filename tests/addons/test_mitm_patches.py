"""The register of mitmproxy adaptations (addons/_mitm/): each patch is in place and still has its effect, and
the proxy refuses to start on a mitmproxy the patches were not written for."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import gc
import re
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import diskcache
import h11._receivebuffer
import pytest
from mitmproxy import connection, options
from mitmproxy.addons import tlsconfig
from mitmproxy.proxy import commands, context, events, mode_specs, server
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers import tls
from mitmproxy.proxy.layers.http import _http1, _upstream_proxy
from mitmproxy.test import taddons

from fwdproxy.store import backend
from fwdproxy_addons import _mitm
from fwdproxy_addons._mitm import origintls, pool, readstamp, via, wideread
from fwdproxy_addons._mitm.mark import is_ours
from tests.support import REPO, Proxy, RawOrigin, fwdproxy_argv, pattern

EFFECTS: dict[str, tuple[str, ...]] = {
    "§15": (
        "tests/addons/test_mitm_patches.py::test_request_head_over_the_limit_is_431",
        "tests/addons/test_mitm_patches.py::test_a_silent_client_gets_408",
        "tests/addons/test_mitm_patches.py::test_early_hints_reach_the_client_before_the_response",
        "tests/e2e/test_hostile_input.py::test_body_longer_than_content_length_is_stored_as_framed_on_a_fresh_connection",
        "tests/e2e/test_hostile_input.py::test_response_head_over_64_kib_is_a_plain_502",
        "tests/e2e/test_strict_requests.py::test_slow_second_request_on_a_kept_alive_connection_gets_408",
    ),
    "§18": (
        "tests/addons/test_mitm_patches.py::test_upstream_proxy_layer_is_ours",
        "tests/addons/test_egress_addon.py::test_round_robin_sets_via_and_absolute_form",
        "tests/addons/test_egress_addon.py::test_passthrough_tunnel_is_routed_and_accounted",
    ),
    "§14": (
        "tests/addons/test_mitm_patches.py::test_mitmproxys_http1_error_page_is_plain_text",
        "tests/addons/test_mitm_patches.py::test_a_malformed_request_gets_a_plain_400",
        "tests/addons/test_mitm_patches.py::test_a_refused_origin_is_a_plain_502_naming_it",
        "tests/e2e/test_origin_failures.py::test_refused_connection_is_our_text",
        "tests/e2e/test_origin_failures.py::test_stale_is_served_when_the_origin_fails",
        "tests/e2e/test_origin_failures.py::test_the_next_request_on_a_keep_alive_connection_tries_the_origin_again",
    ),
    "§19": (
        "tests/addons/test_mitm_patches.py::test_a_read_stamps_its_connection",
        "tests/addons/test_mitm_patches.py::test_a_slow_but_steady_body_outlives_the_read_timeout",
        "tests/addons/test_mitm_patches.py::test_a_silent_origin_gets_504",
    ),
    "§17": (
        "tests/e2e/test_origins.py::test_sequential_revalidations_from_short_lived_clients_share_few_origin_connections",
        "tests/e2e/test_origins.py::test_burst_to_a_cold_host_name_makes_one_dns_lookup",
        "tests/e2e/test_origins.py::test_idempotent_request_on_a_connection_the_origin_closed_is_replayed",
        "tests/addons/test_origins_addon.py::test_loading_installs_the_patch_once",
        "tests/addons/test_mitm_patches.py::test_new_tls_connections_get_their_tls_on_the_socket",
        "tests/e2e/test_origins_tls.py::test_https_revalidations_from_short_lived_clients_share_few_connections",
        "tests/e2e/test_origins_tls.py::test_https_through_an_upstream_shares_tunnels",
        "tests/e2e/test_origins_tls.py::test_http2_client_in_a_tunnel_uses_the_pool",
    ),
    "§16": (
        "tests/addons/test_mitm_patches.py::test_a_handler_reads_a_marked_connection_widely",
        "tests/addons/test_wideread.py::test_handlers_made_after_install_widen_their_connections",
    ),
    "§20": (
        "tests/addons/test_engine.py::test_fwdproxy_run_loads_only_the_lean_builtins_then_our_chain",
        "tests/addons/test_engine.py::test_hook_table_dispatches_like_mitmproxy",
    ),
    "§21": ("tests/e2e/test_workers.py::test_two_workers_share_the_port_the_load_and_the_cache",),
    "§25": (
        "tests/addons/test_fieldwalk.py::test_installed_walks_skip_the_per_value_typing_work",
        "tests/addons/test_fieldwalk.py::test_a_real_request_and_response_pass_and_a_wrong_field_is_refused_as_mitmproxy_does",
    ),
    "§26": (
        "tests/e2e/test_fasthit_disk.py::test_repeated_disk_hits_go_from_the_file_to_a_plain_client_by_sendfile",
        "tests/e2e/test_fasthit_disk.py::test_inside_an_intercepted_tunnel_disk_hits_keep_the_bytes_path_and_a_damaged_file_is_never_served",
        "tests/unit/test_store_openfiles.py::test_what_the_socket_does_not_take_comes_back_in_order",
        "tests/e2e/test_fasthit_sendfile.py::test_a_request_arriving_while_the_writer_still_sends_the_last_body_waits_its_turn",
        "tests/e2e/test_fasthit_sendfile.py::test_plain_http_inside_a_connect_tunnel_goes_direct_and_is_exact",
    ),
    "§22": (
        "tests/e2e/test_stale.py::test_stale_while_revalidate_answers_at_once_and_refreshes",
        "tests/addons/test_mitm_patches.py::test_a_silent_origin_gets_504",
    ),
}
"""Tests that fail when a patch stops taking effect, by docs/mitmproxy-notes.md section."""


def test_every_patch_names_effect_tests_that_exist() -> None:
    assert {p.section for p in _mitm.PATCHES} == set(EFFECTS)
    for section, tests in EFFECTS.items():
        for node in tests:
            path, _, name = node.partition("::")
            source = (REPO / path).read_text()
            if name:
                defined = {f.name for f in ast.walk(ast.parse(source)) if isinstance(f, ast.FunctionDef)}
                assert name in defined, f"{section}: {node} does not exist"


def test_every_section_the_register_and_the_code_cite_exists() -> None:
    notes = (REPO / "docs" / "mitmproxy-notes.md").read_text()
    sections = set(re.findall(r"^## (§\d+) ", notes, re.MULTILINE))
    assert {p.section for p in _mitm.PATCHES} <= sections
    cited: set[str] = set()
    for folder in ("addons", "fwdproxy", "tests", "scripts"):
        for path in (REPO / folder).rglob("*.py"):
            for match in re.finditer(r"mitmproxy-notes(?:\.md)? ((?:§\d+(?:, )?)+)", path.read_text()):
                cited |= set(re.findall(r"§\d+", match.group(1)))
    assert cited, "no citation found: the pattern is wrong"
    assert cited <= sections, f"cited but not in docs/mitmproxy-notes.md: {sorted(cited - sections)}"


def test_install_replaces_every_target_with_ours_once() -> None:
    _mitm.install()
    replaced = _mitm.applied()
    assert len(replaced) >= 14
    assert all(replaced.values()), [where for where, ours in replaced.items() if not ours]
    before = dict(vars(_http1.Http1Server))
    _mitm.install()  # idempotent: nothing is wrapped twice
    assert dict(vars(_http1.Http1Server)) == before


@pytest.mark.parametrize("running", ["12.3.0", "12.3.1", "12.3.17"])
def test_supported_versions_pass(running: str) -> None:
    _mitm.check_version(running)


@pytest.mark.parametrize("running", ["12.2.9", "12.4.0", "13.0.0", "11.3.1", "dev", ""])
def test_other_versions_are_refused_with_what_to_do(running: str) -> None:
    with pytest.raises(_mitm.UnsupportedMitmproxy) as refused:
        _mitm.check_version(running)
    message = str(refused.value)
    assert f"mitmproxy {running} is installed" in message
    assert "12.3.x" in message and "mitmproxy>=12.3,<12.4" in message


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_a_drifted_target_refuses_install_before_anything_changes() -> None:
    """In a fresh interpreter: mitmproxy's read_body gains a parameter, as if upgraded."""
    done = _python(
        "from mitmproxy.proxy.layers.http import _http1\n"
        "def read_body(self, event, limit): yield from ()\n"
        "_http1.Http1Server.read_body = read_body\n"
        "untouched = (_http1.Http1Server.read_headers, _http1.make_error_response)\n"
        "from fwdproxy_addons import _mitm\n"
        "try:\n"
        "    _mitm.install()\n"
        "except _mitm.UnsupportedMitmproxy as e:\n"
        "    print('refused:', e)\n"
        "print('untouched:', untouched == (_http1.Http1Server.read_headers, _http1.make_error_response))\n"
    )
    assert done.returncode == 0, done.stderr
    assert "refused: mitmproxy 12.3" in done.stdout
    assert "Http1Server.read_body" in done.stdout and "§15" in done.stdout
    assert "('self', 'event', 'limit'), written for ('self', 'event')" in done.stdout
    assert "untouched: True" in done.stdout


def test_drifted_diskcache_internals_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    assert backend.diskcache_problems() == []
    monkeypatch.setattr(diskcache.Disk, "store", lambda self, value, read: None)
    monkeypatch.delattr(diskcache.Cache, "_sql")
    found = dict(backend.diskcache_problems())
    assert set(found) == {"diskcache.Disk.store", "diskcache.Cache._sql"}
    assert [p for p in _mitm.problems() if p.startswith("diskcache.")] == [
        f"{k}: {v}" for k, v in found.items()
    ]


def test_a_drifted_h11_buffer_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h11._receivebuffer.ReceiveBuffer, "__init__", lambda self: None)
    assert any("ReceiveBuffer.__init__" in p and "_multiple_lines_search" in p for p in _mitm.problems())


def test_fwdproxy_run_refuses_an_unsupported_mitmproxy(tmp_path: Path) -> None:
    done = _python(
        "import sys, mitmproxy.version\n"
        "mitmproxy.version.VERSION = '12.4.0'\n"
        "from fwdproxy.cli import main\n"
        f"sys.exit(main(['run', '--listen-port', '0', '--admin-port', '0', '--cache-dir', {str(tmp_path)!r},"
        f" '--confdir', {str(tmp_path / 'conf')!r}]))\n"
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "cannot start: mitmproxy 12.4.0 is installed" in done.stderr
    assert "listening at" not in done.stdout


def test_mitmdump_refuses_an_unsupported_mitmproxy(tmp_path: Path) -> None:
    done = _python(
        "import mitmproxy.version\n"
        "mitmproxy.version.VERSION = '13.0.0'\n"
        "from mitmproxy.tools.main import mitmdump\n"
        f"mitmdump(['-s', {str(REPO / 'addons' / 'fwdproxy.py')!r}, '--listen-port', '0',"
        f" '--set', 'confdir={tmp_path}'])\n"
    )
    assert done.returncode == 1
    assert "fwdproxy: mitmproxy 13.0.0 is installed" in done.stdout + done.stderr


# -- effects, in process ---------------------------------------------------------------------------------


def test_mitmproxys_http1_error_page_is_plain_text() -> None:
    _mitm.install()
    page = _http1.make_error_response(400, "the request line is not HTTP")  # as mitmproxy's layer calls it
    head, _, body = page.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: text/plain" in head.lower()
    assert b"connection: close" in head.lower()
    assert b"<html" not in page.lower()
    assert body == b"fwdproxy: the request line is not HTTP\n"


def test_upstream_proxy_layer_is_ours() -> None:
    _mitm.install()
    assert _upstream_proxy.HttpUpstreamProxy is via.AbsoluteForm
    assert is_ours(_upstream_proxy.HttpUpstreamProxy)
    assert not is_ours(via.TunnelVia)


def test_a_read_stamps_its_connection() -> None:
    _mitm.install()
    conn = connection.Server(address=("127.0.0.1", 1))
    before = time.monotonic()
    pending = server.ConnectionHandler.server_event(object(), events.DataReceived(conn, b"x"))  # type: ignore[arg-type]
    pending.close()  # the stamp is taken before mitmproxy's own coroutine runs
    stamp = getattr(conn, readstamp.LAST_READ)
    assert stamp >= before
    assert stamp <= time.monotonic()


class _Writer:
    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default


def test_a_handler_reads_a_marked_connection_widely() -> None:
    async def main() -> None:
        _mitm.install()
        handler = server.SimpleConnectionHandler(
            asyncio.StreamReader(), _Writer(), options.Options(), mode_specs.ProxyMode.parse("regular"), {}
        )
        address = ("127.0.0.1", 9)
        wideread.widen(address)
        try:
            reader = asyncio.StreamReader(limit=1024 * 1024)
            data = pattern(300_000)
            reader.feed_data(data)
            handler.transports[connection.Server(address=address)] = server.ConnectionIO(
                handler=None, reader=reader, writer=None
            )
            assert await reader.read(65535) == data  # mitmproxy's read size, lifted
        finally:
            wideread.narrow(address)

    asyncio.run(main())


# -- effects, through a running proxy ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, confdir: Path) -> Iterator[Proxy]:
    work = tmp_path_factory.mktemp("patches")
    argv = ["run", "--listen-port", "0", "--admin-port", "0", "--confdir", str(confdir)]
    argv += ["--cache-dir", str(work / "cache"), "--header-timeout", "1s", "--read-timeout", "1s"]
    p = Proxy(fwdproxy_argv(*argv), work)
    yield p
    p.stop()


def exchange(proxy: Proxy, data: bytes, *, timeout: float = 10) -> bytes:
    """Send raw bytes to the proxy and read until it closes (a reset after the answer ends it too)."""
    out = b""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                out += chunk
    return out


def get(url: str) -> bytes:
    return f"GET {url} HTTP/1.1\r\nHost: {url.split('/')[2]}\r\nConnection: close\r\n\r\n".encode()


def test_a_malformed_request_gets_a_plain_400(proxy: Proxy) -> None:
    reply = exchange(proxy, b"\x16\x03garbage that is no request line\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: text/plain" in head.lower()
    assert body.startswith(b"fwdproxy: ") and b"<html" not in body.lower()


def test_a_refused_origin_is_a_plain_502_naming_it(proxy: Proxy) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    reply = exchange(proxy, get(f"http://127.0.0.1:{port}/x"))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 "), reply[:200]
    assert b"content-type: text/plain" in head.lower()
    assert f"127.0.0.1:{port}".encode() in body and b"<html" not in body.lower()


def test_request_head_over_the_limit_is_431(proxy: Proxy) -> None:
    head = b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    reply = exchange(proxy, head)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert reply.endswith(b"fwdproxy: the request head exceeds 64 KiB (start line and header fields)\n")


def test_a_silent_client_gets_408(proxy: Proxy) -> None:
    started = time.monotonic()
    reply = exchange(proxy, b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost:", timeout=15)
    waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b"did not arrive within 1s" in reply
    assert waited >= 0.9
    assert waited < 8


def test_early_hints_reach_the_client_before_the_response(proxy: Proxy, raw_origins: list[RawOrigin]) -> None:
    def handler(head: bytes, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok")

    raw_origins.append(origin := RawOrigin(handler))
    reply = exchange(proxy, get(origin.url("/hints")))
    assert reply.startswith(b"HTTP/1.1 103 Early Hints\r\n"), reply[:200]
    final = reply[reply.index(b"\r\n\r\n") + 4 :]
    assert final.startswith(b"HTTP/1.1 200 OK\r\n")
    assert final.endswith(b"\r\n\r\nok")


def test_a_silent_origin_gets_504(proxy: Proxy, raw_origins: list[RawOrigin]) -> None:
    gone = threading.Event()

    def handler(head: bytes, sock: socket.socket) -> None:
        gone.wait(20)  # the head was read; nothing is ever answered

    raw_origins.append(origin := RawOrigin(handler))
    started = time.monotonic()
    try:
        reply = exchange(proxy, get(origin.url("/silent")), timeout=20)
    finally:
        gone.set()
    assert reply.startswith(b"HTTP/1.1 504 "), reply[:200]
    assert b"content-type: text/plain" in reply.lower()
    assert time.monotonic() - started < 10


def test_a_slow_but_steady_body_outlives_the_read_timeout(proxy: Proxy, raw_origins: list[RawOrigin]) -> None:
    body = pattern(12)

    def handler(head: bytes, sock: socket.socket) -> None:
        sock.sendall(
            f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nCache-Control: no-store\r\n\r\n".encode()
        )
        for i in range(len(body)):  # a byte every 0.25 s: 3 s in all, never 1 s silent
            time.sleep(0.25)
            sock.sendall(body[i : i + 1])

    raw_origins.append(origin := RawOrigin(handler))
    reply = exchange(proxy, get(origin.url("/steady")), timeout=20)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply[:200]
    assert reply.endswith(b"\r\n\r\n" + body)


def _new_connection(
    via: tuple[str, tuple[str, int]] | None, tls_: bool = True
) -> tuple[http_layer.HttpLayer, list[object]]:
    """An intercepted tunnel's HTTP layer asked for a TLS connection to secure.test:443 (as a request in it asks);
    ``tls_`` False: a plain HTTP connection to plain.test:80 instead."""
    client = connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080), timestamp_start=0)
    ctx = context.Context(client, options.Options())
    ctx.server = connection.Server(address=("secure.test", 443))
    layer = http_layer.HttpLayer(ctx, http_layer.HTTPMode.transparent)
    address = ("secure.test", 443) if tls_ else ("plain.test", 80)
    event = http_layer.GetHttpConnection(address, tls_, via)  # type: ignore[arg-type]
    layer.command_sources[event] = layer  # type: ignore[index]
    return layer, list(layer.get_connection(event))


VIAS = [None, ("http", ("proxy.test", 3128)), ("https", ("proxy.test", 3129))]


@pytest.mark.parametrize("via", VIAS, ids=["direct", "upstream", "https-upstream"])
def test_new_tls_connections_get_their_tls_on_the_socket(via: tuple[str, tuple[str, int]] | None) -> None:
    _mitm.install()
    layer, commands_ = _new_connection(via)
    # The HTTP layer also files the connection to an upstream proxy under its layer (to route its events).
    (server_conn,) = (
        c for c in layer.connections if isinstance(c, connection.Server) and c.address[1] == 443
    )
    assert isinstance(server_conn, connection.Server)
    opens = [c for c in commands_ if isinstance(c, commands.OpenConnection)]
    assert len(opens) == 1  # what the connection handler opens: the origin, or the upstream proxy
    opened = opens[0].connection
    assert isinstance(opened, connection.Server)
    route = origintls.route(opened)
    assert route is not None
    assert (route.origin, route.sni, route.tls) == (("secure.test", 443), "secure.test", True)
    top = layer.connections[server_conn]
    if via is None:
        assert opened is server_conn
        assert type(top) is origintls.SocketTLS
        assert route.proxy is None and not route.connect
    else:
        assert opened.address == via[1]
        if via[0] == "https":
            # The proxy's own TLS layer (above the proxy layer) runs on the socket too, before the CONNECT;
            # the proxy's connection is not taken for a direct TLS origin (it is filed in the HTTP layer too).
            assert type(top) is origintls.SocketTLS and top.conn is opened
            top = top.child_layer
            assert route.proxy_sni == "proxy.test"
        else:
            assert route.proxy_sni is None
        assert isinstance(top, _upstream_proxy.HttpUpstreamProxy) and not top.send_connect
        assert type(top.child_layer) is origintls.SocketTLS  # type: ignore[attr-defined]
        assert route.proxy == via[1] and route.connect
        assert origintls.opened_as(server_conn) is opened and origintls.inner(opened) is server_conn
    assert server_conn.tls  # mitmproxy's checks (connection_spec_matches) still see a TLS connection


def test_pool_keys_tell_upstream_schemes_and_tls_settings_apart() -> None:
    """Connections through an http:// and an https:// proxy on the same address, or through one https://
    proxy under other TLS settings, are never handed out for each other."""
    _mitm.install()

    def key(via: tuple[str, tuple[str, int]], tls_: bool) -> pool.PoolKey:
        layer, commands_ = _new_connection(via, tls_)
        (opened,) = (c.connection for c in commands_ if isinstance(c, commands.OpenConnection))
        found = pool._key(opened)  # type: ignore[arg-type]
        assert found is not None
        return found

    with taddons.context(tlsconfig.TlsConfig()) as tctx:
        for tls_ in (False, True):
            plain = key(("http", ("proxy.test", 3128)), tls_)
            secure = key(("https", ("proxy.test", 3128)), tls_)
            assert plain != secure
            assert plain.via == "http://proxy.test:3128"
            assert secure.via.startswith("https://proxy.test:3128 ")
            assert secure == key(("https", ("proxy.test", 3128)), tls_)  # the same route: the same pool
            tctx.options.ssl_insecure = True
            assert key(("https", ("proxy.test", 3128)), tls_) != secure
            tctx.options.ssl_insecure = False


def test_plain_http_via_an_https_upstream_gets_the_proxy_tls_on_the_socket() -> None:
    _mitm.install()
    layer, commands_ = _new_connection(("https", ("proxy.test", 3129)), tls_=False)
    (server_conn,) = (c for c in layer.connections if isinstance(c, connection.Server) and c.address[1] == 80)
    (opened,) = (c.connection for c in commands_ if isinstance(c, commands.OpenConnection))
    route = origintls.route(opened)  # type: ignore[arg-type]
    assert route is not None
    assert (route.origin, route.sni, route.proxy, route.connect) == (
        ("plain.test", 80),
        None,
        ("proxy.test", 3129),
        False,
    )
    assert route.proxy_sni == "proxy.test"
    top = layer.connections[server_conn]
    assert type(top) is origintls.SocketTLS and top.conn is opened
    assert isinstance(top.child_layer, _upstream_proxy.HttpUpstreamProxy)  # type: ignore[attr-defined]
    assert origintls.route(server_conn) is None  # type: ignore[arg-type]  # only the opened one has a route


def test_with_pooling_off_mitmproxy_does_the_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    _mitm.install()
    monkeypatch.setattr(pool.SHARED, "idle_timeout", 0.0)
    layer, commands_ = _new_connection(None)
    (server_conn,) = layer.connections
    assert type(layer.connections[server_conn]) is tls.ServerTLSLayer
    assert origintls.route(server_conn) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("via", VIAS, ids=["direct", "upstream", "https-upstream"])
def test_marks_do_not_keep_connections_alive(via: tuple[str, tuple[str, int]] | None) -> None:
    _mitm.install()
    layer, commands_ = _new_connection(via)
    refs = [weakref.ref(c) for c in layer.connections]
    assert refs
    assert any(origintls.route(r()) is not None for r in refs)  # type: ignore[arg-type]
    del layer, commands_
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)


class _PoolWriter:
    """Enough of a StreamWriter for the pool: closed or not."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


@pytest.mark.parametrize("stray", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"])
def test_a_connection_handed_straight_on_with_bytes_past_its_framing_is_not_reused(
    monkeypatch: pytest.MonkeyPatch, stray: bytes
) -> None:
    """§17: an idle connection taken at once (its watcher has not read yet) with bytes already received after
    the last response is closed, and its slot goes to a new connection; without them it is reused."""
    monkeypatch.setattr(pool, "SHARED", pool.Shared())
    key = pool.PoolKey("http", "a.test", 80)

    async def run() -> tuple[object, bool]:
        reader = asyncio.StreamReader()
        if stray:
            reader.feed_data(stray)
        writer = _PoolWriter()
        sock = pool._Socket(reader, writer)  # type: ignore[arg-type]
        assert await pool.SHARED.pool.acquire(key) is None  # a slot for the connection that becomes idle
        pool._idle(key, sock)
        got = await pool._take(key)  # the same loop turn: the watcher task never ran
        return got, writer.closed

    got, closed = asyncio.run(run())
    if stray:
        assert got is None and closed
    else:
        assert got is not None and not closed
