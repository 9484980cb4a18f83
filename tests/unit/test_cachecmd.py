"""`fwdproxy cache …` on a real store in tmp_path: listing, showing, purging, verifying; hit counts; warm's helpers."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from fwdproxy import cache, cacheview, hits, warm
from fwdproxy.cache import CacheConfig
from fwdproxy.cli import main
from fwdproxy.http_model import Headers, Response, StoredResponse
from fwdproxy.store import TieredStore, variant_key

NOW = time.time()
"""The commands read the clock, so entries are stored relative to it (ages of seconds to minutes); the
autouse fixture below resets it per test, since a busy parallel run may start a test long after import."""


@pytest.fixture(autouse=True)
def _now() -> None:
    global NOW
    NOW = time.time()


def stored(
    url: str, cc: str = "max-age=60", age: float = 10.0, length: int = 5, **headers: str
) -> StoredResponse:
    fields = {"Cache-Control": cc, "Content-Type": "text/plain", **headers}
    return StoredResponse(url, 200, "OK", Headers.of(fields), NOW - age, NOW - age, length)


def fill(directory: Path, entries: dict[str, tuple[StoredResponse, bytes]]) -> TieredStore:
    store = TieredStore.open(directory)
    for key, (meta, body) in entries.items():
        store.put(key, meta, body)
    return store


def key(url: str, secondary: str = "") -> str:
    return variant_key(cache.primary_key("GET", url), secondary)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    a, b = "http://a.example/x", "https://files.example:8443/pkg.whl"
    gz = stored("http://a.example/v", Vary="Accept-Encoding")
    fill(
        tmp_path,
        {
            key(a): (stored(a), b"hello"),
            key(b): (stored(b, cc="max-age=5", age=100, length=3, ETag='"e1"'), b"abc"),
            key(gz.url, "accept-encoding=gzip"): (gz, b"gzip!"),
            key(gz.url, "accept-encoding"): (gz, b"plain"),
        },
    ).close()
    hits.add(hits.path_for(tmp_path), {cache.primary_key("GET", a): 3})
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["cache", *args])
    return code, capsys.readouterr().out


def test_ls_json_lists_every_variant_with_hits_and_freshness(cache_dir: Path, capsys) -> None:
    code, out = run(capsys, "ls", "--json", "--cache-dir", str(cache_dir))
    assert code == 0
    rows = {(r["url"], r["vary"]): r for r in json.loads(out)}
    assert set(rows) == {
        ("http://a.example/x", None),
        ("https://files.example:8443/pkg.whl", None),
        ("http://a.example/v", "accept-encoding=gzip"),
        ("http://a.example/v", "accept-encoding"),
    }
    x = rows[("http://a.example/x", None)]
    assert x["hits"] == 3 and x["size"] == 5 and x["status"] == 200 and x["source"] == "max-age"
    assert x["fresh"] is True and 0 < x["ttl"] <= 50
    assert rows[("https://files.example:8443/pkg.whl", None)]["fresh"] is False


@pytest.mark.parametrize(
    "glob, expected",
    [
        pytest.param("a.example", {"http://a.example/x", "http://a.example/v"}, id="exact host"),
        pytest.param(
            "*.example", {"http://a.example/x", "http://a.example/v", "https://files.example:8443/pkg.whl"}
        ),
        pytest.param("files.example:8443", {"https://files.example:8443/pkg.whl"}, id="host:port"),
        pytest.param("files.example:443", set(), id="other port"),
    ],
)
def test_ls_host_filter(cache_dir: Path, capsys, glob: str, expected: set[str]) -> None:
    _, out = run(capsys, "ls", "--json", "--host", glob, "--cache-dir", str(cache_dir))
    assert {r["url"] for r in json.loads(out)} == expected


def test_ls_table_shows_urls_in_full(cache_dir: Path, capsys) -> None:
    code, out = run(capsys, "ls", "--cache-dir", str(cache_dir))
    assert code == 0
    assert "https://files.example:8443/pkg.whl" in out and "4 entries" in out and "stale" in out


def test_stats_json_counts_the_disk_tier(cache_dir: Path, capsys) -> None:
    code, out = run(capsys, "stats", "--json", "--cache-dir", str(cache_dir))
    s = json.loads(out)
    assert code == 0
    assert s["disk"]["entries"] == 4 and s["disk"]["bytes"] > 0 and s["disk"]["limit"] == 10 * 2**30
    assert s["body_bytes"] == 5 + 3 + 5 + 5 and s["hits"] == 3 and s["memory"] is None
    assert s["oldest"] == pytest.approx(NOW - 100) and s["newest"] == pytest.approx(NOW - 10)


def test_stats_table(cache_dir: Path, capsys) -> None:
    code, out = run(capsys, "stats", "--cache-dir", str(cache_dir))
    assert code == 0 and "disk" in out and "10.0 GiB" in out


def test_show_explains_freshness_and_variants(cache_dir: Path, capsys) -> None:
    code, out = run(
        capsys, "show", "--json", "--cache-dir", str(cache_dir), "https://FILES.example:8443/pkg.whl"
    )
    assert code == 0
    (entry,) = json.loads(out)
    assert ["ETag", '"e1"'] in entry["headers"]
    text = " ".join(entry["explanation"])
    assert "max-age=5" in text and "stale by" in text and "If-None-Match" not in text and 'ETag: "e1"' in text
    _, out = run(capsys, "show", "--json", "--cache-dir", str(cache_dir), "http://a.example/v")
    assert len(json.loads(out)) == 2


def test_show_of_an_unknown_url_fails(cache_dir: Path, capsys) -> None:
    assert main(["cache", "show", "--cache-dir", str(cache_dir), "http://nope.example/"]) == 1


def test_purge_url_removes_all_variants_and_their_hits(cache_dir: Path, capsys) -> None:
    code, out = run(capsys, "purge", "--json", "--cache-dir", str(cache_dir), "http://a.example/v")
    assert code == 0 and json.loads(out) == {"removed": 2}
    code, out = run(capsys, "purge", "--cache-dir", str(cache_dir), "http://a.example/x")
    assert out.strip() == "purged 1 entry for http://a.example/x"
    assert hits.load(hits.path_for(cache_dir)) == {}
    _, out = run(capsys, "ls", "--json", "--cache-dir", str(cache_dir))
    assert [r["url"] for r in json.loads(out)] == ["https://files.example:8443/pkg.whl"]


def test_purge_host_and_all(cache_dir: Path, capsys) -> None:
    _, out = run(capsys, "purge", "--json", "--host", "a.example", "--cache-dir", str(cache_dir))
    assert json.loads(out) == {"removed": 3}
    _, out = run(capsys, "purge", "--json", "--all", "--cache-dir", str(cache_dir))
    assert json.loads(out) == {"removed": 1}
    assert not hits.path_for(cache_dir).exists()


def test_purge_needs_exactly_one_target(cache_dir: Path, capsys) -> None:
    assert main(["cache", "purge", "--cache-dir", str(cache_dir)]) == 2
    assert "one of" in capsys.readouterr().err


def test_a_missing_cache_dir_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["cache", "stats", "--cache-dir", str(tmp_path / "none")]) == 2
    assert "no cache there yet" in capsys.readouterr().err


def test_verify_drops_a_damaged_body(tmp_path: Path, capsys) -> None:
    big = b"z" * 100_000  # above the inline limit: a body file we can damage
    url = "http://a.example/big"
    fill(
        tmp_path,
        {key(url): (stored(url, length=len(big)), big), key("http://b/"): (stored("http://b/"), b"hello")},
    )
    (body_file,) = [p for p in (tmp_path / "store").rglob("*.val")]
    os.chmod(body_file, 0o600)
    with open(body_file, "r+b") as f:
        f.write(b"Y")
    code, out = run(capsys, "verify", "--json", "--cache-dir", str(tmp_path))
    assert code == 0
    assert json.loads(out) == {"checked": 2, "ok": 1, "bad": 1, "missing": 0, "orphans": 0, "damaged": [url]}
    _, out = run(capsys, "ls", "--json", "--cache-dir", str(tmp_path))
    assert [r["url"] for r in json.loads(out)] == ["http://b/"]


def test_rules_from_a_config_file_apply(tmp_path: Path, capsys) -> None:
    url = "http://a.example/packages/p.whl"
    fill(tmp_path / "c", {key(url): (stored(url, cc="max-age=0"), b"hello")}).close()
    conf = tmp_path / "fwdproxy.toml"
    conf.write_text(
        f'cache_dir = "{tmp_path / "c"}"\n[[cache.rule]]\nmatch = "http://a.example/packages/*"\nimmutable = true\n'
    )
    _, out = run(capsys, "ls", "--json", "--config", str(conf))
    (row,) = json.loads(out)
    assert row["fresh"] is True and row["lifetime"] == 365 * 86400


# -- the pure pieces ---------------------------------------------------------------------------------


def test_explain_names_the_validators_used_to_revalidate() -> None:
    lines = cacheview.explain(stored("http://a/", cc="max-age=1", age=30, ETag='"x"'), CacheConfig(), NOW)
    assert lines[-1] == 'a plain GET now: revalidated with the origin using ETag: "x"'
    assert cacheview.explain(stored("http://a/"), CacheConfig(), NOW)[-1] == "a plain GET now: a hit"


def test_hits_add_merges_and_remove_forgets(tmp_path: Path) -> None:
    path = hits.path_for(tmp_path)
    hits.add(path, {"GET http://a/": 2})
    hits.add(path, {"GET http://a/": 1, "GET http://b/": 5})
    assert hits.load(path) == {"GET http://a/": 3, "GET http://b/": 5}
    hits.remove(path, ["GET http://b/"])
    assert hits.load(path) == {"GET http://a/": 3}
    path.write_text("not json")
    assert hits.load(path) == {}


def test_warm_reads_a_url_list() -> None:
    text = "# pre-fill\nhttps://a/x\n\n  http://b/y  \n#http://skipped/\n"
    assert warm.read_urls(text.splitlines()) == ["https://a/x", "http://b/y"]
    with pytest.raises(ValueError, match="URL 2"):
        warm.check_urls(["http://a/", "ftp://b/"])


def test_warm_summary() -> None:
    results = [
        warm.Fetched("http://a/", 200, 10, "fwdproxy; fwd=uri-miss; fwd-status=200; stored"),
        warm.Fetched("http://b/", 200, 20, "fwdproxy; hit; ttl=10"),
        warm.Fetched("http://c/", 200, 30, "fwdproxy; fwd=uri-miss; fwd-status=200"),
        warm.Fetched("http://d/", 404, 1, "fwdproxy; fwd=uri-miss; fwd-status=404"),
        warm.Fetched("http://e/", error="ConnectError: refused"),
    ]
    s = warm.summarize(results)
    assert (s["urls"], s["stored"], s["cached"], s["not_stored"], s["failed"], s["bytes"]) == (
        5,
        1,
        1,
        1,
        2,
        61,
    )
    assert [f["url"] for f in s["failures"]] == ["http://d/", "http://e/"]


# -- entries explained by what decided them (the record, not the flags given here) --------------------

DEB = "http://mirror.example/debian/pool/main/h/hello_2.10_amd64.deb"
"""Matches the ci preset's ci-debian rule; the origin gave no freshness at all."""


