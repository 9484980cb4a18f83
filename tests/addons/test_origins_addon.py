"""The origins addon: its options reach the shared pool and DNS cache, bad values are refused."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.proxy import server
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.test import taddons

from fwdproxy_addons import _mitm
from fwdproxy_addons._mitm import pool as _origins
from fwdproxy_addons.origins import Origins


def test_options_configure_the_shared_state() -> None:
    addon = Origins()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, fwd_dns_ttl="2m", fwd_origin_idle_timeout="5s", fwd_origin_max_connections=4)
        assert _origins.SHARED.dns.ttl == 120
        assert _origins.SHARED.dns.negative_ttl == 5
        assert _origins.SHARED.idle_timeout == 5
        assert _origins.SHARED.pool.max_per_origin == 4
        tctx.configure(addon, fwd_dns_ttl="0")
        assert (_origins.SHARED.dns.ttl, _origins.SHARED.dns.negative_ttl) == (0, 0)
        tctx.configure(addon, fwd_dns_ttl="60s", fwd_origin_idle_timeout="60s", fwd_origin_max_connections=16)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("fwd_dns_ttl", "soon", "fwd_dns_ttl"),
        ("fwd_origin_idle_timeout", "-1", "fwd_origin_idle_timeout"),
        ("fwd_origin_max_connections", 0, "not a positive number"),
    ],
)
def test_bad_values_are_refused(option: str, value: object, message: str) -> None:
    addon = Origins()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(addon, **{option: value})


def test_loading_installs_the_patch_once() -> None:
    with taddons.context(Origins()):
        pass
    assert getattr(server.ConnectionHandler.open_connection, "_fwd_patched", False)
    assert getattr(_http1.Http1Client.mark_done, "_fwd_patched", False)
    mark_done = _http1.Http1Client.mark_done
    _mitm.install()
    assert _http1.Http1Client.mark_done is mark_done  # not wrapped twice
