"""The status page: self-contained HTML whose numbers are the snapshot's."""

from __future__ import annotations

import re

from fwdproxy import statuspage
from fwdproxy.metrics import Outcome, Served, Stats
from fwdproxy.store import StoreStats, TierStats

NOW = 1_700_000_000.0


def page(upstreams: list[dict] | None = None) -> tuple[str, dict]:
    stats = Stats(started=NOW - 3600)
    for served in (
        Served(Outcome.HIT, "files.pythonhosted.org", 3 * 2**20),
        Served(Outcome.HIT, "<script>.example", 10),
        Served(Outcome.MISS, "registry.npmjs.org", 1000, ttfb=0.1),
    ):
        stats.record(served, NOW - 60)
    store = StoreStats(disk=TierStats(5, 2**30, 10 * 2**30, 2), memory=TierStats(1, 2**20, 256 * 2**20, 0))
    snapshot = stats.snapshot(NOW, store=store, upstreams=upstreams)
    return statuspage.render(snapshot, version="1.2.3"), snapshot


def value(html: str, ident: str) -> str:
    m = re.search(rf'id="{ident}" data-value="([^"]*)">([^<]*)<', html)
    assert m, ident
    return m.group(1)


def test_numbers_match_the_snapshot() -> None:
    html, s = page()
    assert float(value(html, "hit-ratio")) == round(s["hit_ratio"], 6)
    assert 'id="hit-ratio" data-value="0.666667">66.7%<' in html
    assert int(value(html, "bytes-saved")) == s["bytes_saved"] == 3 * 2**20 + 10
    assert ">3.0 MiB<" in html
    assert int(value(html, "requests-total")) == 3
    assert 'id="tier-disk" data-bytes="1073741824" data-limit="10737418240"' in html
    assert "1.0 GiB of 10.0 GiB (10.0%)" in html


def test_self_contained_and_escaped() -> None:
    html, _ = page()
    assert "<script" not in html.replace("&lt;script&gt;", "")  # the hostile host name is escaped
    assert "&lt;script&gt;.example" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from anywhere
    assert html.count("<svg") == 1 and 'class="req"' in html and 'class="ratio"' not in html  # one point only
    assert "<circle" in html


def test_upstream_health() -> None:
    html, _ = page([{"group": "ci", "member": "10.0.0.1:3128", "requests": 4, "ejected": True}])
    assert "10.0.0.1:3128" in html and 'class="down">ejected' in html
    assert "no egress balancer" in page(None)[0]
    assert "no upstreams are configured" in page([])[0]


def test_chart_line_joins_minutes_with_traffic() -> None:
    timeline = [{"minute": i * 60, "requests": 2, "from_cache": 1, "hit_ratio": 0.5} for i in range(3)]
    svg = statuspage.chart(timeline)
    assert svg.count('class="req"') == 3 and svg.count("<polyline") == 1


def test_the_page_says_what_it_covers() -> None:
    html, _ = page()
    assert '<span id="covers" data-workers="1">one process</span>' in html
    stats = Stats(started=NOW)
    stats.record(Served(Outcome.HIT, "a", 1), NOW)
    rows = [
        {
            "worker": 1,
            "pid": 10,
            "requests": 7,
            "served_from_cache": 1,
            "bytes_saved": 1,
            "open_connections": 0,
        },
        {
            "worker": 2,
            "pid": 11,
            "requests": 5,
            "served_from_cache": 0,
            "bytes_saved": 0,
            "open_connections": 0,
        },
    ]
    html = statuspage.render(stats.snapshot(NOW, workers=rows))
    assert '<span id="covers" data-workers="2">all 2 workers added up</span>' in html
    assert "requests per worker 1: 7, 2: 5" in html