def deb_entry(*, recorded: bool = True, reason: str = "") -> StoredResponse:
    meta = StoredResponse(DEB, 200, reason, Headers.of({"Content-Type": "x/deb"}), NOW - 900, NOW - 900, 5)
    meta = dataclasses.replace(meta, rule="ci-debian")  # as is_storable's rule names it
    return cache.record_lifetime(meta, CacheConfig(rules=cache.PRESET_CI)) if recorded else meta


def test_a_rule_kept_entry_is_explained_by_its_rule_without_the_preset() -> None:
    lines = cacheview.explain(deb_entry(), CacheConfig(recorded_lifetimes=True), NOW)
    assert lines[0] == (
        "freshness lifetime 31536000s (365d), set by cache rule 'ci-debian' (--preset ci): "
        "immutable: fresh that long whatever the origin says"
    )
    assert (
        lines[1]
        == "the origin's headers alone give no explicit lifetime and no heuristic (§4.2.1); the rule decides"
    )
    assert not any("stale at once" in line for line in lines), lines
    assert any(line.startswith("fresh for 315351") for line in lines), lines
    assert lines[-1] == "a plain GET now: a hit"
    # Repeating the preset changes nothing: the record and the flags agree.
    with_preset = CacheConfig(rules=cache.PRESET_CI, recorded_lifetimes=True)
    assert cacheview.explain(deb_entry(), with_preset, NOW) == lines


