"""Partial entries (RFC 9111 §3.3-3.4) end to end: origin 206s kept as pieces, ranges answered from them, a
whole GET completed with a range for the rest, and 206s that must never be kept."""

from __future__ import annotations

import random
import re
import socket
import threading
from pathlib import Path

import httpx

from fwdproxy import cache
from fwdproxy.store import TieredStore, partial_key
from tests.support import Origin, Reply, client, h2_client

SIZE = 4096


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)  # no repeats: a misplaced byte is caught


class Ranged:
    """An origin object that honours Range (one range: first-last, first-, -suffix) and If-Range, and counts
    the requests and body bytes it sends."""

    def __init__(self, body: bytes, etag: str = '"p1"', **extra: str) -> None:
        self.body, self.etag, self.extra = body, etag, extra
        self.sent = 0
        self.asked: list[tuple[str | None, str | None]] = []
        self.lock = threading.Lock()

    def headers(self) -> dict[str, str]:
        base = {
            "Cache-Control": "max-age=600",
            "Accept-Ranges": "bytes",
            "Content-Type": "application/x-test",
        }
        if self.etag:
            base["ETag"] = self.etag
        return base | self.extra

    def span(self, spec: str) -> tuple[int, int] | None:
        m = re.fullmatch(r"bytes=([0-9]*)-([0-9]*)", spec)
        if m is None or (not m[1] and not m[2]):
            return None
        n = len(self.body)
        if not m[1]:
            return max(0, n - int(m[2])), n - 1
        first, last = int(m[1]), min(n - 1, int(m[2])) if m[2] else n - 1
        return (first, last) if first <= last and first < n else None  # invalid or unsatisfiable: whole

    def __call__(self, req) -> Reply:
        h = {k.lower(): v for k, v in req.headers.items()}
        spec, if_range = h.get("range"), h.get("if-range")
        with self.lock:
            self.asked.append((spec, if_range))
        span = self.span(spec) if spec else None
        if span is not None and (if_range is None or if_range == self.etag):
            first, last = span
            part = self.body[first : last + 1]
            return self.reply(206, {"Content-Range": f"bytes {first}-{last}/{len(self.body)}"}, part)
        return self.reply(200, {}, self.body)

    def reply(self, status: int, extra: dict[str, str], body: bytes) -> Reply:
        with self.lock:
            self.sent += len(body)
        return Reply(status, self.headers() | extra, body)


def status(r: httpx.Response) -> str:
    return r.headers.get("Cache-Status", "")


def test_a_kept_206_answers_ranges_inside_it(start_proxy, origin: Origin) -> None:
    body = blob(SIZE, 1)
    obj = Ranged(body)
    url = origin.route("/p", obj)
    proxy = start_proxy()
    with client(proxy) as c:
        first = c.get(url, headers={"Range": "bytes=100-1099"})
        inside = c.get(url, headers={"Range": "bytes=200-299"})
        multi = c.get(url, headers={"Range": "bytes=100-109, 1000-1009"})
        if_range = c.get(url, headers={"Range": "bytes=500-599", "If-Range": '"p1"'})
    assert first.status_code == 206 and first.content == body[100:1100]
    assert status(first) == "fwdproxy; fwd=uri-miss; fwd-status=206; stored"
    assert inside.status_code == 206 and inside.content == body[200:300]
    assert inside.headers["Content-Range"] == f"bytes 200-299/{SIZE}"
    assert status(inside).startswith("fwdproxy; hit")
    assert inside.headers["Accept-Ranges"] == "bytes" and inside.headers["ETag"] == '"p1"'
    assert multi.status_code == 206 and multi.headers["Content-Type"].startswith("multipart/byteranges")
    assert body[100:110] in multi.content and body[1000:1010] in multi.content
    assert if_range.status_code == 206 and if_range.content == body[500:600]
    assert obj.asked == [("bytes=100-1099", None)]


