"""The Strict addon on mitmproxy test flows: the header-timeout option and HTTP/2 requests unsafe as HTTP/1."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils

from fwdproxy_addons._mitm import http1 as _http1
from fwdproxy_addons.strict import Strict


def h2_flow(path: bytes, authority: bytes = b"example.com") -> http.HTTPFlow:
    req = tutils.treq(host="example.com", port=443, scheme=b"https", authority=authority, path=path)
    req.http_version = "HTTP/2.0"
    return tflow.tflow(req=req)


def test_header_timeout_option() -> None:
    s = Strict()
    with taddons.context(s) as tctx:
        assert _http1.HEADER_TIMEOUT.seconds == 30.0  # the documented default
        tctx.configure(s, fwd_header_timeout="5s")
        assert _http1.HEADER_TIMEOUT.seconds == 5.0
        with pytest.raises(exceptions.OptionsError, match="fwd_header_timeout: 'soon' is not a duration"):
            tctx.configure(s, fwd_header_timeout="soon")
        assert _http1.HEADER_TIMEOUT.seconds == 5.0
        tctx.configure(s, fwd_header_timeout="30s")


@pytest.mark.parametrize(
    "path, authority, status",
    [
        pytest.param(b"/fine?q=1", b"example.com", None, id="9113 8.3.1 ordinary request passes"),
        pytest.param(b"/a b", b"example.com", 400, id="9113 8.3.1 space in :path"),
        pytest.param(b"/a", b"user@example.com", 400, id="9110 4.2.4 userinfo in :authority"),
    ],
)
def test_h2_requests(path: bytes, authority: bytes, status: int | None) -> None:
    s = Strict()
    with taddons.context(s):
        f = h2_flow(path, authority)
        s.requestheaders(f)
        if status is None:
            assert f.response is None
        else:
            assert f.response is not None and f.response.status_code == status
            assert f.response.text.startswith("fwdproxy: ")


def test_http1_flows_are_left_to_the_layer_patch() -> None:
    s = Strict()
    with taddons.context(s):
        f = tflow.tflow(req=tutils.treq(path=b"/a b"))  # HTTP/1 heads were checked before parsing
        s.requestheaders(f)
        assert f.response is None
