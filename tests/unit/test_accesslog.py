"""Access log lines: Squid's native format field by field, and the JSON object."""

from __future__ import annotations

import json

import pytest

from fwdproxy.accesslog import LogFormat, LogRecord, TunnelMode, hierarchy, line, squid_tag
from fwdproxy.metrics import Outcome

T = 1_700_000_000.123


def rec(**kw: object) -> LogRecord:
    base: dict[str, object] = dict(
        time=T,
        elapsed=0.180,
        client="127.0.0.1",
        method="GET",
        url="http://example.com/",
        status=200,
        bytes=411,
        outcome=Outcome.MISS,
        cache_status="fwdproxy; fwd=uri-miss; fwd-status=200; stored",
        server="93.184.216.34",
        content_type="text/html; charset=utf-8",
    )
    base.update(kw)
    return LogRecord(**base)  # type: ignore[arg-type]


def test_squid_native_format() -> None:
    assert line(rec(), LogFormat.SQUID) == (
        "1700000000.123    180 127.0.0.1 TCP_MISS/200 411 GET http://example.com/ - HIER_DIRECT/93.184.216.34 text/html"
    )


@pytest.mark.parametrize(
    "kw, tag",
    [
        pytest.param({"outcome": Outcome.HIT}, "TCP_HIT"),
        pytest.param(
            {"outcome": Outcome.HIT, "status": 304}, "TCP_IMS_HIT", id="client conditional from cache"
        ),
        pytest.param({"outcome": Outcome.HIT, "status": 404}, "TCP_NEGATIVE_HIT"),
        pytest.param({"outcome": Outcome.REVALIDATED}, "TCP_REFRESH_UNMODIFIED"),
        pytest.param({"outcome": Outcome.REFRESH}, "TCP_REFRESH_MODIFIED"),
        pytest.param(
            {
                "outcome": Outcome.STALE,
                "cache_status": "fwdproxy; fwd=stale; fwd-status=503; detail=stale-if-error",
            },
            "TCP_REFRESH_FAIL_OLD",
        ),
        pytest.param({"outcome": Outcome.COLLAPSED}, "TCP_CF_HIT"),
        pytest.param({"cache_status": "fwdproxy; fwd=request; fwd-status=200"}, "TCP_CLIENT_REFRESH_MISS"),
        pytest.param({"outcome": Outcome.NONE, "local": True, "status": 403}, "TCP_DENIED"),
        pytest.param({"outcome": Outcome.NONE, "local": True, "status": 502}, "TCP_MISS", id="readable 502"),
        pytest.param({"outcome": Outcome.NONE, "local": True, "method": "PURGE"}, "NONE_NONE"),
        pytest.param({"method": "CONNECT", "tunnel": TunnelMode.PASSTHROUGH}, "TCP_TUNNEL"),
        pytest.param({"method": "CONNECT", "tunnel": TunnelMode.INTERCEPTED}, "NONE_NONE"),
        pytest.param({"aborted": True, "status": 0}, "TCP_MISS_ABORTED"),
    ],
)
def test_squid_tags(kw: dict, tag: str) -> None:
    assert squid_tag(rec(**kw)) == tag


@pytest.mark.parametrize(
    "kw, expected",
    [
        pytest.param({}, "HIER_DIRECT/93.184.216.34"),
        pytest.param({"upstream": "10.0.0.1:3128"}, "FIRSTUP_PARENT/10.0.0.1:3128"),
        pytest.param({"outcome": Outcome.HIT, "server": ""}, "HIER_NONE/-"),
        pytest.param({"local": True}, "HIER_NONE/-"),
    ],
)
def test_hierarchy(kw: dict, expected: str) -> None:
    assert hierarchy(rec(**kw)) == expected


def test_empty_fields_are_dashes() -> None:
    fields = line(rec(content_type="", server="", outcome=Outcome.HIT), LogFormat.SQUID).split()
    assert len(fields) == 10 and fields[-1] == "-" and fields[-2] == "HIER_NONE/-"


def test_json_format() -> None:
    obj = json.loads(line(rec(upstream="10.0.0.1:3128", tunnel=TunnelMode.INTERCEPTED), LogFormat.JSON))
    assert obj == {
        "time": "2023-11-14T22:13:20.123Z",
        "client": "127.0.0.1",
        "method": "GET",
        "url": "http://example.com/",
        "status": 200,
        "bytes": 411,
        "duration": 0.18,
        "cache_status": "fwdproxy; fwd=uri-miss; fwd-status=200; stored",
        "outcome": "miss",
        "upstream": "10.0.0.1:3128",
        "server": "93.184.216.34",
        "tunnel": "intercepted",
        "content_type": "text/html; charset=utf-8",
        "aborted": False,
    }