def test_ranges_outside_go_forward_and_merge(start_proxy, origin: Origin) -> None:
    body = blob(SIZE, 2)
    obj = Ranged(body)
    url = origin.route("/m", obj)
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url, headers={"Range": "bytes=0-99"})
        overlapping = c.get(url, headers={"Range": "bytes=50-199"})
        joined = c.get(url, headers={"Range": "bytes=0-199"})
        suffix = c.get(url, headers={"Range": "bytes=-100"})
        suffix_again = c.get(url, headers={"Range": f"bytes={SIZE - 50}-"})
    assert overlapping.status_code == 206 and overlapping.content == body[50:200]
    assert status(overlapping).startswith("fwdproxy; fwd=partial")
    assert joined.content == body[:200] and status(joined).startswith("fwdproxy; hit")
    assert suffix.content == body[-100:]
    assert suffix_again.content == body[-50:] and status(suffix_again).startswith("fwdproxy; hit")
    # The overlapping range asked only what was missing, guarded by If-Range (§13.1.5).
    assert obj.asked == [("bytes=0-99", None), ("bytes=100-199", '"p1"'), ("bytes=-100", None)]


def test_a_whole_get_fetches_only_the_rest(start_proxy, origin: Origin) -> None:
    body = blob(SIZE, 3)
    obj = Ranged(body)
    url = origin.route("/f", obj)
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url, headers={"Range": "bytes=0-999"})
        c.get(url, headers={"Range": "bytes=3000-3999"})
        whole = c.get(url)
        hit = c.get(url)
        piece = c.get(url, headers={"Range": "bytes=4000-"})
    assert whole.status_code == 200 and whole.content == body
    assert whole.headers["Content-Length"] == str(SIZE) and "Content-Range" not in whole.headers
    assert status(whole) == "fwdproxy; fwd=partial; fwd-status=206; stored"
    # One range from the first missing byte to the last (the stored piece between is asked again).
    assert obj.asked[-1] == (f"bytes=1000-{SIZE - 1}", '"p1"')
    assert (
        hit.content == body
        and status(hit).startswith("fwdproxy; hit")
        and hit.headers["Accept-Ranges"] == "bytes"
    )
    assert piece.status_code == 206 and piece.content == body[4000:]
    assert len(obj.asked) == 3


def test_pieces_that_cover_everything_become_a_complete_entry(start_proxy, origin: Origin) -> None:
    body = blob(SIZE, 4)
    obj = Ranged(body)
    url = origin.route("/c", obj)
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url, headers={"Range": "bytes=0-2047"})
        c.get(url, headers={"Range": "bytes=2048-"})
        whole = c.get(url)
    assert whole.status_code == 200 and whole.content == body and status(whole).startswith("fwdproxy; hit")
    assert len(obj.asked) == 2


def test_a_changed_object_replaces_the_pieces(start_proxy, origin: Origin) -> None:
    old, new = blob(SIZE, 5), blob(SIZE, 6)
    obj = Ranged(old)
    url = origin.route("/v", obj)
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url, headers={"Range": "bytes=0-99"})
        obj.body, obj.etag = new, '"p2"'
        whole = c.get(url)  # If-Range "p1" fails at the origin: the new object comes whole
        again = c.get(url, headers={"Range": "bytes=0-99"})
    assert whole.status_code == 200 and whole.content == new
    assert obj.asked[-1] == (f"bytes=100-{SIZE - 1}", '"p1"')
    assert again.content == new[:100] and status(again).startswith("fwdproxy; hit")


def test_a_piece_of_another_version_starts_over(start_proxy, origin: Origin) -> None:
    old, new = blob(SIZE, 7), blob(SIZE, 8)
    obj = Ranged(old)
    url = origin.route("/o", obj)
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url, headers={"Range": "bytes=0-99"})
        obj.body, obj.etag = new, '"p2"'
        c.get(url, headers={"Range": "bytes=100-199"})  # same bytes? no: another validator (§3.4)
        first = c.get(url, headers={"Range": "bytes=0-99"})
        second = c.get(url, headers={"Range": "bytes=100-199"})
    assert first.content == new[:100] and status(first).startswith("fwdproxy; fwd=partial")
    assert second.content == new[100:200] and status(second).startswith("fwdproxy; hit")


