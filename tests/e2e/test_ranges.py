"""Range requests (RFC 9110 §14) answered from stored objects, end to end."""

from __future__ import annotations

import email.parser

import httpx

from tests.support import Origin, Reply, client

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
