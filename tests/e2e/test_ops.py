"""Operating the proxy, end to end: cache commands, PURGE, /metrics, /stats.json, the status page, access
logs, and `fwdproxy env` driving a real curl and a real pip through the proxy (issue 7)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO, Origin, Proxy, RawOrigin, Reply, client, run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cacheable(body: bytes) -> Reply:
    return Reply(200, {"Cache-Control": "max-age=300", "Content-Type": "text/plain"}, body)


def admin_get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", trust_env=False, timeout=10)


def cli_json(*args: str) -> object:
    out = run_cli(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_commands_metrics_status_page_and_squid_log(start_proxy, origin: Origin, tmp_path: Path) -> None:
    urls = {name: origin.route(f"/{name}", cacheable(name.encode() * 100)) for name in ("a", "b", "c")}
    nocache = origin.route("/private", Reply(200, {"Cache-Control": "no-store"}, b"secret"))
    admin, cache_dir, log = free_port(), tmp_path / "cache", tmp_path / "access.log"
    proxy = start_proxy(
        "--admin-port",
        str(admin),
        "--access-log",
        str(log),
        "--allow-purge",
        "127.0.0.1/32",
        cache_dir=cache_dir,
    )
    hits_made = 0
    with client(proxy) as c:
        for url in (*urls.values(), nocache):
            assert c.get(url).status_code == 200
        for name in ("a", "b", "a", "c"):
            r = c.get(urls[name])
            assert r.headers["Cache-Status"].startswith("fwdproxy; hit")
            hits_made += 1

    # The cache commands see what the running proxy stored.
    listed = cli_json("cache", "ls", "--cache-dir", str(cache_dir))
    assert sorted(e["url"] for e in listed) == sorted(urls.values())  # type: ignore[union-attr]

    # /metrics: Prometheus text whose hit counter is the hits we made.
    metrics = admin_get(admin, "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    requests = {s.labels["cache_status"]: s.value for s in families["fwdproxy_requests"].samples}
    assert requests["hit"] == hits_made == 4
    assert requests["miss"] == 4 and sum(requests.values()) == 8
    assert families["fwdproxy_origin_ttfb_seconds"].samples  # histogram present
    disk = {s.labels["tier"]: s.value for s in families["fwdproxy_cache_entries"].samples}
    assert disk["disk"] == 3

    # `cache stats` agrees with /stats.json; the status page shows /stats.json's numbers.
    stats = admin_get(admin, "/stats.json").json()
    page = admin_get(admin, "/").text
    cli_stats = cli_json("cache", "stats", "--cache-dir", str(cache_dir))
    assert cli_stats["disk"]["entries"] == stats["cache"]["disk"]["entries"] == 3  # type: ignore[index]
    assert cli_stats["disk"]["bytes"] == stats["cache"]["disk"]["bytes"]  # type: ignore[index]
    assert stats["hits"] == 4 and stats["bytes_saved"] == 400 and stats["requests"]["total"] == 8
    assert f'id="hit-ratio" data-value="{stats["hit_ratio"]:.6f}">{stats["hit_ratio"] * 100:.1f}%<' in page
    assert f'id="bytes-saved" data-value="{stats["bytes_saved"]}">400 B<' in page
    assert f'id="requests-total" data-value="{stats["requests"]["total"]}">' in page
    assert f'data-bytes="{stats["cache"]["disk"]["bytes"]}"' in page
    assert "<svg" in page and "127.0.0.1" in page  # chart, and the top host

    with client(proxy) as c:
        # The same, through the proxy at http://fwdproxy.local/ (not counted as traffic).
        via_proxy = c.get("http://fwdproxy.local/stats.json").json()
        assert via_proxy["requests"]["total"] == 8
        # PURGE from an allowed client removes every variant; a second one finds nothing.
        assert c.request("PURGE", urls["b"]).status_code == 200
        assert c.request("PURGE", urls["b"]).status_code == 404
    denied = subprocess.run(
        ["curl", "-sS", "--interface", "127.0.0.2", "-x", proxy.url, "-X", "PURGE", "-o", "/dev/null"]
        + ["-w", "%{http_code}", urls["c"]],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert denied.stdout == "403"

    # `cache purge URL`: the next request goes to the origin again.
    out = run_cli("cache", "purge", "--cache-dir", str(cache_dir), urls["a"])
    assert out.returncode == 0 and "purged 1 entry" in out.stdout
    with client(proxy) as c:
        r = c.get(urls["a"])
        assert r.headers["Cache-Status"].startswith("fwdproxy; fwd=uri-miss")
        assert c.get(urls["b"]).headers["Cache-Status"].startswith("fwdproxy; fwd=uri-miss")
    assert origin.hits["/a"] == 2 and origin.hits["/b"] == 2 and origin.hits["/c"] == 1
    assert admin_get(admin, "/stats.json").json()["purges"] == 1

    proxy.stop()  # done flushes the access log and the hit counts
    listed = cli_json("cache", "ls", "--cache-dir", str(cache_dir))
    assert {e["url"]: e["hits"] for e in listed}[urls["c"]] == 1  # type: ignore[union-attr, index]

    lines = log.read_text().splitlines()
    fields = [line.split() for line in lines]
    assert all(len(f) == 10 and re.fullmatch(r"\d+\.\d{3}", f[0]) for f in fields), lines
    by = [(f[3], f[5], f[6]) for f in fields]
    assert ("TCP_MISS/200", "GET", urls["a"]) in by
    assert by.count(("TCP_HIT/200", "GET", urls["a"])) == 2
    assert ("TCP_MISS/200", "GET", nocache) in by
    assert ("NONE_NONE/200", "PURGE", urls["b"]) in by and ("NONE_NONE/404", "PURGE", urls["b"]) in by
    assert ("TCP_DENIED/403", "PURGE", urls["c"]) in by
    hit = next(f for f in fields if f[3] == "TCP_HIT/200")
    assert hit[8] == "HIER_NONE/-" and hit[9] == "text/plain" and int(hit[4]) > 100
    miss = next(f for f in fields if f[3] == "TCP_MISS/200")
    assert miss[8] == "HIER_DIRECT/127.0.0.1" and miss[2] == "127.0.0.1"


def env_shell(proxy: Proxy, confdir: Path, home: Path) -> tuple[str, dict[str, str]]:
    """A shell prefix that evals `fwdproxy env`, and an environment with nothing else in it."""
    home.mkdir(exist_ok=True)
    fwdproxy = f"{sys.executable} -m fwdproxy.cli env --proxy {proxy.url} --confdir {confdir}"
    # The test's origins are on 127.0.0.1, which the default NO_PROXY rightly sends direct.
    prefix = f'eval "$({fwdproxy} --no-proxy internal.example)" && '
    return prefix, {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(REPO)}


def test_env_makes_curl_use_the_proxy_and_trust_its_ca(
    start_proxy, tls_origin: Origin, confdir: Path, tmp_path: Path
) -> None:
    url = tls_origin.route("/tool", cacheable(b"fetched through fwdproxy\n")).replace(
        "127.0.0.1", "localhost"
    )
    log = tmp_path / "access.jsonl"
    proxy = start_proxy(
        "--connect-port", str(tls_origin.port), "--access-log", str(log), "--log-format", "json"
    )
    prefix, env = env_shell(proxy, confdir, tmp_path / "home")
    for _ in range(2):
        out = subprocess.run(
            ["sh", "-c", prefix + f"curl -sS -D - {url}"], capture_output=True, text=True, timeout=60, env=env
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.endswith("fetched through fwdproxy\n")
    assert "cache-status: fwdproxy; hit" in out.stdout.lower()  # the second one came from the cache
    assert tls_origin.hits["/tool"] == 1
    proxy.stop()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    gets = [r for r in records if r["method"] == "GET"]
    assert [r["outcome"] for r in gets] == ["miss", "hit"]
    assert all(r["url"] == url and r["status"] == 200 and r["tunnel"] == "intercepted" for r in gets)
    assert gets[1]["cache_status"].startswith("fwdproxy; hit") and gets[1]["bytes"] > 24
    assert gets[0]["upstream"] is None and gets[0]["server"] == "127.0.0.1" and gets[0]["duration"] >= 0
    connects = [r for r in records if r["method"] == "CONNECT"]
    assert len(connects) == 2 and {c["url"] for c in connects} == {f"localhost:{tls_origin.port}"}
    assert {c["tunnel"] for c in connects} == {"intercepted"}


def wheel(directory: Path) -> Path:
    """A minimal valid pure-Python wheel, tinypkg 0.1."""
    name = "tinypkg-0.1-py3-none-any.whl"
    files = {
        "tinypkg/__init__.py": b"VALUE = 1\n",
        "tinypkg-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
        "tinypkg-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append("tinypkg-0.1.dist-info/RECORD,,")
    files["tinypkg-0.1.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / name
    with zipfile.ZipFile(path, "w") as z:
        for name_, data in files.items():
            z.writestr(name_, data)
    return path


def test_env_makes_pip_download_from_an_https_index_through_the_proxy(
    start_proxy, tls_origin: Origin, confdir: Path, tmp_path: Path
) -> None:
    whl = wheel(tmp_path)
    data = whl.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    tls_origin.route(
        f"/packages/{whl.name}",
        Reply(200, {"Content-Type": "application/octet-stream", "Cache-Control": "max-age=86400"}, data),
    )
    index = (
        f'<!DOCTYPE html><html><body><a href="/packages/{whl.name}#sha256={sha}">{whl.name}</a></body></html>'
    )
    tls_origin.route("/simple/tinypkg/", Reply(200, {"Content-Type": "text/html"}, index.encode()))
    proxy = start_proxy("--connect-port", str(tls_origin.port))
    prefix, env = env_shell(proxy, confdir, tmp_path / "home")
    index_url = tls_origin.url("/simple/", host="localhost")
    for run in ("first", "second"):
        dest = tmp_path / run
        pip = (
            f"{sys.executable} -m pip download --no-deps --no-cache-dir --disable-pip-version-check "
            f"--index-url {index_url} -d {dest} tinypkg"
        )
        out = subprocess.run(["sh", "-c", prefix + pip], capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert (dest / whl.name).read_bytes() == data
    assert tls_origin.hits[f"/packages/{whl.name}"] == 1  # the second download was a cache hit


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)"
)
def test_status_page_renders_in_headless_chromium(start_proxy, origin: Origin, tmp_path: Path) -> None:
    url = origin.route("/page", cacheable(b"x" * 5000))
    admin = free_port()
    proxy = start_proxy("--admin-port", str(admin))
    with client(proxy) as c:
        for _ in range(4):
            c.get(url)
    stats = admin_get(admin, "/stats.json").json()
    assert CHROMIUM is not None
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    common += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    common += ["--no-proxy-server", "--window-size=1200,900"]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    page = f"http://127.0.0.1:{admin}/"
    png = tmp_path / "status.png"
    shot = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'profile1'}", f"--screenshot={png}", page],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert png.is_file() and png.stat().st_size > 10_000, shot.stderr[-2000:]
    if os.environ.get("FWD_SCREENSHOT"):  # keep it for a person to look at
        shutil.copy(png, os.environ["FWD_SCREENSHOT"])
    dom = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    ).stdout
    assert stats["hits"] == 3 and stats["bytes_saved"] == 15000
    assert re.search(r'id="hit-ratio" data-value="0\.750000">75\.0%<', dom), dom[:2000]
    assert re.search(r'id="bytes-saved" data-value="15000">14\.6 KiB<', dom)
    assert "<svg" in dom and 'class="req"' in dom


def test_cache_warm_fills_the_cache_through_the_proxy(
    start_proxy, origin: Origin, tls_origin: Origin, confdir: Path, tmp_path: Path
) -> None:
    plain = origin.route("/w1", cacheable(b"one" * 50))
    tls = tls_origin.route("/w2", cacheable(b"two" * 50)).replace("127.0.0.1", "localhost")
    missing = origin.url("/absent")
    listing = tmp_path / "urls.txt"
    listing.write_text(f"# warm these\n{plain}\n{tls}\n\n{missing}\n")
    proxy = start_proxy("--connect-port", str(tls_origin.port))
    argv = ("cache", "warm", str(listing), "--proxy", proxy.url, "--confdir", str(confdir), "--json")
    first = run_cli(*argv)
    assert first.returncode == 1  # one URL failed
    summary = json.loads(first.stdout)
    assert (summary["urls"], summary["stored"], summary["failed"], summary["bytes"]) == (
        3,
        2,
        1,
        300 + len(b"no such route\n"),
    )
    assert summary["failures"] == [{"url": missing, "status": 404, "error": None}]
    again = json.loads(run_cli(*argv).stdout)
    assert again["cached"] == 2
    assert origin.hits["/w1"] == 1 and tls_origin.hits["/w2"] == 1


def test_big_hits_through_the_sidecar_are_logged_and_counted_as_asked(
    start_proxy, origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(3 * 2**20)  # above --stream-threshold and --memory-object-max: served by the sidecar
    url = origin.route("/big.bin", cacheable(body)).replace("127.0.0.1", "localhost")
    admin, log = free_port(), tmp_path / "access.jsonl"
    proxy = start_proxy("--admin-port", str(admin), "--access-log", str(log), "--log-format", "json")
    with client(proxy) as c:
        assert c.get(url).content == body
        second = c.get(url)
        assert second.content == body and second.headers["Cache-Status"].startswith("fwdproxy; hit")
    stats = admin_get(admin, "/stats.json").json()
    assert stats["top_hosts"] == [{"host": "localhost", "bytes_saved": len(body), "requests": 1}]
    assert stats["bytes"] == {"from_cache": len(body), "from_origin": len(body)}
    proxy.stop()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["url"], r["outcome"]) for r in records] == [(url, "miss"), (url, "hit")]
    assert all(r["bytes"] > len(body) for r in records)
    assert records[1]["server"] is None  # not the sidecar's address


def test_cache_show_explains_a_preset_kept_entry_without_the_preset(start_proxy, tmp_path: Path) -> None:
    """Stored under --preset ci (the ci-debian rule: any host's .../pool/....deb), answered with no freshness
    and no reason phrase; `cache show` without --preset explains it as the hit the proxy serves."""
    body = b"debian package bytes"
    head = b"HTTP/1.1 200 \r\nContent-Type: application/vnd.debian.binary-package\r\n"
    origin = RawOrigin(lambda _, sock: sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body))
    path = "/debian/pool/main/h/hello_2.10_amd64.deb"
    url, cache_dir = origin.url(path), tmp_path / "cache"
    try:
        proxy = start_proxy("--preset", "ci", cache_dir=cache_dir)
        with client(proxy) as c:
            assert c.get(url).content == body
            second = c.get(url)
        assert second.content == body and second.headers["Cache-Status"].startswith("fwdproxy; hit")
        assert origin.hits[path] == 1
        proxy.stop()
    finally:
        origin.stop()
    out = run_cli("cache", "show", url, "--cache-dir", str(cache_dir))
    assert out.returncode == 0, out.stderr
    assert "200 OK, 20 B body, rule: ci-debian" in out.stdout and "200 ," not in out.stdout
    assert "set by cache rule 'ci-debian' (--preset ci)" in out.stdout
    assert "stale at once" not in out.stdout and "a plain GET now: a hit" in out.stdout
    assert re.search(r"fresh for 3153\d{4}s more", out.stdout), out.stdout
    (row,) = cli_json("cache", "ls", "--cache-dir", str(cache_dir))
    assert row["source"] == "rule ci-debian" and row["fresh"] is True and row["lifetime"] == 365 * 86400
