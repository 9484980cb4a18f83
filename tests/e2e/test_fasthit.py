"""The fast hit layer end to end (issue 21): which requests it answers, on plain HTTP and inside intercepted
tunnels, kept-alive and pipelined, and that every request it must not answer (a miss, auth, hostile heads)
gets exactly what the full path gives."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.fastwire import Wire, get, plain, stats, tunnel
from tests.support import Origin, Proxy, Reply, h2_client

CACHED = {"Cache-Control": "max-age=600", "Content-Type": "text/plain", "ETag": '"e1"'}
BODY = b"0123456789" * 10


def _fast(proxy: Proxy, *extra: str) -> int:
    return int(stats(proxy, *extra)["fast_hits"])  # type: ignore[call-overload]


def test_plain_keep_alive_hits_and_a_miss_in_the_middle(start_proxy, origin: Origin) -> None:
    hit_url = origin.route("/hit", Reply(200, CACHED, BODY))
    miss_url = origin.route("/miss", Reply(200, {"Cache-Control": "no-store"}, b"miss\n"))
    proxy = start_proxy()
    with plain(proxy) as w:
        assert (
            w.exchange(get(hit_url)).get("cache-status") == "fwdproxy; fwd=uri-miss; fwd-status=200; stored"
        )
    with plain(proxy) as w:
        first = w.exchange(get(hit_url))
        second = w.exchange(get(hit_url))
        missed = w.exchange(get(miss_url))  # handed to mitmproxy's layer on the same connection
        after = w.exchange(get(hit_url))  # served by the full path from then on, still a hit
    assert (first.status, first.body, second.body) == (200, BODY, BODY)
    assert (first.get("cache-status") or "").startswith("fwdproxy; hit; ttl=")
    assert (missed.status, missed.body) == (200, b"miss\n")
    assert (after.body, (after.get("cache-status") or "")[:13]) == (BODY, "fwdproxy; hit")
    assert origin.hits["/hit"] == 1
    assert origin.hits["/miss"] == 1
    assert _fast(proxy) == 2


def test_pipelined_hits_with_a_miss_between_arrive_in_order(start_proxy, origin: Origin) -> None:
    urls = [origin.route(f"/p{i}", Reply(200, CACHED, f"body {i}\n".encode())) for i in range(3)]
    miss = origin.route("/pm", Reply(200, {"Cache-Control": "no-store"}, b"miss\n"))
    proxy = start_proxy()
    with plain(proxy) as w:
        for url in urls:
            w.exchange(get(url))
    with plain(proxy) as w:
        w.send(get(urls[0]) + get(urls[1], method="HEAD") + get(miss) + get(urls[2]) + get(urls[0]))
        answers = [w.read(), w.read(head=True), w.read(), w.read(), w.read()]
    assert [a.body for a in answers] == [b"body 0\n", b"", b"miss\n", b"body 2\n", b"body 0\n"]
    assert answers[1].get("content-length") == "7"
    assert [a.get("cache-status")[:13] for a in answers if a is not answers[2]] == ["fwdproxy; hit"] * 4  # type: ignore[index]
    assert origin.hits["/pm"] == 1
    assert _fast(proxy) == 2  # the two before the miss


def test_intercepted_tunnel_hits_vary_conditional_range_head(
    start_proxy, tls_origin: Origin, proxy_ca_file: Path
) -> None:
    tls_origin.route("/v", Reply(200, {**CACHED, "Vary": "Accept-Language"}, BODY))
    proxy = start_proxy("--connect-port", str(tls_origin.port))
    authority = f"localhost:{tls_origin.port}"
    url = f"https://{authority}/v"
    with tunnel(proxy, authority, proxy_ca_file) as w:
        w.exchange(get(url, "Accept-Language: de", target="/v"))
        de = w.exchange(get(url, "Accept-Language: de", target="/v"))
        fr = w.exchange(get(url, "Accept-Language: fr", target="/v"))  # another variant: a miss, handed over
    assert de.get("cache-status").startswith("fwdproxy; hit")  # type: ignore[union-attr]
    assert fr.get("cache-status") == "fwdproxy; fwd=vary-miss; fwd-status=200; stored"
    with tunnel(proxy, authority, proxy_ca_file) as w:
        not_modified = w.exchange(get(url, "Accept-Language: fr", 'If-None-Match: "e1"', target="/v"))
        ranged = w.exchange(get(url, "Accept-Language: de", "Range: bytes=10-19", target="/v"))
        head = w.exchange(get(url, "Accept-Language: fr", method="HEAD", target="/v"))
    assert (not_modified.status, not_modified.body, not_modified.get("etag")) == (304, b"", '"e1"')
    assert (ranged.status, ranged.body, ranged.get("content-range")) == (206, BODY[10:20], "bytes 10-19/100")
    assert ranged.get("accept-ranges") == "bytes"
    assert (head.status, head.body, head.get("content-length")) == (200, b"", "100")
    assert tls_origin.hits["/v"] == 2
    assert _fast(proxy) == 3  # the first connection began with a miss: all of it went the full path


def test_http2_clients_keep_the_full_path(start_proxy, tls_origin: Origin, proxy_ca_file: Path) -> None:
    tls_origin.route("/h2", Reply(200, CACHED, BODY))
    proxy = start_proxy("--connect-port", str(tls_origin.port))
    url = f"https://localhost:{tls_origin.port}/h2"
    with h2_client(proxy, proxy_ca_file) as c:
        first, second = c.get(url), c.get(url)
    assert (first.http_version, second.http_version) == ("HTTP/2", "HTTP/2")
    assert second.content == BODY
    assert second.headers["cache-status"].startswith("fwdproxy; hit")
    assert _fast(proxy) == 0


def test_auth_is_asked_per_request_on_plain_http(start_proxy, origin: Origin) -> None:
    url = origin.route("/a", Reply(200, CACHED, BODY))
    proxy = start_proxy("--auth", "u:p")
    good = "Proxy-Authorization: Basic dTpw"
    with plain(proxy) as w:
        assert w.exchange(get(url, good)).status == 200
    with plain(proxy) as w:
        hit = w.exchange(get(url, good))
        refused = w.exchange(get(url))  # no credentials on this request: the full path answers 407
    assert (hit.status, hit.body) == (200, BODY)
    assert refused.status == 407
    with plain(proxy) as w:
        wrong = w.exchange(get(url, "Proxy-Authorization: Basic dTpx"))
    assert (wrong.status, wrong.get("proxy-authenticate")) == (407, 'Basic realm="fwdproxy"')
    assert [r.headers.get("Proxy-Authorization") for r in origin.requests] == [None]
    assert _fast(proxy, good) == 1


def test_not_in_allow_is_refused_even_for_a_stored_entry(start_proxy, origin: Origin) -> None:
    url = origin.route("/x", Reply(200, CACHED, BODY))
    proxy = start_proxy("--allow", "127.0.0.2/32", "--listen-host", "127.0.0.1")
    with plain(proxy) as w:
        answer = w.exchange(get(url))
    assert answer.status == 403
    assert origin.hits.get("/x", 0) == 0


def test_idle_kept_alive_connection_is_closed_after_the_header_timeout(start_proxy, origin: Origin) -> None:
    url = origin.route("/idle", Reply(200, CACHED, BODY))
    proxy = start_proxy("--header-timeout", "1s")
    with plain(proxy) as w:
        w.exchange(get(url))
    with plain(proxy) as w:
        started = time.monotonic()
        assert w.exchange(get(url)).get("cache-status").startswith("fwdproxy; hit")  # type: ignore[union-attr]
        assert w.closed(timeout=5)
        assert time.monotonic() - started < 4
    assert _fast(proxy) == 1


def _stream(proxy: Proxy, warm: bytes, attack: bytes, *, connect: Wire | None = None) -> bytes:
    """Everything the proxy sends back for a hit followed by ``attack`` on one connection, normalised."""
    with connect or plain(proxy) as w:
        w.send(warm + attack)
        w.sock.settimeout(1.0)
        data = b""
        try:
            while chunk := w.sock.recv(65536):
                data += chunk
        except (TimeoutError, OSError):
            pass
    data = re.sub(rb"\r\nDate: [^\r]*", b"", data)
    data = re.sub(rb"\r\nAge: \d+", b"\r\nAge: *", data)
    return re.sub(rb"ttl=-?\d+", b"ttl=*", data)


ATTACKS = {
    "cl and te": b"GET {url} HTTP/1.1\r\nHost: {auth}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET {url} HTTP/1.1\r\nHost: {auth}\r\nX-A: a\r\n b\r\n\r\n",
    "bare lf": b"GET {url} HTTP/1.1\nHost: {auth}\n\n",
    "bare lf in one line": b"GET {url} HTTP/1.1\r\nHost: {auth}\nX-A: 1\r\n\r\n",
    "bare cr": b"GET {url} HTTP/1.1\r\nHost: {auth}\rX-A: 1\r\n\r\n",
    "host differs from target": b"GET {url} HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    "two hosts": b"GET {url} HTTP/1.1\r\nHost: {auth}\r\nHost: {auth}\r\n\r\n",
    "no host": b"GET {url} HTTP/1.1\r\n\r\n",
    "space before colon": b"GET {url} HTTP/1.1\r\nHost : {auth}\r\n\r\n",
    "http/1.0": b"GET {url} HTTP/1.0\r\nHost: {auth}\r\n\r\n",
    "lower-case method": b"get {url} HTTP/1.1\r\nHost: {auth}\r\n\r\n",
    "body on a get": b"GET {url} HTTP/1.1\r\nHost: {auth}\r\nContent-Length: 3\r\n\r\nabc",
    "expect": b"GET {url} HTTP/1.1\r\nHost: {auth}\r\nExpect: 100-continue\r\n\r\n",
    "websocket": b"GET {url} HTTP/1.1\r\nHost: {auth}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "connection close": b"GET {url} HTTP/1.1\r\nHost: {auth}\r\nConnection: close\r\n\r\n",
    "fragment": b"GET {url}#frag HTTP/1.1\r\nHost: {auth}\r\n\r\n",
    "leading crlf": b"\r\nGET {url} HTTP/1.1\r\nHost: {auth}\r\n\r\n",
    "nul in value": b"GET {url} HTTP/1.1\r\nHost: {auth}\r\nX-A: a\x00b\r\n\r\n",
    "purge": b"PURGE {url} HTTP/1.1\r\nHost: {auth}\r\n\r\n",
    "connect": b"CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\n\r\n",
    "split head": b"GET {url} HTTP/1.1\r\nHo",
}
PLAIN_ONLY = {
    "origin-form to the proxy": b"GET /a HTTP/1.1\r\nHost: {auth}\r\n\r\n",
    "userinfo": b"GET http://u@{auth}/a HTTP/1.1\r\nHost: {auth}\r\n\r\n",
    "upper-case host": b"GET http://LOCALHOST:{port}/a HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n",
    "admin": b"GET http://fwdproxy.local/nope HTTP/1.1\r\nHost: fwdproxy.local\r\n\r\n",
}

FORWARDED = {"body on a get", "upper-case host"}
"""Attacks that are well-formed requests the cache must forward (a GET with a body bypasses it; LOCALHOST
is another host than the 127.0.0.1 stored)."""


@pytest.fixture
def twins(start_proxy, tmp_path: Path) -> tuple[Proxy, Proxy]:
    return start_proxy(cache_dir=tmp_path / "f"), start_proxy("--no-fast-hits", cache_dir=tmp_path / "n")


@pytest.mark.parametrize("attack", [*ATTACKS, *PLAIN_ONLY])
def test_hostile_heads_on_a_fast_connection_get_what_the_full_path_gives(
    twins: tuple[Proxy, Proxy], origin: Origin, attack: str
) -> None:
    url = origin.route("/a", Reply(200, CACHED, BODY))
    auth = url.split("/")[2]
    template = {**ATTACKS, **PLAIN_ONLY}[attack]
    raw = template.replace(b"{url}", url.encode()).replace(b"{auth}", auth.encode())
    raw = raw.replace(b"{port}", str(origin.port).encode())
    for proxy in twins:
        with plain(proxy) as w:
            w.exchange(get(url))
    fast, full = (_stream(p, get(url), raw) for p in twins)
    assert fast == full
    assert fast.startswith(b"HTTP/1.1 200 OK")
    # Once per proxy, and once more per proxy for a request the cache forwards (on both paths alike).
    assert origin.hits["/a"] == 2 + 2 * (attack in FORWARDED)
    assert _fast(twins[0]) >= 1


@pytest.mark.parametrize("attack", [*ATTACKS, "other host", "absolute form"])
def test_hostile_heads_in_a_tunnel_get_what_the_full_path_gives(
    tls_origin: Origin,
    proxy_ca_file: Path,
    start_proxy,
    tmp_path: Path,
    attack: str,
) -> None:
    tls_origin.route("/a", Reply(200, CACHED, BODY))
    port = tls_origin.port
    twins = (
        start_proxy("--connect-port", str(port), cache_dir=tmp_path / "tf"),
        start_proxy("--connect-port", str(port), "--no-fast-hits", cache_dir=tmp_path / "tn"),
    )
    auth = f"localhost:{port}"
    extra = {
        "other host": b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        "absolute form": b"GET https://127.0.0.1:{port}/a HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n",
    }
    template = extra.get(attack) or ATTACKS[attack]
    raw = (
        template.replace(b"{url}", b"/a")
        .replace(b"{auth}", auth.encode())
        .replace(b"{port}", str(port).encode())
    )
    warm = get(f"https://{auth}/a", target="/a")
    for proxy in twins:
        with tunnel(proxy, auth, proxy_ca_file) as w:
            w.exchange(warm)
    fast, full = (_stream(p, warm, raw, connect=tunnel(p, auth, proxy_ca_file)) for p in twins)
    assert fast == full
    assert fast.startswith(b"HTTP/1.1 200 OK")
    assert tls_origin.hits["/a"] == 2 + 2 * (attack in FORWARDED)


def test_a_head_sent_a_byte_at_a_time_is_answered(start_proxy, origin: Origin) -> None:
    url = origin.route("/slow", Reply(200, CACHED, BODY))
    proxy = start_proxy()
    with plain(proxy) as w:
        w.exchange(get(url))
    sock = socket.create_connection((proxy.host, proxy.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with Wire(sock) as w:
        for byte in get(url):
            w.send(bytes([byte]))
        answer = w.read()
    assert (answer.status, answer.body) == (200, BODY)
    assert origin.hits["/slow"] == 1


def test_identical_requests_follow_expiry_purge_and_age(start_proxy, origin: Origin) -> None:
    short = origin.route("/short", Reply(200, {**CACHED, "Cache-Control": "max-age=2"}, BODY))
    kept = origin.route("/kept", Reply(200, CACHED, BODY))
    proxy = start_proxy()
    with plain(proxy) as w:
        w.exchange(get(short))
        w.exchange(get(kept))
    with plain(proxy) as w:
        ages = [int(w.exchange(get(kept)).get("age") or -1)]  # type: ignore[arg-type]
        assert w.exchange(get(short)).get("cache-status").startswith("fwdproxy; hit")  # type: ignore[union-attr]
        time.sleep(2.5)
        ages.append(int(w.exchange(get(kept)).get("age") or -1))  # type: ignore[arg-type]
        # The same bytes as the hit before, now past max-age: the full path's answer (the origin is asked).
        stale = w.exchange(get(short))
    assert ages[1] >= ages[0] + 2
    assert stale.get("cache-status") == "fwdproxy; fwd=stale; fwd-status=200; stored"
    assert origin.hits["/short"] == 2
    with plain(proxy) as w:
        assert w.exchange(get(kept, method="PURGE")).status == 200
    with plain(proxy) as w:
        after = w.exchange(get(kept))
    assert after.get("cache-status") == "fwdproxy; fwd=uri-miss; fwd-status=200; stored"
    assert origin.hits["/kept"] == 2


def test_disk_tier_hits_small_enough_to_read_whole_are_fast(
    start_proxy, origin: Origin, tmp_path: Path
) -> None:
    """Without a memory tier (--memory-cache-size 0) a body the store reads whole (at most
    --memory-object-max) is answered by the fast layer from the disk tier, read and checked on every hit as
    the full path reads it (an inline body from its row, a body file again from the file); a bigger one
    streams from its file through the full path. Both answer alike."""
    small = origin.route("/small", Reply(200, CACHED, BODY))
    mid_body = bytes(range(256)) * 160  # 40 KiB: a body file (not inline), read whole
    mid = origin.route("/mid", Reply(200, CACHED, mid_body))
    big_body = bytes(range(256)) * 400  # 100 KiB: over the 64 KiB --memory-object-max below
    big = origin.route("/big", Reply(200, CACHED, big_body))
    args = ("--memory-cache-size", "0", "--memory-object-max", "65536")
    fast = start_proxy(*args, cache_dir=tmp_path / "c1")
    full = start_proxy(*args, "--no-fast-hits", cache_dir=tmp_path / "c2")
    answers: dict[str, list[object]] = {}
    for proxy, name in ((fast, "fast"), (full, "full")):
        for url in (small, mid, big):
            with plain(proxy) as w:
                w.exchange(get(url))  # stored on disk only
        with plain(proxy) as w:
            got = [w.exchange(get(small)), w.exchange(get(small, method="HEAD"))]
            got += [w.exchange(get(small, "Range: bytes=2-5"))]
            got += [w.exchange(get(mid)) for _ in range(3)]
            got += [w.exchange(get(big))]
        answers[name] = [a.comparable() for a in got]
        assert [a.body for a in got] == [BODY, b"", BODY[2:6], mid_body, mid_body, mid_body, big_body]
        assert all((a.get("cache-status") or "").startswith("fwdproxy; hit") for a in got)
    for a, b in zip(answers["fast"], answers["full"], strict=True):
        assert a[:4] == b[:4]  # type: ignore[index]
    assert _fast(fast) == 6  # all but the big one, which went the full path's way
    assert _fast(full) == 0
    for path in ("/small", "/mid", "/big"):
        assert origin.hits[path] == 2


def test_repeated_bytes_on_one_connection_follow_the_entry_auth_and_log(
    start_proxy, origin: Origin, tmp_path: Path
) -> None:
    """A client repeating its request byte for byte on one kept-alive connection: the layer keeps what it
    read for those bytes and the response it worked out, but each repeat is still checked (credentials),
    answered from the entry as stored now (a PURGE and a new body in between), logged and counted."""
    url = origin.route("/r", Reply(200, CACHED, BODY))
    log = tmp_path / "access.log"
    proxy = start_proxy("--auth", "u:p", "--access-log", str(log), "--log-format", "json")
    good = "Proxy-Authorization: Basic dTpw"
    with plain(proxy) as w:
        w.exchange(get(url, good))  # stored
    with plain(proxy) as w, plain(proxy) as other:
        first = w.exchange(get(url, good))
        again = w.exchange(get(url, good))  # the same bytes: the head read once, the response kept
        assert other.exchange(get(url, good, method="PURGE")).status == 200
        origin.route("/r", Reply(200, CACHED, b"second body\n"))
        assert other.exchange(get(url, good)).get("cache-status").endswith("stored")  # type: ignore[union-attr]
        renewed = w.exchange(get(url, good))  # the same bytes once more: the new entry, not the kept answer
        renewed_again = w.exchange(get(url, good))
        wrong = w.exchange(
            get(url, "Proxy-Authorization: Basic dTpx")
        )  # another credential on this connection
    assert [a.body for a in (first, again)] == [BODY, BODY]
    assert [a.body for a in (renewed, renewed_again)] == [b"second body\n"] * 2
    assert all((a.get("cache-status") or "").startswith("fwdproxy; hit") for a in (first, again, renewed))
    assert wrong.status == 407
    assert origin.hits["/r"] == 2
    assert _fast(proxy, good) == 4
    proxy.stop()  # flushes the access log
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    ours = [
        (r["method"], r["status"], (r["cache_status"] or "")[:13], r["bytes"])
        for r in lines
        if r["url"] == url
    ]
    assert [o[:3] for o in ours] == [
        ("GET", 200, "fwdproxy; fwd"),
        ("GET", 200, "fwdproxy; hit"),
        ("GET", 200, "fwdproxy; hit"),
        ("PURGE", 200, ""),
        ("GET", 200, "fwdproxy; fwd"),
        ("GET", 200, "fwdproxy; hit"),
        ("GET", 200, "fwdproxy; hit"),
        ("GET", 407, ""),
    ]
    # Each line counts what its own request got: the second body is shorter than the first.
    assert ours[1][3] == ours[2][3]
    assert ours[5][3] == ours[6][3]
    assert ours[5][3] == ours[1][3] - len(BODY) + len(b"second body\n") - 1  # and Content-Length: 12, not 100
