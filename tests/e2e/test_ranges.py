"""Range requests (RFC 9110 §14) answered from stored objects, end to end."""

from __future__ import annotations

import email.parser
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import httpx

from tests.support import Origin, Reply, client, h2_client, pattern

BODY = bytes(range(256)) * 4  # 1024 bytes


def stored(start_proxy, origin: Origin, path: str = "/r") -> tuple[httpx.Client, str]:
    url = origin.route(
        path,
        Reply(
            200, {"Cache-Control": "max-age=60", "ETag": '"r1"', "Content-Type": "application/x-test"}, BODY
        ),
    )
    proxy = start_proxy()
    c = client(proxy)
    assert c.get(url).content == BODY
    return c, url


def test_single_range_from_cache(start_proxy, origin: Origin) -> None:
    c, url = stored(start_proxy, origin)
    r = c.get(url, headers={"Range": "bytes=100-199"})
    c.close()
    assert r.status_code == 206
    assert r.content == BODY[100:200]
    assert r.headers["Content-Range"] == "bytes 100-199/1024"
    assert r.headers["Content-Length"] == "100"
    assert origin.hits["/r"] == 1


def test_multiple_ranges_multipart(start_proxy, origin: Origin) -> None:
    c, url = stored(start_proxy, origin)
    r = c.get(url, headers={"Range": "bytes=0-9, 500-509"})
    c.close()
    assert r.status_code == 206
    ctype = r.headers["Content-Type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + r.content)
    parts = [p.get_payload(decode=True) for p in msg.get_payload()]
    assert parts == [BODY[0:10], BODY[500:510]]
    assert origin.hits["/r"] == 1


def test_unsatisfiable_range_is_416(start_proxy, origin: Origin) -> None:
    c, url = stored(start_proxy, origin)
    r = c.get(url, headers={"Range": "bytes=5000-6000"})
    c.close()
    assert r.status_code == 416
    assert r.headers["Content-Range"] == "bytes */1024"


def test_if_range_mismatch_sends_whole(start_proxy, origin: Origin) -> None:
    c, url = stored(start_proxy, origin)
    r = c.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    ok = c.get(url, headers={"Range": "bytes=0-9", "If-Range": '"r1"'})
    c.close()
    assert r.status_code == 200 and r.content == BODY
    assert ok.status_code == 206 and ok.content == BODY[:10]


def test_range_on_miss_is_forwarded_and_not_stored(start_proxy, origin: Origin) -> None:
    def partial(req) -> Reply:
        if req.headers.get("Range") == "bytes=0-9":
            return Reply(206, {"Content-Range": "bytes 0-9/1024", "Cache-Control": "max-age=60"}, BODY[:10])
        return Reply(200, {"Cache-Control": "max-age=60"}, BODY)

    url = origin.route("/miss", partial)
    proxy = start_proxy()
    with client(proxy) as c:
        r = c.get(url, headers={"Range": "bytes=0-9"})
        full = c.get(url)
    assert r.status_code == 206 and r.content == BODY[:10]
    assert full.status_code == 200 and "hit" not in full.headers["Cache-Status"].split("; ")


def test_range_fetch_whole_below(start_proxy, origin: Origin) -> None:
    url = origin.route("/whole", Reply(200, {"Cache-Control": "max-age=60"}, BODY))
    proxy = start_proxy("--range-fetch-whole-below", "64KiB")
    with client(proxy) as c:
        r = c.get(url, headers={"Range": "bytes=10-19"})
        again = c.get(url, headers={"Range": "bytes=20-29"})
    assert r.status_code == 206 and r.content == BODY[10:20]
    assert "Range" not in origin.requests[-1].headers
    assert again.status_code == 206 and again.content == BODY[20:30]
    assert origin.hits["/whole"] == 1


# -- Accept-Ranges (RFC 9110 §14.3) and If-Range (§13.1.5): what range-downloading clients such as uv rely on


def cacheable(body: bytes, **extra: str) -> Reply:
    return Reply(200, {"Cache-Control": "max-age=60", "ETag": '"a1"'} | extra, body)


def test_accept_ranges_on_the_storing_miss_and_memory_hits(start_proxy, origin: Origin) -> None:
    url = origin.route("/ar", cacheable(BODY))  # the origin itself advertises nothing
    proxy = start_proxy()
    with client(proxy) as c:
        miss = c.get(url)
        hit = c.get(url)
        head = c.head(url)
        part = c.get(url, headers={"Range": "bytes=1000-"})
    assert "stored" in miss.headers["Cache-Status"] and miss.headers["Accept-Ranges"] == "bytes"
    assert miss.content == hit.content == BODY
    assert hit.headers["Cache-Status"].startswith("fwdproxy; hit") and hit.headers["Accept-Ranges"] == "bytes"
    assert head.headers["Accept-Ranges"] == "bytes"
    assert part.status_code == 206 and part.content == BODY[1000:]
    assert part.headers["Accept-Ranges"] == "bytes"
    assert origin.hits["/ar"] == 1 and all("Range" not in r.headers for r in origin.requests)


def test_accept_ranges_on_disk_hits_in_a_new_process(start_proxy, origin: Origin, tmp_path: Path) -> None:
    url = origin.route("/disk", cacheable(BODY, **{"Accept-Ranges": "none"}))
    first = start_proxy(cache_dir=tmp_path / "c")
    with client(first) as c:
        miss = c.get(url)
    first.stop()
    second = start_proxy("--memory-cache-size", "0", cache_dir=tmp_path / "c")
    with client(second) as c:
        hit = c.get(url)
        part = c.get(url, headers={"Range": "bytes=-24"})
    # The cache answers ranges for what it stored, whatever the origin could do (§14.3).
    assert miss.headers["Accept-Ranges"] == "bytes"
    assert hit.headers["Cache-Status"].startswith("fwdproxy; hit") and hit.headers["Accept-Ranges"] == "bytes"
    assert hit.content == BODY
    assert part.status_code == 206 and part.content == BODY[-24:] and part.headers["Accept-Ranges"] == "bytes"
    assert origin.hits["/disk"] == 1


def test_accept_ranges_on_a_streamed_miss_and_ranges_from_the_file(start_proxy, origin: Origin) -> None:
    big = pattern(3 * 1024 * 1024, seed=7)  # past the 1 MiB stream threshold: streamed while stored
    url = origin.route("/big", cacheable(big))
    proxy = start_proxy()
    with client(proxy) as c:
        miss = c.get(url)
        parts = [
            c.get(url, headers={"Range": f"bytes={i * 400_000}-{i * 400_000 + 399_999}"}) for i in range(8)
        ]
    assert miss.content == big and miss.headers["Accept-Ranges"] == "bytes"
    for i, p in enumerate(parts):
        assert p.status_code == 206 and p.content == big[i * 400_000 : (i + 1) * 400_000]
        assert p.headers["Accept-Ranges"] == "bytes"
    assert origin.hits["/big"] == 1


def test_no_accept_ranges_claimed_for_unstored_responses(start_proxy, origin: Origin) -> None:
    plain = origin.route("/nostore", Reply(200, {"Cache-Control": "no-store"}, BODY))
    told = origin.route("/told", Reply(200, {"Cache-Control": "no-store", "Accept-Ranges": "bytes"}, BODY))
    proxy = start_proxy()
    with client(proxy) as c:
        r = c.get(plain)
        again = c.get(plain)
        origin_said = c.get(told)
    assert r.content == again.content == BODY
    assert "accept-ranges" not in r.headers and "accept-ranges" not in again.headers
    assert origin_said.headers["Accept-Ranges"] == "bytes"  # the origin's own claim passes through
    assert origin.hits["/nostore"] == 2


def test_if_range_with_last_modified_needs_a_strong_date(start_proxy, origin: Origin) -> None:
    now = time.time()
    # §8.8.2.2: Last-Modified is strong when it is at least a second before the response's Date (which the
    # origin sets to its clock): an hour before is strong, an hour after is not.
    strong_lm, weak_lm = formatdate(now - 3600, usegmt=True), formatdate(now + 3600, usegmt=True)
    strong = origin.route(
        "/strong", Reply(200, {"Cache-Control": "max-age=60", "Last-Modified": strong_lm}, BODY)
    )
    weak = origin.route("/weak", Reply(200, {"Cache-Control": "max-age=60", "Last-Modified": weak_lm}, BODY))
    proxy = start_proxy()
    with client(proxy) as c:
        c.get(strong), c.get(weak)
        ok = c.get(strong, headers={"Range": "bytes=0-9", "If-Range": strong_lm})
        changed = c.get(
            strong, headers={"Range": "bytes=0-9", "If-Range": formatdate(now - 7200, usegmt=True)}
        )
        unsure = c.get(weak, headers={"Range": "bytes=0-9", "If-Range": weak_lm})
        etag_for_date = c.get(strong, headers={"Range": "bytes=0-9", "If-Range": '"a1"'})
    assert ok.status_code == 206 and ok.content == BODY[:10]
    assert changed.status_code == 200 and changed.content == BODY
    assert unsure.status_code == 200 and unsure.content == BODY  # a weak validator never allows a range
    assert etag_for_date.status_code == 200 and etag_for_date.content == BODY  # no ETag stored to compare
    assert origin.hits["/strong"] == origin.hits["/weak"] == 1


def test_ranges_over_http2(start_proxy, tls_origin: Origin, proxy_ca_file: Path) -> None:
    url = tls_origin.route("/h2", cacheable(BODY)).replace("127.0.0.1", "localhost")
    proxy = start_proxy("--connect-port", str(tls_origin.port))
    with h2_client(proxy, proxy_ca_file) as c:
        miss = c.get(url)
        part = c.get(url, headers={"Range": "bytes=10-19"})
        stale_tag = c.get(url, headers={"Range": "bytes=10-19", "If-Range": '"zz"'})
        weak_tag = c.get(url, headers={"Range": "bytes=10-19", "If-Range": 'W/"a1"'})
        good_tag = c.get(url, headers={"Range": "bytes=10-19", "If-Range": '"a1"'})
    assert miss.http_version == "HTTP/2" and miss.headers["Accept-Ranges"] == "bytes"
    assert part.http_version == "HTTP/2" and part.status_code == 206 and part.content == BODY[10:20]
    assert part.headers["Content-Range"] == "bytes 10-19/1024" and part.headers["Accept-Ranges"] == "bytes"
    assert stale_tag.status_code == 200 and stale_tag.content == BODY
    assert weak_tag.status_code == 200 and weak_tag.content == BODY  # §13.1.5: strong comparison only
    assert good_tag.status_code == 206 and good_tag.content == BODY[10:20]
    assert tls_origin.hits["/h2"] == 1


def ranged_origin(origin: Origin, path: str, body: bytes) -> str:
    """An origin that answers Range with 206, as registries do."""

    def reply(req) -> Reply:
        headers = {"Cache-Control": "max-age=60", "ETag": '"w1"', "Accept-Ranges": "bytes"}
        if (spec := req.headers.get("Range")) is not None:
            first, last = (int(x) for x in spec.removeprefix("bytes=").split("-"))
            headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
            return Reply(206, headers, body[first : last + 1])
        return Reply(200, headers, body)

    return origin.route(path, reply)


def parallel_ranges(proxy, url: str, size: int, n: int = 8) -> list[httpx.Response | BaseException]:
    """n clients at once, each asking its n-th of the object, as uv does for a big wheel."""
    part = size // n
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
    return out


def test_parallel_ranges_on_a_cold_cache_cause_one_whole_transfer(start_proxy, origin: Origin) -> None:
    size = 6 * 1024 * 1024  # past the stream threshold: stored through a temp file while the ranges wait
    body = pattern(size, seed=11)
    url = ranged_origin(origin, "/wheel", body)
    proxy = start_proxy("--range-fetch-whole-below", "64MiB")
    answers = parallel_ranges(proxy, url, size)
    part = size // 8
    for i, r in enumerate(answers):
        assert isinstance(r, httpx.Response), r
        assert r.status_code == 206 and r.content == body[i * part : (i + 1) * part]
        assert r.headers["Content-Range"] == f"bytes {i * part}-{(i + 1) * part - 1}/{size}"
    assert [r.headers.get("Range") for r in origin.requests] == [None]  # one whole transfer, no ranges
    with client(proxy) as c:
        whole = c.get(url)
    assert whole.headers["Cache-Status"].startswith("fwdproxy; hit") and whole.content == body
    assert origin.hits["/wheel"] == 1


def test_ranges_of_objects_above_the_limit_go_to_the_origin(start_proxy, origin: Origin) -> None:
    size = 3 * 1024 * 1024
    body = pattern(size, seed=12)
    url = ranged_origin(origin, "/huge", body)
    proxy = start_proxy("--range-fetch-whole-below", "1MiB")
    answers = parallel_ranges(proxy, url, size, n=4)
    part = size // 4
    for i, r in enumerate(answers):
        assert isinstance(r, httpx.Response), r
        assert r.status_code == 206 and r.content == body[i * part : (i + 1) * part]
    # The whole fetch gave up at the headers (3 MiB > 1 MiB); each range was then asked of the origin (a
    # range that came after the first fetch gave up may have tried a whole fetch of its own).
    asked = [r.headers.get("Range") for r in origin.requests]
    assert sorted(a for a in asked if a) == sorted(f"bytes={i * part}-{(i + 1) * part - 1}" for i in range(4))
    assert asked.count(None) >= 1 and asked.count(None) <= 4


def test_waiting_ranges_stream_from_the_body_on_its_way(start_proxy, origin: Origin) -> None:
    """A range whose bytes have arrived is answered before the whole fetch ends (read from its temp file)."""
    size = 4 * 1024 * 1024
    body = pattern(size, seed=13)
    release = threading.Event()

    def held() -> Iterator[bytes]:
        yield body[: size // 2]
        release.wait(20)  # the origin holds the second half until the test has its range
        yield body[size // 2 :]

    headers = {"Cache-Control": "max-age=60", "ETag": '"g1"'}
    url = origin.route("/held", Reply(200, headers, chunks=held, length=size))
    proxy = start_proxy("--range-fetch-whole-below", "64MiB")
    timer = threading.Timer(15, release.set)  # never leave the origin thread hanging
    timer.start()
    try:
        with client(proxy) as c:
            early = c.get(url, headers={"Range": "bytes=1000-1999"})
            answered_while_held = not release.is_set()
            release.set()
            late = c.get(url, headers={"Range": f"bytes={size - 10}-"})
    finally:
        timer.cancel()
        release.set()
    assert early.status_code == 206 and early.content == body[1000:2000]
    assert early.headers["Content-Range"] == f"bytes 1000-1999/{size}"
    assert answered_while_held
    assert late.status_code == 206 and late.content == body[-10:]
    assert origin.hits["/held"] == 1 and "Range" not in origin.requests[0].headers
