"""The egress addon with mitmproxy's test helpers: options, routing, credentials, failover, health."""

from __future__ import annotations

import socket
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.proxy import layer, server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import _upstream_proxy
from mitmproxy.proxy.layers.tls import ClientTLSLayer, ServerTLSLayer
from mitmproxy.test import taddons, tflow, tutils

from fwdproxy_addons._mitm import via as _via
from fwdproxy_addons._notes import notes, peek
from fwdproxy_addons.egress import Chosen, Egress, blames_member, proxy_error
from tests.support import REPO
from tests.support_upstream import dead_port

BASIC_USER_PW = "Basic dXNlcjpwdw=="


@pytest.fixture
def listeners() -> Iterator[list[int]]:
    """Three loopback ports that accept connections (the probe only connects)."""
    socks = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        socks.append(s)
    yield [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()


@pytest.fixture
def tctx_egress() -> Iterator[tuple[taddons.context, Egress]]:
    egress = Egress()
    with taddons.context(egress) as tctx:
        yield tctx, egress


def flow(url: str = "http://example.com/x", client: str = "10.0.0.7", **headers: str) -> http.HTTPFlow:
    f = tflow.tflow(req=tutils.treq(headers=http.Headers(**headers)))
    f.request.url = url
    f.request.authority = ""  # regular mode sends origin-form (mitmproxy clears it)
    f.client_conn.peername = (client, 50000)
    return f


def run_hook(result: Coroutine[Any, Any, None] | None) -> None:
    """Finish a hook as mitmproxy's addon manager does: sync when it returned None, else await its coroutine."""
    if result is not None:
        ctx.master.event_loop.run_until_complete(result)


def request(egress: Egress, f: http.HTTPFlow) -> http.HTTPFlow:
    run_hook(egress.request(f))
    return f


def answer(egress: Egress, f: http.HTTPFlow, status: int = 200, **headers: str) -> None:
    f.response = tutils.tresp(status_code=status, headers=http.Headers(**headers))
    egress.responseheaders(f)
    egress.response(f)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fwdproxy.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "options, message",
    [
        pytest.param(
            {"fwd_upstreams": ["10.0.0.1:3128"]}, r"fwd_upstreams: .*not a proxy URL", id="no scheme"
        ),
        pytest.param({"fwd_upstreams": ["http://10.0.0.1"]}, r"fwd_upstreams: .*no port", id="no port"),
        pytest.param({"fwd_upstreams": ["http://10.0.0.1:1,-2"]}, r"fwd_upstreams: .*negative", id="weight"),
    ],
)
def test_bad_flags_are_options_errors(tctx_egress, options: dict[str, object], message: str) -> None:
    tctx, egress = tctx_egress
    with pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(egress, **options)


@pytest.mark.parametrize(
    "toml, message",
    [
        pytest.param(
            '[upstreams.e]\nmembers = [{ url = "http://a:1", weight = 0 }]',
            r"upstreams\.e\.members\[0\]\.weight: 0 is not positive",
            id="zero weight",
        ),
        pytest.param("[upstreams.e]\nmembers = []", r"upstreams\.e\.members: \[\]", id="no members"),
        pytest.param(
            '[[routes]]\nmatch = "*"\nupstream = "nope"',
            r"routes\[0\]\.upstream: 'nope' is not a group",
            id="route",
        ),
        pytest.param(
            '[upstreams.a]\nmembers = [{ url = "http://u:p@h:1" }]\n[upstreams.b]\nmembers = [{ url = "http://h:1" }]',
            r"h:1 is in groups 'a' and 'b' with different credentials",
            id="credentials differ",
        ),
        pytest.param(
            '[upstreams.default]\nmembers = [{ url = "http://h:1" }]',
            r"upstreams\.default: group 'default' is also made by --upstream",
            id="default twice",
        ),
    ],
)
def test_bad_tables_are_options_errors(tctx_egress, tmp_path: Path, toml: str, message: str) -> None:
    tctx, egress = tctx_egress
    with pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(egress, fwd_upstreams=["http://10.0.0.9:3128"], fwd_config=write(tmp_path, toml))