def test_an_entry_without_a_recorded_lifetime_is_explained_from_its_headers() -> None:
    lines = cacheview.explain(deb_entry(recorded=False), CacheConfig(recorded_lifetimes=True), NOW)
    assert lines[0].endswith("so it is stale at once (§4.2.1)") and lines[1].startswith(
        "cache rule 'ci-debian'"
    )
    assert "no recorded lifetime" in lines[2]
    assert lines[-1] == "a plain GET now: revalidated with the origin using no validator (so a full refetch)"
    lines = cacheview.explain(deb_entry(recorded=False), CacheConfig(rules=cache.PRESET_CI), NOW)
    assert "set by cache rule 'ci-debian'" in lines[0] and lines[-1] == "a plain GET now: a hit"


def test_the_record_wins_over_the_flags_given_here() -> None:
    """Stored without rules (max-age=60): asking with a preset that would match does not re-explain it."""
    meta = cache.record_lifetime(stored(DEB, cc="max-age=60", age=90), CacheConfig())
    lines = cacheview.explain(meta, CacheConfig(rules=cache.PRESET_CI, recorded_lifetimes=True), NOW)
    assert lines[0] == "freshness lifetime 60s (1m), from max-age=60 (§5.2.2.1)" and "stale by 30s" in lines


def test_a_304_drops_the_recorded_lifetime_until_the_proxy_records_the_new_one() -> None:
    meta = cache.record_lifetime(stored(DEB, cc="max-age=60"), CacheConfig())
    fresh = cache.freshen(
        meta, Response(304, Headers.of({"Cache-Control": "max-age=600"})), request_time=NOW, response_time=NOW
    )
    assert fresh.lifetime is None
    assert cache.record_lifetime(fresh, CacheConfig()).lifetime == 600