def wrong(status_code: int, headers: dict[str, str], body: bytes):
    def reply(req) -> Reply:
        return Reply(status_code, {"Cache-Control": "max-age=600", "ETag": '"x"'} | headers, body)

    return reply


def test_206s_that_are_never_kept(start_proxy, origin: Origin) -> None:
    body = blob(SIZE, 9)
    cases = {
        # asked bytes=0-99 each time
        "/other-range": wrong(206, {"Content-Range": f"bytes 100-199/{SIZE}"}, body[100:200]),
        "/longer": wrong(206, {"Content-Range": f"bytes 0-99/{SIZE}"}, body[:150]),
        "/no-total": wrong(206, {"Content-Range": "bytes 0-99/*"}, body[:100]),
        "/past-end": wrong(206, {"Content-Range": "bytes 0-99/50"}, body[:100]),
        "/weak": wrong(206, {"Content-Range": f"bytes 0-99/{SIZE}", "ETag": 'W/"x"'}, body[:100]),
        "/no-validator": lambda req: Reply(206, {"Content-Range": f"bytes 0-99/{SIZE}"}, body[:100]),
        "/no-store": wrong(
            206, {"Content-Range": f"bytes 0-99/{SIZE}", "Cache-Control": "no-store"}, body[:100]
        ),
        "/vary": wrong(206, {"Content-Range": f"bytes 0-99/{SIZE}", "Vary": "Accept"}, body[:100]),
        "/multipart": wrong(
            206,
            {"Content-Type": "multipart/byteranges; boundary=b"},
            b"--b\r\nContent-Range: bytes 0-99/4096\r\n\r\n" + body[:100] + b"\r\n--b--\r\n",
        ),
    }
    urls = {path: origin.route(path, reply) for path, reply in cases.items()}
    proxy = start_proxy()
    with client(proxy) as c:
        for path, url in urls.items():
            for _ in range(2):
                try:
                    c.get(url, headers={"Range": "bytes=0-99"})
                except httpx.HTTPError:
                    pass  # a longer body than its Content-Length: the connection is the client's problem
            assert origin.hits[path] == 2, path  # the second went to the origin again: nothing was kept


def test_a_wrong_answer_to_the_rest_is_never_served_as_the_whole(start_proxy, origin: Origin) -> None:
    body = blob(SIZE, 10)
    obj = Ranged(body)
    url = origin.route("/w", obj)
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url, headers={"Range": "bytes=0-99"})
        good = obj.__call__

        def liar(req) -> Reply:
            if req.headers.get("Range") == f"bytes=100-{SIZE - 1}":  # the rest, shifted by one byte
                return Reply(
                    206,
                    obj.headers() | {"Content-Range": f"bytes 101-{SIZE - 1}/{SIZE}"},
                    body[101:],
                )
            return good(req)

        origin.route("/w", liar)
        bad = c.get(url)
        origin.route("/w", obj)
        after = c.get(url)
    assert bad.status_code == 502 and body[101:] not in bad.content
    assert after.status_code == 200 and after.content == body  # the pieces were dropped: fetched whole
    assert obj.asked[-1] == (None, None)


def test_a_wrong_answer_to_a_narrowed_range_is_never_passed_on(start_proxy, origin: Origin) -> None:
    body = blob(SIZE, 15)
    obj = Ranged(body)
    url = origin.route("/n", obj)
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url, headers={"Range": "bytes=0-99"})
        good = obj.__call__

        def liar(req) -> Reply:
            if req.headers.get("Range") == "bytes=100-199":  # the narrowed range, answered for another span
                return Reply(206, obj.headers() | {"Content-Range": f"bytes 0-99/{SIZE}"}, body[:100])
            return good(req)

        origin.route("/n", liar)
        bad = c.get(url, headers={"Range": "bytes=50-199"})
        origin.route("/n", obj)
        after = c.get(url, headers={"Range": "bytes=50-199"})
    assert bad.status_code == 502 and body[:100] not in bad.content
    assert after.status_code == 206 and after.content == body[50:200]
    assert obj.asked[-1] == ("bytes=50-199", None)  # the pieces were dropped: asked as the client did


