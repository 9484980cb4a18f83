"""The admin and access-log addons with mitmproxy's test helpers: PURGE, fwdproxy.local, counters, log lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils

from fwdproxy import cache as policy
from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import TierStats
from fwdproxy_addons.accesslog import AccessLog
from fwdproxy_addons.admin import Admin
from fwdproxy_addons.cache import Cache
from fwdproxy_addons.egress import Egress
from tests.support import REPO


def flow(url: str = "http://example.com/x", method: str = "GET", client: str = "127.0.0.1") -> http.HTTPFlow:
    f = tflow.tflow(req=tutils.treq(method=method.encode()))
    f.request.url = url
    f.client_conn.peername = (client, 50000)
    return f


def respond(f: http.HTTPFlow, body: bytes, cache_status: str | None) -> None:
    headers = http.Headers(content_length=str(len(body)), content_type="text/plain")
    if cache_status:
        headers["Cache-Status"] = cache_status
    f.response = tutils.tresp(content=body, headers=headers)
    f.response.timestamp_start = f.request.timestamp_end + 0.05


@pytest.fixture
def admin_ctx(tmp_path: Path):
    cache, admin = Cache(), Admin()
    with taddons.context(cache, admin) as tctx:
        tctx.configure(cache, fwd_cache_dir=str(tmp_path / "c"))
        tctx.configure(admin, fwd_admin_port=0, fwd_allow_purge=["127.0.0.1/32"])
        yield tctx, cache, admin


def store_entry(cache: Cache, url: str) -> None:
    meta = StoredResponse(url, 200, "OK", Headers.of({"Cache-Control": "max-age=60"}), 1.0, 1.0, 2)
    assert cache.store is not None
    cache.store.put(policy.primary_key("GET", url) + "\0", meta, b"ok")


def test_purge_allowed_removes_then_404(admin_ctx) -> None:
    _, cache, admin = admin_ctx
    store_entry(cache, "http://example.com/x")
    first = flow(method="PURGE")
    admin.requestheaders(first)
    assert first.response is not None and first.response.status_code == 200
    second = flow(method="PURGE")
    admin.requestheaders(second)
    assert second.response is not None and second.response.status_code == 404
    assert admin.stats.purges == 1


def test_purge_from_a_client_outside_allow_purge_is_403(admin_ctx) -> None:
    _, cache, admin = admin_ctx
    store_entry(cache, "http://example.com/x")
    f = flow(method="PURGE", client="127.0.0.2")
    admin.requestheaders(f)
    assert f.response is not None and f.response.status_code == 403
    assert b"--allow-purge" in f.response.content
    assert cache.store is not None and cache.store.variants(policy.primary_key("GET", "http://example.com/x"))


def test_status_pages_through_the_proxy(admin_ctx) -> None:
    _, _, admin = admin_ctx
    for path, kind in (("/", "text/html"), ("/stats.json", "application/json"), ("/metrics", "text/plain")):
        f = flow(f"http://fwdproxy.local{path}")
        admin.requestheaders(f)
        assert f.response is not None and f.response.status_code == 200
        assert f.response.headers["Content-Type"].startswith(kind)
    missing = flow("http://fwdproxy.local/nope")
    admin.requestheaders(missing)
    assert missing.response is not None and missing.response.status_code == 404


def test_counts_from_cache_status_and_skips_its_own_answers(admin_ctx) -> None:
    _, _, admin = admin_ctx
    for status in ("fwdproxy; fwd=uri-miss; fwd-status=200; stored", "fwdproxy; hit; ttl=5", "fwdproxy; hit"):
        f = flow()
        respond(f, b"12345", status)
        admin.response(f)
    page = flow("http://fwdproxy.local/stats.json")
    admin.requestheaders(page)
    admin.response(page)
    s = admin.snapshot()
    assert s["requests"]["total"] == 3 and s["hits"] == 2 and s["bytes_saved"] == 10
    assert s["origin_latency"]["count"] == 1 and s["cache"]["disk"] is not None
    assert s["upstreams"] is None  # no egress addon loaded
    assert admin.hit_deltas == {"GET http://example.com/x": 2}


def test_upstreams_come_from_the_egress_addon(tmp_path: Path) -> None:
    admin, egress = Admin(), Egress()
    with taddons.context(admin, egress) as tctx:
        tctx.configure(egress, fwd_upstreams=["http://127.0.0.1:3128"])
        (member,) = admin.snapshot()["upstreams"]
        assert member["member"] == "127.0.0.1:3128" and member["requests"] == 0 and member["ejected"] is False


def test_bad_options_are_rejected(admin_ctx) -> None:
    tctx, _, admin = admin_ctx
    with pytest.raises(exceptions.OptionsError, match="fwd_allow_purge"):
        tctx.configure(admin, fwd_allow_purge=["not-a-network"])
    with pytest.raises(exceptions.OptionsError, match="fwd_admin_port"):
        tctx.configure(admin, fwd_admin_port=70000)


@pytest.mark.parametrize("fmt", ["squid", "json"])
def test_access_log_lines(tmp_path: Path, fmt: str) -> None:
    log = AccessLog()
    path = tmp_path / "a.log"
    with taddons.context(log) as tctx:
        tctx.configure(log, fwd_access_log=str(path), fwd_log_format=fmt)
        f = flow()
        respond(f, b"hello", "fwdproxy; hit; ttl=5")
        log.response(f)
        log.done()  # flushes
    (line,) = path.read_text().splitlines()
    if fmt == "squid":
        fields = line.split()
        assert (
            fields[3] == "TCP_HIT/200" and fields[6] == "http://example.com/x" and fields[8] == "HIER_NONE/-"
        )
    else:
        record = json.loads(line)
        assert record["outcome"] == "hit" and record["status"] == 200 and record["tunnel"] == "none"
        assert record["bytes"] > 5 and record["cache_status"] == "fwdproxy; hit; ttl=5"


@pytest.mark.parametrize("name, cls", [("admin", "Admin"), ("accesslog", "AccessLog")])
def test_loads_as_a_mitmdump_script(name: str, cls: str) -> None:
    with taddons.context() as tctx:
        module = tctx.script(str(REPO / "addons" / f"{name}.py"))
        assert type(module.addons[0]).__name__ == cls


def test_a_worker_adds_the_others_files_and_a_replacement_resumes(tmp_path: Path) -> None:
    import os

    from fwdproxy import metrics, workerstats

    run = workerstats.run_dir(str(tmp_path / "c"), "77")
    other = metrics.Stats(started=1.0)
    for _ in range(5):
        other.record(metrics.Served(metrics.Outcome.HIT, "b.example", 10), 100.0)
    memory = TierStats(entries=3, bytes=300, limit=1000, evictions=1)  # worker 2's own memory tier
    workerstats.write(workerstats.path_for(run, 2), 2, 4242, 100.0, other.state(), memory)
    predecessor = metrics.Stats(started=2.0)
    predecessor.record(metrics.Served(metrics.Outcome.MISS, "a.example", 3), 100.0)
    predecessor.open_connections = 9  # closed when it died
    workerstats.write(workerstats.path_for(run, 1), 1, 4141, 100.0, predecessor.state())

    cache, admin = Cache(), Admin()
    with taddons.context(cache, admin) as tctx:
        tctx.configure(cache, fwd_cache_dir=str(tmp_path / "c"))
        tctx.configure(
            admin, fwd_admin_port=0, fwd_cache_dir=str(tmp_path / "c"), fwd_worker=1, fwd_worker_run="77"
        )
        admin._resume_predecessor()
        f = flow()
        respond(f, b"hello", "fwdproxy; hit")
        admin.response(f)
        s = admin.snapshot()
        assert s["requests"]["total"] == 1 + 1 + 5 and s["served_from_cache"] == 6
        assert s["open_connections"] == 0 and s["started"] == 1.0
        own = cache.store.memory.stats()
        assert s["cache"]["memory"] == {
            "entries": own.entries + 3, "bytes": own.bytes + 300, "limit": own.limit + 1000,
            "evictions": own.evictions + 1,
        }  # fmt: skip
        assert {h["host"]: h["requests"] for h in s["top_hosts"]} == {"b.example": 5, "example.com": 1}
        assert [(w["worker"], w["pid"], w["requests"]) for w in s["workers"]] == [
            (1, os.getpid(), 2),
            (2, 4242, 5),
        ]
        admin._write_stats()
        mine = workerstats.read(workerstats.path_for(run, 1))
        assert mine is not None and mine.pid == os.getpid()
        assert metrics.merge([mine.state], 0.0).snapshot(200.0)["requests"]["total"] == 2


def test_a_single_process_covers_itself_only(admin_ctx, tmp_path: Path) -> None:
    _, _, admin = admin_ctx
    s = admin.snapshot()
    assert s["worker_count"] == 1 and [w["worker"] for w in s["workers"]] == [0]
    assert admin.stats_dir is None and not (tmp_path / "c" / "stats").exists()
