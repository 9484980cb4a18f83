"""The Anonymize addon on mitmproxy test flows: option parsing, request rewriting, response stripping."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.proxy.layers.http import HttpResponseHook
from mitmproxy.test import taddons, tflow, tutils

from fwdproxy.anonymize import DEFAULT_ACCEPT_LANGUAGE, DEFAULT_USER_AGENT, Level
from fwdproxy_addons.anonymize import Anonymize
from tests.support import REPO


def flow(*fields: tuple[str, str], host: str = "shop.example.com", http2: bool = False) -> http.HTTPFlow:
    headers = http.Headers([(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in fields])
    req = tutils.treq(host=host, port=443, scheme=b"https", headers=headers, content=b"")
    if http2:
        req.http_version = "HTTP/2.0"
    return tflow.tflow(req=req)


def sent(f: http.HTTPFlow) -> list[tuple[str, str]]:
    return list(f.request.headers.items(multi=True))


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fwdproxy.toml"
    path.write_text(text)
    return str(path)


def test_defaults_to_standard() -> None:
    a = Anonymize()
    with taddons.context(a):
        assert a.cfg.level is Level.STANDARD


@pytest.mark.parametrize(
    "options, message",
    [
        pytest.param(
            {"fwd_anonymize": "max"}, "fwd_anonymize: 'max' is not one of off, standard, strict", id="level"
        ),
        pytest.param(
            {"fwd_anonymize_config": "/nonexistent.toml"}, "/nonexistent.toml: no such file", id="no file"
        ),
    ],
)
def test_bad_options(options: dict[str, str], message: str) -> None:
    a = Anonymize()
    with taddons.context(a) as tctx:
        with pytest.raises(exceptions.OptionsError, match=message):
            tctx.configure(a, **options)
        assert a.cfg.level is Level.STANDARD  # the old value stays


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param("[anonymize\n", "not valid TOML", id="not toml"),
        pytest.param('anonymize = "strict"\n', "anonymize: 'strict' is not a table", id="not a table"),
        pytest.param(
            '[anonymize]\nremove = "X-Debug"\n', "anonymize.remove: 'X-Debug' is not a list", id="remove"
        ),
        pytest.param(
            '[anonymize]\nlevel = "max"\n', "anonymize.level: 'max' is not one of", id="level in file"
        ),
        pytest.param("[anonymize]\nkeeep = []\n", "anonymize.keeep: unknown key", id="unknown key"),
    ],
)
def test_bad_config_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    a = Anonymize()
    with taddons.context(a) as tctx:
        with pytest.raises(exceptions.OptionsError, match=f"^fwd_anonymize_config: .*: {message}"):
            tctx.configure(a, fwd_anonymize_config=toml(tmp_path, text))


def test_option_level_overrides_file_level(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = Anonymize()
    path = toml(tmp_path, '[anonymize]\nlevel = "strict"\nremove = ["X-Debug"]\n')
    with taddons.context(a) as tctx, caplog.at_level(logging.INFO, "fwdproxy.anonymize"):
        tctx.configure(a, fwd_anonymize="off", fwd_anonymize_config=path)
        assert a.cfg.level is Level.OFF and a.cfg.remove == ("X-Debug",)
        assert "overrides anonymize.level = 'strict'" in caplog.text
        tctx.configure(a, fwd_anonymize="strict")
        assert a.cfg.level is Level.STRICT and a.cfg.remove == ("X-Debug",)


def test_standard_removes_identifying_headers() -> None:
    a = Anonymize()
    with taddons.context(a):
        f = flow(
            ("Host", "shop.example.com"),
            ("X-Forwarded-For", "203.0.113.7"),
            ("Accept", "*/*"),
            ("Forwarded", "for=203.0.113.7"),
            ("X-Forwarded-Ssl", "on"),
            ("Proxy-Connection", "keep-alive"),
            ("Cookie", "a=\udcff"),  # a byte that is not UTF-8 comes back unchanged
        )
        a.requestheaders(f)
        assert sent(f) == [("Host", "shop.example.com"), ("Accept", "*/*"), ("Cookie", "a=\udcff")]
        assert f.request.headers.fields[-1] == (b"Cookie", b"a=\xff")


def test_clean_request_is_not_touched() -> None:
    a = Anonymize()
    with taddons.context(a):
        f = flow(("Host", "shop.example.com"), ("Accept", "*/*"), ("X-Request-ID", "1"))
        before = f.request.headers
        a.requestheaders(f)
        assert f.request.headers is before


def test_keep_of_a_prefixed_name_leaves_the_flow_alone(tmp_path: Path) -> None:
    a = Anonymize()
    with taddons.context(a) as tctx:
        tctx.configure(a, fwd_anonymize_config=toml(tmp_path, '[anonymize]\nkeep = ["X-Forwarded-Proto"]\n'))
        f = flow(("Host", "h"), ("X-Forwarded-Proto", "https"))
        before = f.request.headers
        a.requestheaders(f)
        assert f.request.headers is before


def test_strict_rewrites() -> None:
    a = Anonymize()
    with taddons.context(a) as tctx:
        tctx.configure(a, fwd_anonymize="strict")
        f = flow(
            ("Host", "shop.example.com"),
            ("User-Agent", "curl/8"),
            ("From", "me@example.net"),
            ("Referer", "https://www.example.com/search?q=secret"),
        )
        a.requestheaders(f)
        assert sent(f) == [
            ("Host", "shop.example.com"),
            ("User-Agent", DEFAULT_USER_AGENT),
            ("Referer", "https://www.example.com/"),
            ("Accept-Language", DEFAULT_ACCEPT_LANGUAGE),
        ]
        cross = flow(("Referer", "https://tracker.example.net/p"))
        a.requestheaders(cross)
        assert "Referer" not in cross.request.headers


def test_off_forwards_all_but_proxy_headers() -> None:
    a = Anonymize()
    with taddons.context(a) as tctx:
        tctx.configure(a, fwd_anonymize="off")
        f = flow(("X-Forwarded-For", "203.0.113.7"), ("Via", "1.1 x"), ("Proxy-Authorization", "Basic eA=="))
        a.requestheaders(f)
        assert sent(f) == [("X-Forwarded-For", "203.0.113.7"), ("Via", "1.1 x")]


def test_custom_rules_from_file(tmp_path: Path) -> None:
    a = Anonymize()
    path = toml(
        tmp_path,
        '[anonymize]\nremove = ["X-Debug"]\nset = { DNT = "1" }\nkeep = ["X-Real-IP"]\n'
        'response_remove = ["X-Powered-By"]\n',
    )
    with taddons.context(a) as tctx:
        tctx.configure(a, fwd_anonymize_config=path)
        f = flow(("X-Debug", "1"), ("X-Real-IP", "10.0.0.1"), ("Via", "1.1 x"))
        a.requestheaders(f)
        assert sent(f) == [("X-Real-IP", "10.0.0.1"), ("DNT", "1")]
        f.response = tutils.tresp(headers=http.Headers(x_powered_by="php", x_backend_server="app-1"))
        a.responseheaders(f)
        assert list(f.response.headers.keys()) == ["x-backend-server"]  # standard keeps backend names


def test_http2_names_stay_lowercase() -> None:
    a = Anonymize()
    with taddons.context(a) as tctx:
        tctx.configure(a, fwd_anonymize="strict")
        f = flow(("user-agent", "curl/8"), ("x-forwarded-for", "203.0.113.7"), http2=True)
        a.requestheaders(f)
        assert sent(f) == [("user-agent", DEFAULT_USER_AGENT), ("Accept-Language", DEFAULT_ACCEPT_LANGUAGE)]
        # (mitmproxy lower-cases names on the HTTP/2 wire; the origin sees accept-language)


def test_answered_flow_is_skipped() -> None:
    a = Anonymize()
    with taddons.context(a):
        f = flow(("X-Forwarded-For", "203.0.113.7"))
        f.response = tutils.tresp()
        a.requestheaders(f)
        assert "X-Forwarded-For" in f.request.headers


def backend_response() -> http.Response:
    return tutils.tresp(
        headers=http.Headers(
            [
                (b"Content-Type", b"text/plain"),
                (b"X-Backend-Server", b"app-7.internal"),
                (b"Server", b"nginx"),
            ]
        )
    )


def test_strict_strips_responses_early_and_last() -> None:
    a = Anonymize()
    with taddons.context(a, a.last) as tctx:
        tctx.configure(a, fwd_anonymize="strict")
        f = tflow.tflow(resp=backend_response())
        a.responseheaders(f)
        assert list(f.response.headers.keys()) == ["Content-Type", "Server"]
        # A later addon swaps in a stored response (e.g. after a 304): the last response hook strips it too.
        f.response = backend_response()
        a.last.response(f)
        assert "X-Backend-Server" not in f.response.headers
        # A streamed response's headers are already on the wire: nothing to do.
        f.response = backend_response()
        f.response.stream = True
        a.last.response(f)
        assert "X-Backend-Server" in f.response.headers


def test_last_runs_after_another_addons_response_hook() -> None:
    """In a chain [anonymize, cache-like addon, anonymize.last], what the middle addon puts back is removed."""

    class SwapsInStored:
        def response(self, flow: http.HTTPFlow) -> None:
            flow.response = backend_response()

    async def run() -> http.HTTPFlow:
        a = Anonymize()
        with taddons.context(a, SwapsInStored(), a.last) as tctx:
            tctx.configure(a, fwd_anonymize="strict")
            f = tflow.tflow(resp=backend_response())
            await tctx.master.addons.handle_lifecycle(HttpResponseHook(f))
            return f

    f = asyncio.run(run())
    assert f.response is not None and "X-Backend-Server" not in f.response.headers


def test_standard_leaves_responses_alone() -> None:
    a = Anonymize()
    with taddons.context(a):
        f = tflow.tflow(resp=backend_response())
        before = f.response.headers
        a.responseheaders(f)
        a.last.response(f)
        assert f.response.headers is before


def test_full_cycle() -> None:
    """Every hook of a flow, in order, as mitmproxy calls them (no response yet at requestheaders)."""

    async def cycle() -> http.HTTPFlow:
        a = Anonymize()
        with taddons.context(a) as tctx:
            tctx.configure(a, fwd_anonymize="strict")
            f = flow(("X-Forwarded-For", "203.0.113.7"), ("Referer", "https://tracker.example.net/"))
            await tctx.cycle(a, f)
            return f

    f = asyncio.run(cycle())
    assert sent(f) == [("User-Agent", DEFAULT_USER_AGENT), ("Accept-Language", DEFAULT_ACCEPT_LANGUAGE)]


def test_script_loads() -> None:
    with taddons.context() as tctx:
        loaded = tctx.script(str(REPO / "addons" / "anonymize.py"))
        found = getattr(loaded, "addons", [loaded])
        assert type(found[0]).__name__ == "Anonymize"