@pytest.mark.parametrize(
    "status, reason, expected",
    [
        pytest.param(200, "", "200 OK", id="no reason phrase (HTTP/2, or an origin that sent none)"),
        pytest.param(404, "", "404 Not Found", id="404 without phrase"),
        pytest.param(200, "Fine", "200 Fine", id="the origin's own phrase"),
        pytest.param(299, "", "299", id="unknown code"),
    ],
)
def test_status_text(status: int, reason: str, expected: str) -> None:
    assert cacheview.status_text(status, reason) == expected


def test_show_and_ls_of_a_rule_kept_entry_need_no_preset(tmp_path: Path, capsys) -> None:
    fill(tmp_path, {key(DEB): (deb_entry(), b"debs!")}).close()
    code, out = run(capsys, "show", DEB, "--cache-dir", str(tmp_path))
    assert code == 0
    assert "200 OK, 5 B body, rule: ci-debian" in out and "200 ," not in out
    assert "set by cache rule 'ci-debian'" in out and "stale at once" not in out and "a hit" in out
    code, out = run(capsys, "ls", "--json", "--cache-dir", str(tmp_path))
    (row,) = json.loads(out)
    assert row["source"] == "rule ci-debian" and row["fresh"] is True and row["lifetime"] == 365 * 86400