def test_no_upstream_leaves_directly(tctx_egress) -> None:
    _, egress = tctx_egress
    f = request(egress, flow())
    assert (
        f.server_conn.via is None
        and (peek(f) is None or peek(f).egress is None)
        and f.request.authority == ""
    )


def test_round_robin_sets_via_and_absolute_form(tctx_egress, listeners: list[int]) -> None:
    tctx, egress = tctx_egress
    tctx.configure(egress, fwd_upstreams=[f"http://127.0.0.1:{p}" for p in listeners])
    flows = [request(egress, flow(f"http://example.com/{i}")) for i in range(4)]
    assert [f.server_conn.via for f in flows] == [
        ("http", ("127.0.0.1", p)) for p in [*listeners, listeners[0]]
    ]
    assert all(f.server_conn.address == ("example.com", 80) for f in flows)
    # The request line becomes "GET http://example.com/0 HTTP/1.1" (see _via.AbsoluteForm).
    assert flows[0].request.authority == "example.com" and flows[0].request.path == "/0"
    assert _upstream_proxy.HttpUpstreamProxy is _via.AbsoluteForm


def test_proxy_authorization_only_for_the_member_with_credentials(tctx_egress, listeners: list[int]) -> None:
    tctx, egress = tctx_egress
    a, b = listeners[:2]
    tctx.configure(egress, fwd_upstreams=[f"http://user:pw@127.0.0.1:{a}", f"http://127.0.0.1:{b}"])
    # The client's own Proxy-Authorization (for us) never travels on.
    to_a = request(egress, flow(proxy_authorization="Basic Y2xpZW50OnNlY3JldA=="))
    to_b = request(egress, flow(proxy_authorization="Basic Y2xpZW50OnNlY3JldA=="))
    assert to_a.server_conn.via == ("http", ("127.0.0.1", a))
    assert to_a.request.headers.get_all("Proxy-Authorization") == [BASIC_USER_PW]
    assert "Proxy-Authorization" not in to_b.request.headers
    # HTTPS: the request goes to the origin inside TLS, so the credentials ride on the CONNECT only.
    tls_flow = request(egress, flow("https://example.com/"))
    assert tls_flow.server_conn.via == ("http", ("127.0.0.1", a))
    assert "Proxy-Authorization" not in tls_flow.request.headers
    for port, expected in ((a, BASIC_USER_PW), (b, None)):
        connect = tflow.tflow(req=tutils.treq(method=b"CONNECT", headers=http.Headers()))
        connect.server_conn.address = ("127.0.0.1", port)
        egress.http_connect_upstream(connect)
        assert connect.request.headers.get("Proxy-Authorization") == expected


def test_routes_pick_the_group(tctx_egress, tmp_path: Path, listeners: list[int]) -> None:
    tctx, egress = tctx_egress
    config = write(
        tmp_path,
        f"""
        [upstreams.corp]
        members = [{{ url = "http://127.0.0.1:{listeners[0]}" }}]
        [upstreams.world]
        members = [{{ url = "http://127.0.0.1:{listeners[1]}" }}]
        [[routes]]
        match = "*.corp.example"
        upstream = "corp"
        [[routes]]
        match = "intranet.example"
        upstream = "direct"
        [[routes]]
        match = "*"
        upstream = "world"
        """,
    )
    tctx.configure(egress, fwd_config=config)
    vias = {
        host: request(egress, flow(f"http://{host}/")).server_conn.via
        for host in ("git.corp.example", "intranet.example", "example.org")
    }
    assert vias == {
        "git.corp.example": ("http", ("127.0.0.1", listeners[0])),
        "intranet.example": None,
        "example.org": ("http", ("127.0.0.1", listeners[1])),
    }


def test_cache_hits_never_touch_an_upstream(tctx_egress, listeners: list[int]) -> None:
    tctx, egress = tctx_egress
    tctx.configure(egress, fwd_upstreams=[f"http://127.0.0.1:{listeners[0]}"])
    hit = flow()
    hit.response = tutils.tresp()
    request(egress, hit)
    assert hit.server_conn.via is None and (peek(hit) is None or peek(hit).egress is None)
    assert egress.stats()[0].requests == 0