def test_a_length_that_changes_under_the_same_validator_is_never_combined(
    start_proxy, origin: Origin
) -> None:
    body, longer = blob(SIZE, 16), blob(SIZE + 10, 17)
    obj = Ranged(body)
    url = origin.route("/len", obj)
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url, headers={"Range": "bytes=0-99"})
        obj.body = longer  # same ETag, another length: an origin that contradicts itself
        whole = c.get(url)  # asks bytes=100-4095: answered ".../4106"
        obj.body = body
        again = c.get(url)
        piece = c.get(url, headers={"Range": "bytes=0-99"})
    assert whole.status_code == 502 and longer[100:SIZE] not in whole.content
    assert again.status_code == 200 and again.content == body  # the pieces were dropped: fetched whole
    assert piece.content == body[:100]


def test_a_fill_that_may_not_be_stored_still_answers(start_proxy, origin: Origin) -> None:
    body = blob(SIZE, 18)
    obj = Ranged(body)
    url = origin.route("/ns", obj)
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(url, headers={"Range": "bytes=0-99"})
        no_store = c.get(url, headers={"Cache-Control": "no-store"})
        with_credentials = c.get(url, headers={"Range": "bytes=50-149", "Authorization": "Basic eDp5"})
        piece = c.get(url, headers={"Range": "bytes=0-99"})
        whole = c.get(url)
    assert no_store.status_code == 200 and no_store.content == body and "stored" not in status(no_store)
    assert with_credentials.status_code == 206 and with_credentials.content == body[50:150]
    assert piece.content == body[:100] and status(piece).startswith("fwdproxy; hit")  # the pieces stayed
    assert whole.content == body and "stored" in status(whole)
    assert obj.asked[1:] == [
        (f"bytes=100-{SIZE - 1}", '"p1"'),
        ("bytes=100-149", '"p1"'),
        (f"bytes=100-{SIZE - 1}", '"p1"'),
    ]


