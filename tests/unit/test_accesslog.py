"""Access log lines: Squid's native format field by field, and the JSON object."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwdproxy.accesslog import (
    LogFormat,
    LogRecord,
    TunnelMode,
    hierarchy,
    line,
    repeat,
    repeat_line,
    squid_tag,
)
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


def _squid_reference(rec: LogRecord) -> str:
    """The squid line built whole from the record, field by field (what line() gives, with its remembered
    ends)."""
    ms = int(rec.time * 1000)
    mime = rec.content_type.split(";", 1)[0].strip()
    dash = lambda v: v.replace(" ", "%20") if v else "-"  # noqa: E731
    return (
        f"{ms // 1000}.{ms % 1000:03d} {int(rec.elapsed * 1000):6d} {dash(rec.client)} "
        f"{squid_tag(rec)}/{rec.status:03d} {rec.bytes} {dash(rec.method)} {dash(rec.url)} - "
        f"{hierarchy(rec)} {dash(mime)}"
    )


def _json_reference(rec: LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec.time)) + f".{int(rec.time * 1000) % 1000:03d}Z"
    obj = {
        "time": stamp,
        "client": rec.client,
        "method": rec.method,
        "url": rec.url,
        "status": rec.status,
        "bytes": rec.bytes,
        "duration": round(rec.elapsed, 6),
        "cache_status": rec.cache_status or None,
        "outcome": rec.outcome.value,
        "upstream": rec.upstream or None,
        "server": rec.server or None,
        "tunnel": rec.tunnel.value,
        "content_type": rec.content_type or None,
        "aborted": rec.aborted,
    }
    return json.dumps(obj, separators=(",", ":"))


texts = st.text(max_size=12) | st.sampled_from(["", "GET", "text/html; charset=utf-8", 'caf\u00e9 "x"'])
records = st.builds(
    LogRecord,
    time=st.floats(1e9, 4e9),
    elapsed=st.floats(0, 1e4),
    client=texts,
    method=texts,
    url=texts,
    status=st.integers(0, 999),
    bytes=st.integers(0, 10**12),
    outcome=st.sampled_from(Outcome),
    cache_status=st.sampled_from(
        ["", "fwdproxy; hit; ttl=5", "fwdproxy; fwd=request", "fwdproxy; hit; detail=stale-if-error"]
    ),
    upstream=texts,
    server=texts,
    content_type=texts,
    tunnel=st.sampled_from(TunnelMode),
    local=st.booleans(),
    aborted=st.booleans(),
)


@given(records, st.floats(1e9, 4e9), st.floats(0, 1e4), texts)
def test_lines_with_remembered_ends_are_the_whole_record(
    rec: LogRecord, when: float, elapsed: float, client: str
) -> None:
    """line() remembers the part of a line that does not change from request to request: the same answer
    logged again at another time, after another duration, for another client gets exactly the line the
    record makes field by field."""
    again = dataclasses.replace(rec, time=when, elapsed=elapsed, client=client)
    for r in (rec, again, rec):
        assert line(r, LogFormat.SQUID) == _squid_reference(r)
        assert line(r, LogFormat.JSON) == _json_reference(r)
        assert json.loads(line(r, LogFormat.JSON))["client"] == r.client
    # The fast hit layer's way: the record made once, its line written for each request.
    for fmt, reference in ((LogFormat.SQUID, _squid_reference), (LogFormat.JSON, _json_reference)):
        rep = repeat(rec, fmt)
        assert repeat_line(rep, rec.time, rec.elapsed, rec.client) == reference(rec)
        assert repeat_line(rep, when, elapsed, client) == reference(again)


@pytest.mark.parametrize(
    "change",
    [
        {"bytes": 412},
        {"status": 304},
        {"outcome": Outcome.HIT},
        {"cache_status": "fwdproxy; hit; ttl=5"},
        {"url": "http://example.com/other"},
        {"method": "HEAD"},
        {"content_type": "text/plain"},
        {"server": "10.1.1.1"},
        {"upstream": "10.0.0.1:3128"},
        {"tunnel": TunnelMode.INTERCEPTED},
        {"local": True},
        {"aborted": True},
    ],
)
def test_a_changed_field_is_never_written_from_a_remembered_line(change: dict[str, object]) -> None:
    first, second = rec(), rec(**change)
    for fmt, reference in ((LogFormat.SQUID, _squid_reference), (LogFormat.JSON, _json_reference)):
        assert line(first, fmt) == reference(first)
        assert line(second, fmt) == reference(second)
        assert line(first, fmt) == reference(first)