def test_failover_past_a_dead_member_then_ejection(tctx_egress, listeners: list[int]) -> None:
    tctx, egress = tctx_egress
    dead = dead_port()
    tctx.configure(
        egress, fwd_upstreams=[f"http://127.0.0.1:{p}" for p in (listeners[0], dead, listeners[1])]
    )
    vias = []
    for i in range(9):
        f = request(egress, flow(f"http://example.com/{i}"))
        vias.append(f.server_conn.via[1][1])
        answer(egress, f)
    assert dead not in vias and len(vias) == 9
    stats = {s.member: s for s in egress.stats()}
    assert (stats[f"127.0.0.1:{dead}"].failures, stats[f"127.0.0.1:{dead}"].ejected) == (3, True)
    assert all(s.active == 0 for s in stats.values())


def test_all_members_ejected_is_a_502_naming_the_group(tctx_egress) -> None:
    tctx, egress = tctx_egress
    tctx.configure(
        egress, fwd_upstreams=[f"http://127.0.0.1:{dead_port()}", f"http://127.0.0.1:{dead_port()}"]
    )
    f = request(egress, flow())
    assert f.response is not None and f.response.status_code == 502
    assert b"no upstream proxy of group 'default' is available" in f.response.content
    assert f.server_conn.via is None


def test_outcomes_feed_health_and_release(tctx_egress, listeners: list[int]) -> None:
    tctx, egress = tctx_egress
    tctx.configure(egress, fwd_upstreams=[f"http://127.0.0.1:{listeners[0]}"])
    ok = request(egress, flow("http://example.com/ok"))
    assert egress.stats()[0].active == 1
    answer(egress, ok)
    # An origin's 502 relayed by the proxy is not the proxy's failure; the proxy's own is.
    relayed = request(egress, flow("http://example.com/relayed"))
    answer(egress, relayed, 502)
    own = request(egress, flow("http://example.com/own"))
    answer(egress, own, 502, proxy_status="squid; error=connection_refused")
    gone = request(egress, flow("http://example.com/gone"))
    gone.error = tflow.terr("Client disconnected.")
    egress.error(gone)
    refused = request(egress, flow("http://example.com/refused"))
    refused.error = tflow.terr("[Errno 104] Connection reset by peer")
    egress.error(refused)
    (stats,) = egress.stats()
    assert (stats.requests, stats.active, stats.failures) == (5, 0, 2)
    assert stats.avg_response_time is not None
    assert isinstance(chosen := notes(ok).egress, Chosen) and chosen.released


@pytest.mark.parametrize(
    "status, headers, expected",
    [
        (502, {}, False),
        (502, {"Proxy-Status": "squid; error=dns_error"}, True),
        (504, {"X-Squid-Error": "ERR_READ_TIMEOUT 0"}, True),
        (502, {"Proxy-Status": "squid; received-status=502"}, False),
        (500, {"Proxy-Status": "squid; error=x"}, False),
    ],
)
def test_proxy_error(status: int, headers: dict[str, str], expected: bool) -> None:
    assert proxy_error(tutils.tresp(status_code=status, headers=http.Headers(**headers))) is expected


@pytest.mark.parametrize(
    "message, expected",
    [
        ("[Errno 111] Connect call failed ('127.0.0.1', 1)", True),
        ("Upstream proxy 127.0.0.1:3128 refused HTTP CONNECT request: 503 Service Unavailable", True),
        ("Upstream proxy 127.0.0.1:3128 refused HTTP CONNECT request: 403 Forbidden", False),
        ("connection closed", True),
        ("Client disconnected.", False),
        ("Connection killed.", False),
        ("TLS handshake failed: certificate verify failed", False),
    ],
)
def test_blames_member(message: str, expected: bool) -> None:
    assert blames_member(message) is expected


def test_script_loads_alone() -> None:
    with taddons.context() as tctx:
        module = tctx.script(str(REPO / "addons" / "egress.py"))
        assert type(module.addons[0]).__name__ == "Egress"
        assert "fwd_config" in tctx.options and tctx.options.fwd_balance == "round-robin"


