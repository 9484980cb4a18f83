"""The guard addon's target checks (issue 16) on mitmproxy flows: what is refused, what is forwarded, and the
key URL the cache and the balancer read."""

from __future__ import annotations

import pytest
from mitmproxy import connection, http
from mitmproxy.test import taddons, tflow, tutils

from fwdproxy_addons import _flowinfo
from fwdproxy_addons.guard import Guard


def h2_flow(path: str, authority: str, *, tunnel: tuple[str, int] | None = ("a.test", 443)) -> http.HTTPFlow:
    """An HTTP/2 request as mitmproxy hands it over inside a tunnel to ``tunnel`` (host and port forced to it)."""
    f = tflow.tflow(req=tutils.treq(http_version=b"HTTP/2.0", headers=http.Headers()))
    f.request.scheme = "https"
    f.request.authority = authority
    f.request.path = path
    if tunnel is None:
        f.server_conn = connection.Server(address=None)
    else:
        f.request.data.host, f.request.data.port = tunnel  # as mitmproxy does: the setters rewrite authority
        f.server_conn = connection.Server(address=tunnel)
    return f


def run(f: http.HTTPFlow) -> http.HTTPFlow:
    guard = Guard()
    with taddons.context(guard):
        guard.requestheaders(f)
    return f


@pytest.mark.parametrize(
    "path, authority, status",
    [
        pytest.param("/x", "a.test", None, id="9113-8.3.1 plain request passes"),
        pytest.param("@evil.test/x", "a.test", 400, id="9113-8.3.1 :path not starting with /"),
        pytest.param("*", "a.test", 400, id="9112-3.2.4 GET *"),
        pytest.param("/x", "b.test", 421, id="9110-15.5.20 another host in the tunnel"),
        pytest.param("/x", "a.test:8443", 421, id="9110-15.5.20 another port in the tunnel"),
        pytest.param("/x", "u@a.test", 400, id="9110-4.2.4 userinfo in :authority"),
    ],
)
def test_h2_targets(path: str, authority: str, status: int | None) -> None:
    f = run(h2_flow(path, authority))
    assert (f.response.status_code if f.response else None) == status
    if f.response is not None:
        assert f.response.content.startswith(b"fwdproxy: ")
        assert "connection" not in f.response.headers  # no connection-specific field on HTTP/2


def test_fragment_is_cut_before_the_key_is_noted() -> None:
    f = run(h2_flow("/f?q=1#frag", "a.test"))
    assert f.response is None
    assert f.request.path == "/f?q=1"
    assert _flowinfo.note_request(f)[0] == "https://a.test/f?q=1"


def test_key_url_is_built_from_parts_not_from_request_url() -> None:
    # mitmproxy's request.url glues host and path together; a path starting "@" moves the host.
    f = h2_flow("@evil.test/x", "a.test")
    assert f.request.url == "https://a.test@evil.test/x"
    assert _flowinfo.note_request(f)[0].startswith("https://a.test/")


def test_h1_other_host_outside_a_tunnel_is_rewritten_not_refused() -> None:
    # RFC 9112 §3.2.2: an absolute-form target wins over Host; the proxy sends the target's authority.
    f = tflow.tflow(req=tutils.treq(headers=http.Headers(host="b.test")))
    f.request.scheme, f.request.data.host, f.request.data.port = "http", "a.test", 80
    f.server_conn = connection.Server(address=None)
    run(f)
    assert f.response is None and f.request.headers["Host"] == "a.test"


def test_h1_other_host_inside_a_tunnel_is_misdirected() -> None:
    f = tflow.tflow(req=tutils.treq(headers=http.Headers(host="b.test")))
    f.request.scheme, f.request.data.host, f.request.data.port = "https", "a.test", 443
    f.server_conn = connection.Server(address=("a.test", 443))
    run(f)
    assert f.response is not None and f.response.status_code == 421
    assert f.response.headers["Connection"] == "close"
    assert f.response.reason == "Misdirected Request"