def test_parallel_ranges_of_a_cold_object_move_it_once(start_proxy, origin: Origin) -> None:
    """uv-style: 8 ranges at once of a cold 20 MiB object, without --range-fetch-whole-below."""
    size = 20 * 1024 * 1024
    body = blob(size, 11)
    obj = Ranged(body)
    url = origin.route("/wheel", obj)
    proxy = start_proxy()
    n, part = 8, size // 8
    out: list[httpx.Response | BaseException] = [RuntimeError("not run")] * n

    def get(i: int) -> None:
        try:
            with client(proxy) as c:
                out[i] = c.get(url, headers={"Range": f"bytes={i * part}-{(i + 1) * part - 1}"})
        except httpx.HTTPError as e:
            out[i] = e

    threads = [threading.Thread(target=get, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, r in enumerate(out):
        assert isinstance(r, httpx.Response), r
        assert r.status_code == 206 and r.content == body[i * part : (i + 1) * part]
    with client(proxy) as c:
        whole = c.get(url)
        again = [c.get(url, headers={"Range": f"bytes={i * part}-{(i + 1) * part - 1}"}) for i in range(n)]
    assert whole.status_code == 200 and whole.content == body
    assert status(whole).startswith("fwdproxy; hit")
    assert all(r.content == body[i * part : (i + 1) * part] for i, r in enumerate(again))
    assert obj.sent <= size * 1.1, obj.sent  # at most one full origin transfer
    assert obj.sent >= size


def test_pieces_over_http2(start_proxy, tls_origin: Origin, proxy_ca_file: Path) -> None:
    body = blob(SIZE, 12)
    obj = Ranged(body)
    url = tls_origin.route("/h2p", obj).replace("127.0.0.1", "localhost")
    proxy = start_proxy("--connect-port", str(tls_origin.port))
    with h2_client(proxy, proxy_ca_file) as c:
        miss = c.get(url, headers={"Range": "bytes=-1000"})
        inside = c.get(url, headers={"Range": "bytes=3500-3599"})
        whole = c.get(url)
        hit = c.get(url, headers={"Range": "bytes=0-9"})
    assert miss.http_version == "HTTP/2" and miss.status_code == 206 and miss.content == body[-1000:]
    assert inside.http_version == "HTTP/2" and inside.content == body[3500:3600]
    assert status(inside).startswith("fwdproxy; hit")
    assert whole.http_version == "HTTP/2" and whole.status_code == 200 and whole.content == body
    assert hit.content == body[:10] and status(hit).startswith("fwdproxy; hit")
    assert [a for a, _ in obj.asked] == ["bytes=-1000", f"bytes=0-{SIZE - 1001}"]


def raw_get(proxy, url: str, *extra: str) -> tuple[bytes, bytes]:
    """One request on a raw socket, header lines exactly as given; (head, body) of the answer."""
    host, port = proxy.url.removeprefix("http://").split(":")
    lines = [f"GET {url} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *extra, "", ""]
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall("\r\n".join(lines).encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def test_odd_range_headers_on_a_raw_socket(start_proxy, origin: Origin) -> None:
    body = blob(SIZE, 13)
    obj = Ranged(body)
    url = origin.route("/odd", obj)
    proxy = start_proxy()
    raw_get(proxy, url, "Range: bytes=1000-1999")
    # Overlapping specs coalesce to one range inside the piece; a unit in capitals is still bytes (§14.1).
    head, got = raw_get(proxy, url, "Range: bytes=1000-1099, 1050-1199")
    assert head.startswith(b"HTTP/1.1 206") and got == body[1000:1200]
    head, got = raw_get(proxy, url, "Range: BYTES=1500-1509")
    assert head.startswith(b"HTTP/1.1 206") and got == body[1500:1510]
    # Invalid (last < first): the Range is ignored by the origin, whose 200 replaces the pieces.
    head, got = raw_get(proxy, url, "Range: bytes=1999-1000")
    assert head.startswith(b"HTTP/1.1 200") and got == body
    assert len(obj.asked) == 2
    # Two Range fields: never answered from pieces as if one.
    head, got = raw_get(proxy, url, "Range: bytes=0-9", "Range: bytes=20-29")
    assert b"HTTP/1.1 5" not in head[:12]


def test_a_206_cut_short_is_never_kept(start_proxy, origin: Origin) -> None:
    size = 2 * 1024 * 1024  # past the stream threshold: copied as it streams
    body = blob(size, 14)
    calls = []

    def cut(req) -> Reply:
        calls.append(req.headers.get("Range"))
        headers = {
            "Cache-Control": "max-age=600",
            "ETag": '"c1"',
            "Content-Range": f"bytes 0-{size - 1}/{size * 2}",
        }
        abort = size // 2 if len(calls) == 1 else None
        return Reply(206, headers, body, abort_after=abort)

    url = origin.route("/cut", cut)
    proxy = start_proxy()
    with client(proxy) as c:
        try:
            c.get(url, headers={"Range": f"bytes=0-{size - 1}"})
        except httpx.HTTPError:
            pass
        second = c.get(url, headers={"Range": f"bytes=0-{size - 1}"})
        third = c.get(url, headers={"Range": "bytes=0-9"})
    assert second.status_code == 206 and second.content == body
    assert len(calls) == 2  # the cut one was not kept; the whole second one was
    assert third.content == body[:10] and status(third).startswith("fwdproxy; hit")


def test_a_whole_fetch_for_ranges_drops_the_pieces(start_proxy, origin: Origin, tmp_path: Path) -> None:
    body = blob(SIZE, 19)
    obj = Ranged(body)
    url = origin.route("/wf", obj)
    cache_dir = tmp_path / "shared-cache"
    with client(start_proxy(cache_dir=cache_dir)) as c:
        c.get(url, headers={"Range": "bytes=0-99"})
    store = TieredStore.open(cache_dir)
    key = partial_key(cache.primary_key("GET", url))
    assert store.get(key) is not None
    with client(start_proxy("--range-fetch-whole-below", "64KiB", cache_dir=cache_dir)) as c:
        r = c.get(url, headers={"Range": "bytes=200-299"})  # a miss: fetched whole, stored, answered
    assert r.status_code == 206 and r.content == body[200:300]
    assert obj.asked[-1] == (None, None)
    assert store.get(key) is None
    store.close()