def test_sidecar_flows_stay_local(tctx_egress, listeners: list[int]) -> None:
    tctx, egress = tctx_egress
    tctx.configure(egress, fwd_upstreams=[f"http://127.0.0.1:{listeners[0]}"])
    f = flow()
    notes(f).sidecar = True
    assert request(egress, f).server_conn.via is None


def test_streamed_request_is_routed_in_requestheaders(tctx_egress, listeners: list[int]) -> None:
    tctx, egress = tctx_egress
    tctx.configure(egress, fwd_upstreams=[f"http://127.0.0.1:{listeners[0]}"])
    f = flow()
    f.request.stream = True
    run_hook(egress.requestheaders(f))
    assert f.server_conn.via == ("http", ("127.0.0.1", listeners[0]))
    request(egress, f)  # the request hook does not choose twice
    assert egress.stats()[0].requests == 1


def tunnel(egress: Egress, host: str = "example.com") -> tuple[tls.ClientHelloData, _via.TunnelVia | None]:
    """A CONNECT tunnel's TLS layers as mitmproxy's NextLayer builds them, then a pass-through decision."""
    context = Context(tflow.tclient_conn(), ctx.options)
    context.server = connection.Server(address=(host, 443))
    nextlayer = layer.NextLayer(context)
    server_tls = ServerTLSLayer(context)
    server_tls.child_layer = ClientTLSLayer(context)
    nextlayer.layer = server_tls
    egress.next_layer(nextlayer)
    wrapper = nextlayer.layer if isinstance(nextlayer.layer, _via.TunnelVia) else None
    data = tls.ClientHelloData(context, None)  # type: ignore[arg-type]  (the hook reads no ClientHello)
    data.ignore_connection = True
    ctx.master.event_loop.run_until_complete(egress.tls_clienthello(data))
    return data, wrapper


def test_passthrough_tunnel_is_routed_and_accounted(tctx_egress, listeners: list[int]) -> None:
    tctx, egress = tctx_egress
    tctx.configure(egress, fwd_upstreams=[f"http://user:pw@127.0.0.1:{listeners[0]}"])
    data, wrapper = tunnel(egress)
    assert wrapper is not None and wrapper.child_layer.__class__ is ServerTLSLayer
    server = data.context.server
    assert server.via == ("http", ("127.0.0.1", listeners[0])) and egress.stats()[0].active == 1
    upstream = connection.Server(address=("127.0.0.1", listeners[0]))
    wrapper.on_result(server, upstream, None)  # the proxy answered the CONNECT with 200
    assert egress.stats()[0].active == 1  # the tunnel is open: still a load on the member
    egress.server_disconnected(
        server_hooks.ServerConnectionHookData(server=upstream, client=data.context.client)
    )
    (stats,) = egress.stats()
    assert (stats.active, stats.failures, stats.avg_response_time is not None) == (0, 0, True)
    # A refused CONNECT counts against the member and frees it at once.
    data, wrapper = tunnel(egress)
    assert wrapper is not None
    wrapper.on_result(
        data.context.server,
        upstream,
        "Upstream proxy 127.0.0.1:1 refused HTTP CONNECT request: 502 Bad Gateway",
    )
    (stats,) = egress.stats()
    assert (stats.active, stats.failures) == (0, 1)


def test_tunnels_to_direct_hosts_are_left_alone(tctx_egress, tmp_path: Path, listeners: list[int]) -> None:
    tctx, egress = tctx_egress
    config = write(
        tmp_path,
        f'[upstreams.e]\nmembers = [{{ url = "http://127.0.0.1:{listeners[0]}" }}]\n'
        '[[routes]]\nmatch = "*.example.com"\nupstream = "e"\n',
    )
    tctx.configure(egress, fwd_config=config)
    data, wrapper = tunnel(egress, "example.org")
    assert wrapper is not None and data.context.server.via is None and not data.context.server.error
    data, _ = tunnel(egress, "www.example.com")
    assert data.context.server.via is not None
