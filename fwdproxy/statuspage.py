"""The status page: one self-contained HTML document (inline CSS and SVG, nothing fetched) from a stats snapshot."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from fwdproxy.units import format_duration, format_size

CONTENT_TYPE = "text/html; charset=utf-8"
REFRESH_SECONDS = 15
"""The page reloads itself this often: fresh enough to watch a CI run, rare enough to cost nothing."""

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px} h2{font-size:15px;margin:24px 0 8px;color:#445}
.sub{color:#667;margin-bottom:16px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 16px;min-width:150px}
.card .v{font-size:26px;font-weight:600} .card .l{color:#667;font-size:12px;text-transform:uppercase}
.panel{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 16px;max-width:760px}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bar{background:#e8ebf0;border-radius:4px;height:10px;width:260px;display:inline-block;vertical-align:middle}
.bar span{display:block;height:10px;border-radius:4px;background:#3b82f6}
.up{color:#15803d;font-weight:600} .down{color:#b91c1c;font-weight:600} .muted{color:#667}
a{color:#2563eb}
"""


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def chart(timeline: Sequence[Mapping[str, Any]], width: int = 720, height: int = 220) -> str:
    """Requests per minute as bars (left axis) and the hit ratio as a line (right axis, 0-100%)."""
    left, right, top, bottom = 48, 48, 14, 30
    pw, ph = width - left - right, height - top - bottom
    peak = max([int(m["requests"]) for m in timeline] + [1])
    slot = pw / max(len(timeline), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="requests and hit ratio, last hour">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fbfcfd" stroke="#dde1e7"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top + ph * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#eef0f4"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#3b82f6">'
            f"{round(peak * frac)}</text>"
        )
        parts.append(
            f'<text x="{left + pw + 6}" y="{y + 4:.1f}" font-size="11" fill="#d97706">{int(frac * 100)}%</text>'
        )
    points: list[list[str]] = [[]]
    for i, m in enumerate(timeline):
        x = left + i * slot
        n = int(m["requests"])
        if n:
            h = ph * n / peak
            parts.append(
                f'<rect class="req" x="{x + 1:.1f}" y="{top + ph - h:.1f}" width="{max(slot - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="#93c5fd"><title>{n} requests, {m["from_cache"]} from cache</title></rect>'
            )
        if m["hit_ratio"] is None:
            points.append([])
        else:
            points[-1].append(f"{x + slot / 2:.1f},{top + ph * (1 - float(m['hit_ratio'])):.1f}")
    for line in points:
        if len(line) == 1:
            cx, cy = line[0].split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="#d97706"/>')
        elif line:
            parts.append(
                f'<polyline class="ratio" points="{" ".join(line)}" fill="none" stroke="#d97706" stroke-width="2"/>'
            )
    for label, x, anchor in (
        ("-60 min", left, "start"),
        ("-30 min", left + pw / 2, "middle"),
        ("now", left + pw, "end"),
    ):
        parts.append(
            f'<text x="{x:.1f}" y="{height - 10}" font-size="11" text-anchor="{anchor}" fill="#667">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _card(ident: str, label: str, shown: str, value: object) -> str:
    return (
        f'<div class="card"><div class="l">{_e(label)}</div>'
        f'<div class="v" id="{ident}" data-value="{_e(value)}">{_e(shown)}</div></div>'
    )


def _tier_row(name: str, tier: Mapping[str, Any] | None) -> str:
    if tier is None:
        return f'<tr><td>{name}</td><td colspan="4" class="muted">not visible from this process</td></tr>'
    used, limit = int(tier["bytes"]), int(tier["limit"])
    frac = min(1.0, used / limit) if limit else 0.0
    return (
        f'<tr id="tier-{name}" data-bytes="{used}" data-limit="{limit}" data-entries="{tier["entries"]}">'
        f"<td>{name}</td>"
        # A sliver for any use at all, so "in use, but tiny" differs from empty.
        f'<td><span class="bar"><span style="width:{max(frac * 100, 1.0 if used else 0.0):.1f}%"></span></span></td>'
        f'<td class="n">{_e(format_size(used))} of {_e(format_size(limit))} ({_pct(frac)})</td>'
        f'<td class="n">{_count(tier["entries"], "entry", "entries")}</td>'
        f'<td class="n">{tier["evictions"]} evicted</td></tr>'
    )


def _upstreams(upstreams: Sequence[Mapping[str, Any]] | None) -> str:
    if upstreams is None:
        return '<p class="muted" id="upstreams">Direct to origins: no egress balancer is loaded.</p>'
    if not upstreams:
        return '<p class="muted" id="upstreams">Direct to origins: no upstreams are configured.</p>'
    rows = []
    for u in upstreams:
        ejected = bool(u.get("ejected"))
        state = '<span class="down">ejected</span>' if ejected else '<span class="up">up</span>'
        avg = u.get("avg_response_time")
        rows.append(
            f"<tr><td>{_e(u.get('group', ''))}</td><td>{_e(u.get('member', ''))}</td><td>{state}</td>"
            f'<td class="n">{_e(u.get("requests", 0))}</td><td class="n">{_e(u.get("failures", 0))}</td>'
            f'<td class="n">{_e(u.get("active", 0))}</td>'
            f'<td class="n">{"-" if avg is None else f"{float(avg) * 1000:.0f} ms"}</td></tr>'
        )
    return (
        '<table id="upstreams"><tr><th>group</th><th>upstream</th><th>health</th><th class="n">requests</th>'
        '<th class="n">failures</th><th class="n">active</th><th class="n">mean TTFB</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _shared(shared: Mapping[str, Any] | None) -> str:
    """The shared tier's row (issue 20): its state, hits and misses, bytes, errors and lookup latency."""
    if not shared or shared.get("state", "off") == "off":
        return '<p class="muted" id="shared" data-state="off">No shared tier (--shared-cache is off).</p>'
    state = str(shared["state"])
    css = "up" if state == "connected" else "down"
    lookups = int(shared.get("lookups", 0))
    mean = f"{float(shared['lookup_seconds']) / lookups * 1000:.1f} ms" if lookups else "-"
    note = "" if shared.get("subscribed") else ' <span class="down">(not subscribed to invalidations)</span>'
    return (
        f'<table id="shared" data-state="{_e(state)}"><tr><th>server</th><th>state</th><th class="n">hits</th>'
        '<th class="n">misses</th><th class="n">read</th><th class="n">written</th><th class="n">errors</th>'
        '<th class="n">mean lookup</th></tr>'
        f'<tr><td>{_e(shared["url"])}</td><td><span class="{css}">{_e(state)}</span>{note}</td>'
        f'<td class="n">{int(shared["hits"])}</td><td class="n">{int(shared["misses"])}</td>'
        f'<td class="n">{_e(format_size(int(shared["bytes_read"])))}</td>'
        f'<td class="n">{_e(format_size(int(shared["bytes_written"])))}</td>'
        f'<td class="n">{int(shared["errors"])}</td><td class="n">{_e(mean)}</td></tr></table>'
    )


def covers(s: Mapping[str, Any]) -> str:
    """What the numbers cover: the one process, or every worker of --workers N added up."""
    workers = s.get("workers") or []
    count = int(s.get("worker_count", 1))
    if count <= 1:
        return '<span id="covers" data-workers="1">one process</span>'
    rows = ", ".join(f"{int(w['worker'])}: {int(w['requests'])}" for w in workers)
    return (
        f'<span id="covers" data-workers="{count}">all {count} workers added up</span>'
        f' <span class="muted">(requests per worker {_e(rows)}; others\' counts lag by a second)</span>'
    )


def render(s: Mapping[str, Any], *, version: str = "") -> str:
    """The whole page for one snapshot (metrics.Stats.snapshot)."""
    hosts = "".join(
        f'<tr><td>{_e(h["host"])}</td><td class="n" data-bytes="{h["bytes_saved"]}">{_e(format_size(h["bytes_saved"]))}'
        f'</td><td class="n">{h["requests"]}</td></tr>'
        for h in s["top_hosts"]
    )
    if not hosts:
        hosts = '<tr><td colspan="3" class="muted">nothing served from the cache yet</td></tr>'
    cache = s.get("cache")
    if cache is None:
        tiers = '<p class="muted">The cache is not loaded.</p>'
    else:
        tiers = (
            "<table>"
            + _tier_row("memory", cache.get("memory"))
            + _tier_row("disk", cache.get("disk"))
            + "</table>"
        )
        if cache.get("disk_full"):
            tiers += '<p class="down">The disk is full: new responses are not being stored.</p>'
    requests = s["requests"]
    cards = "".join(
        (
            _card("hit-ratio", "hit ratio", _pct(s["hit_ratio"]), f"{s['hit_ratio']:.6f}"),
            _card("bytes-saved", "bytes saved", format_size(s["bytes_saved"]), s["bytes_saved"]),
            _card("requests-total", "requests", str(requests["total"]), requests["total"]),
            _card("served-from-cache", "from cache", str(s["served_from_cache"]), s["served_from_cache"]),
            _card("open-connections", "open connections", str(s["open_connections"]), s["open_connections"]),
        )
    )
    by_status = " · ".join(f"{k} {v}" for k, v in requests["by_cache_status"].items() if v)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fwdproxy status</title>
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>fwdproxy {_e(version)}</h1>
<div class="sub">{covers(s)} · up {_e(format_duration(s["uptime_seconds"]))} · byte hit ratio {_pct(s["byte_hit_ratio"])}
 · {_e(by_status or "no requests yet")}</div>
<div class="cards">{cards}</div>
<h2>Requests and hit ratio, last hour (per minute)</h2>
<div class="panel">{chart(s["timeline"])}
<div class="muted"><span style="color:#3b82f6">■</span> requests per minute
 &nbsp; <span style="color:#d97706">━</span> hit ratio</div></div>
<h2>Top hosts by bytes saved</h2>
<div class="panel"><table id="top-hosts"><tr><th>host</th><th class="n">bytes saved</th><th class="n">hits</th></tr>
{hosts}</table></div>
<h2>Upstreams</h2>
<div class="panel">{_upstreams(s.get("upstreams"))}</div>
<h2>Cache size</h2>
<div class="panel">{tiers}</div>
<h2>Shared tier</h2>
<div class="panel">{_shared(s.get("shared"))}</div>
<p class="muted">Machine-readable: <a href="/stats.json">/stats.json</a> · <a href="/metrics">/metrics</a></p>
</body></html>
"""
