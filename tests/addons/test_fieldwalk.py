"""The compiled message type checks and hook arguments (addons/_mitm/fieldwalk.py, docs/mitmproxy-notes.md §25).

The replacements must answer exactly as mitmproxy's own walks do: the same values pass, the same values are
refused with the same TypeError text, and a hook gets the same arguments in the same order.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import hooks, http
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.layers import tls
from mitmproxy.proxy.layers.http import _hooks
from mitmproxy.test import tflow
from mitmproxy.utils import typecheck

from fwdproxy_addons import _mitm
from fwdproxy_addons._mitm import fieldwalk
from fwdproxy_addons._mitm.mark import is_ours


def mitmproxys_check(data: object) -> None:
    """What mitmproxy 12.3's MessageData.__post_init__ does (under __debug__)."""
    for field in dataclasses.fields(data):  # type: ignore[arg-type]
        typecheck.check_option_type(field.name, getattr(data, field.name), field.type)


def outcome(check: Any, data: object) -> str | None:
    try:
        check(data)
    except TypeError as e:
        return str(e)
    return None


VALUES: list[object] = [
    b"HTTP/1.1", "HTTP/1.1", 0, 1, 1.5, True, None, http.Headers(host="a.test"), {"host": "a.test"},
    b"", "", [], (b"a", b"b"), object(),
]  # fmt: skip


def shell(cls: type) -> object:
    """An instance of ``cls`` with no field set: the values are put in by each test, then checked."""
    return object.__new__(cls)


@settings(max_examples=400, deadline=None)
@given(st.data())
@pytest.mark.parametrize("cls", [http.RequestData, http.ResponseData])
def test_checks_agree_with_mitmproxys_for_any_field_values(cls: type, data: st.DataObject) -> None:
    message = shell(cls)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        object.__setattr__(message, field.name, data.draw(st.sampled_from(VALUES), label=field.name))
    assert outcome(fieldwalk.check_fields, message) == outcome(mitmproxys_check, message)


def test_a_real_request_and_response_pass_and_a_wrong_field_is_refused_as_mitmproxy_does() -> None:
    _mitm.install()
    flow = tflow.tflow(resp=True)  # built through the patched __post_init__: every field passes
    assert flow.response is not None
    bad = http.Request.make("GET", "http://a.test/")
    bad.data.port = "80"  # type: ignore[assignment]
    assert outcome(fieldwalk.check_fields, bad.data) == outcome(mitmproxys_check, bad.data)
    assert outcome(fieldwalk.check_fields, bad.data) == (
        "Expected <class 'int'> for port, but got <class 'str'>."
    )
    with pytest.raises(TypeError, match="Expected bytes | None for content"):
        http.ResponseData(
            http_version=b"HTTP/1.1", headers=http.Headers(), content="text", trailers=None,  # type: ignore[arg-type]
            timestamp_start=1.0, timestamp_end=None, status_code=200, reason=b"OK",
        )  # fmt: skip
    http.Request("a.test", 80, b"GET", b"http", b"", b"/", b"HTTP/1.1", http.Headers(), b"", None, 1, None)


def test_a_type_the_compiler_does_not_know_is_left_to_mitmproxys_check() -> None:
    Odd = dataclasses.make_dataclass("Odd", [("pairs", tuple[int, str]), ("anything", Any)])  # real types
    assert fieldwalk.classes_for(tuple[int, str]) is None
    assert fieldwalk.classes_for(Any) is None
    assert fieldwalk.classes_for(typing.TextIO) is None  # mitmproxy checks IO by a read attribute
    assert fieldwalk.classes_for(typing.BinaryIO | None) is None
    assert fieldwalk.classes_for(list[int]) is None
    assert fieldwalk.classes_for(float | None) == (float, int, type(None))
    assert outcome(fieldwalk.check_fields, Odd((1, "a"), object())) is None
    odd = Odd((1, 2), None)  # type: ignore[arg-type]
    assert outcome(fieldwalk.check_fields, odd) == outcome(mitmproxys_check, odd) is not None


HOOKS: list[hooks.Hook] = [
    _hooks.HttpRequestHook(tflow.tflow()),
    _hooks.HttpResponseHook(tflow.tflow(resp=True)),
    _hooks.HttpErrorHook(tflow.tflow(err=True)),
    server_hooks.ClientConnectedHook(tflow.tclient_conn()),
    server_hooks.ServerConnectHook(server_hooks.ServerConnectionHookData(tflow.tserver_conn(), tflow.tclient_conn())),
    tls.TlsClienthelloHook(object()),  # type: ignore[arg-type]
    _hooks.HttpConnectHook(tflow.tflow()),
]  # fmt: skip


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: type(h).__name__)
def test_hook_arguments_are_mitmproxys(hook: hooks.Hook) -> None:
    expected = [getattr(hook, f.name) for f in dataclasses.fields(hook)]  # type: ignore[arg-type]
    got = fieldwalk.hook_args(hook)
    assert len(got) == len(expected)
    assert all(a is b for a, b in zip(got, expected, strict=True))


def test_installed_walks_skip_the_per_value_typing_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The effect (§25): once installed, making a request and a response asks typecheck nothing, and a hook's
    arguments need no dataclasses.fields() walk. Fails when the patch is gone or stops taking effect."""
    _mitm.install()
    assert is_ours(vars(http.MessageData)["__post_init__"])
    assert is_ours(hooks.Hook.args)
    calls: list[str] = []
    original = typecheck.check_option_type
    monkeypatch.setattr(typecheck, "check_option_type", lambda *a: calls.append(a[0]) or original(*a))
    flow = tflow.tflow(resp=True)
    assert calls == []
    walks: list[object] = []
    real_fields = dataclasses.fields
    counting = lambda x: walks.append(x) or real_fields(x)  # noqa: E731
    monkeypatch.setattr(dataclasses, "fields", counting)
    monkeypatch.setattr(hooks, "fields", counting)  # the name mitmproxy's own Hook.args calls
    _hooks.HttpResponseHook(flow).args()  # the class's names were kept by an earlier call or are now
    _hooks.HttpResponseHook(flow).args()
    assert len(walks) <= 1
