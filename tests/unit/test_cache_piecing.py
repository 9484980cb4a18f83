"""Partial entries at work against a real store (fwdproxy/cache/piecing.py), driven as addons/cache.py drives
them but without mitmproxy: a 206 kept as a piece, a range answered from pieces, a whole GET filled with
the rest, and the answers when the origin's bytes do not fit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fwdproxy.cache import partial, piecing
from fwdproxy.cache.exchange import Exchange
from fwdproxy.cache.states import Limits
from fwdproxy.cache.status import render
from fwdproxy.http_model import Request, Response
from fwdproxy.ranges import ByteRange
from fwdproxy.store import TieredStore, partial_key, variant_key
from tests.unit.test_cache_partial import BODY, CONFIG, NOW, TOTAL, URL, entry, forwarded, req, resp206


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TieredStore]:
    opened = TieredStore.open(tmp_path / "cache")
    yield opened
    opened.close()


def origin(
    store: TieredStore, ex: Exchange, resp: Response, body: bytes, *, streamed: bool
) -> piecing.Finished:
    """The origin's response through the exchange, ``head`` and ``finish``, its body fed in chunks when
    ``streamed`` (as the addon's stream function does)."""
    length = len(body)
    ex.head(resp, length=length, failed=False, now=NOW, config=CONFIG, limits=Limits())
    got = piecing.head(ex, resp, streamed=streamed) if piecing.heeds(ex, resp.status) else piecing.Head.AS_IS
    capture = got if isinstance(got, piecing.Capture) else None
    if capture is not None:
        for at in range(0, len(body), 7):
            capture.feed(body[at : at + 7])
    held = got is piecing.Head.HOLD or not streamed
    if not piecing.heeds(ex, resp.status):
        return piecing.Finished()
    return piecing.finish(
        ex,
        resp,
        store,
        CONFIG,
        raw=body if held else None,
        capture=capture,
        streamed=streamed and not held,
        now=NOW,
        response_time=NOW,
    )


def put_pieces(store: TieredStore, *pieces: tuple[int, int], etag: str = '"e1"') -> None:
    meta, body = entry(*pieces, etag=etag)
    store.put(partial_key(primary()), meta, body)


def primary() -> str:
    return forwarded(req()).primary


def test_capture_keeps_what_came_and_gives_up_past_its_size() -> None:
    capture = piecing.Capture(10)
    capture.feed(b"01234")
    capture.feed(b"56789")
    assert capture.body() == b"0123456789"
    capture.feed(b"x")
    assert capture.body() is None and capture.spoilt and not capture.data
    capture.feed(b"")
    assert capture.body() is None


def test_a_streamed_206_becomes_pieces_that_answer_a_later_range(store: TieredStore) -> None:
    ex = forwarded(req(Range="bytes=100-299"))
    assert piecing.before_forward(ex, store, CONFIG, now=NOW) == piecing.Forward()
    assert ex.partial is not None and ex.partial.plan is partial.Plan.CAPTURE
    assert origin(store, ex, resp206(100, 299), BODY[100:300], streamed=True) == piecing.Finished()
    assert ex.stored
    kept = store.get(partial_key(ex.primary))
    assert kept is not None and kept.meta.pieces == ((100, 299),)

    later = forwarded(req(Range="bytes=150-159"))
    got = piecing.before_forward(later, store, CONFIG, now=NOW + 1)
    assert got.made is not None and got.fields == ()
    assert got.made.status == 206 and got.made.content == BODY[150:160]
    assert got.made.headers.get("Content-Range") == f"bytes 150-159/{TOTAL}"
    assert render(got.made.cache_status).startswith("fwdproxy; hit")


def test_a_streamed_206_cut_short_or_too_long_is_not_kept(store: TieredStore) -> None:
    for body in (BODY[100:299], BODY[100:301]):
        ex = forwarded(req(Range="bytes=100-299"))
        piecing.before_forward(ex, store, CONFIG, now=NOW)
        origin(store, ex, resp206(100, 299), body, streamed=True)
        assert not ex.stored and store.get(partial_key(ex.primary)) is None


def test_a_held_206_kept_says_stored_in_its_own_head(store: TieredStore) -> None:
    ex = forwarded(req(Range="bytes=0-9"))
    piecing.before_forward(ex, store, CONFIG, now=NOW)
    done = origin(store, ex, resp206(0, 9), BODY[:10], streamed=False)
    assert done.cache_status is not None and done.made is None and done.error is None
    assert render(done.cache_status) == "fwdproxy; fwd=uri-miss; fwd-status=206; stored"


def test_a_whole_get_is_filled_with_the_rest_and_answered_whole(store: TieredStore) -> None:
    put_pieces(store, (0, 99))
    ex = forwarded(req())
    got = piecing.before_forward(ex, store, CONFIG, now=NOW)
    assert got.made is None and got.fields == (("Range", f"bytes=100-{TOTAL - 1}"), ("If-Range", '"e1"'))
    resp = resp206(100, TOTAL - 1)
    assert piecing.head(ex, resp, streamed=True) is piecing.Head.HOLD
    done = origin(store, ex, resp, BODY[100:], streamed=True)
    assert done.made is not None and done.error is None
    assert done.made.status == 200 and done.made.content == BODY
    assert done.made.headers.get("Content-Range") is None
    assert render(done.made.cache_status) == "fwdproxy; fwd=partial; fwd-status=206; stored"
    whole = store.get(variant_key(ex.primary, ""))
    assert whole is not None and whole.meta.status == 200
    assert store.get(partial_key(ex.primary)) is None  # the pieces became the entry


def test_a_wider_range_is_filled_and_answered_with_its_bytes(store: TieredStore) -> None:
    put_pieces(store, (0, 99))
    ex = forwarded(req(Range="bytes=50-149"))
    got = piecing.before_forward(ex, store, CONFIG, now=NOW)
    assert got.fields == (("Range", "bytes=100-149"), ("If-Range", '"e1"'))
    done = origin(store, ex, resp206(100, 149), BODY[100:150], streamed=False)
    assert done.made is not None and done.made.status == 206 and done.made.content == BODY[50:150]
    kept = store.get(partial_key(ex.primary))
    assert kept is not None and kept.meta.pieces == ((0, 149),)


def test_a_fill_whose_pieces_another_request_completed_meanwhile(store: TieredStore) -> None:
    put_pieces(store, (0, 99))
    ex = forwarded(req())
    piecing.before_forward(ex, store, CONFIG, now=NOW)
    other = forwarded(req(Range=f"bytes=100-{TOTAL - 1}"))
    assert piecing.before_forward(other, store, CONFIG, now=NOW).made is None
    origin(store, other, resp206(100, TOTAL - 1), BODY[100:], streamed=False)  # completes the entry
    assert store.get(partial_key(ex.primary)) is None
    # Our fill's 206 came cut short: the complete entry answers it all the same.
    done = origin(store, ex, resp206(100, TOTAL - 1), BODY[100:500], streamed=False)
    assert done.made is not None and done.made.status == 200 and done.made.content == BODY


@pytest.mark.parametrize(
    "resp, body, why",
    [
        (resp206(100, TOTAL - 1, etag='"e2"'), BODY[100:], "did not fit the stored pieces"),
        (resp206(100, 199), BODY[100:200], "did not fit the stored pieces"),
        (Response(416, resp206(0, 0).headers.without("Content-Range"), "x"), b"", "no longer matches"),
    ],
)
def test_a_fill_the_origin_cannot_complete_drops_the_pieces(
    store: TieredStore, resp: Response, body: bytes, why: str
) -> None:
    put_pieces(store, (0, 99))
    ex = forwarded(req())
    piecing.before_forward(ex, store, CONFIG, now=NOW)
    done = origin(store, ex, resp, body, streamed=False)
    assert done.made is None and done.error is not None
    assert done.error.startswith(URL) and why in done.error and done.error.endswith("; retry")
    assert store.get(partial_key(ex.primary)) is None


def test_a_whole_200_drops_the_pieces_and_is_left_as_it_came(store: TieredStore) -> None:
    put_pieces(store, (0, 99))
    ex = forwarded(req(Range="bytes=500-599"))
    piecing.before_forward(ex, store, CONFIG, now=NOW)
    assert ex.partial is not None and ex.partial.plan is partial.Plan.CAPTURE
    whole = Response(200, resp206(0, 0).headers.without("Content-Range"), "OK")
    assert origin(store, ex, whole, BODY, streamed=True) == piecing.Finished()
    assert store.get(partial_key(ex.primary)) is None


def test_nothing_to_do_for_a_plain_miss_or_a_range_not_kept(store: TieredStore) -> None:
    ex = forwarded(Request("HEAD", URL))
    assert piecing.before_forward(ex, store, CONFIG, now=NOW) == piecing.Forward()
    assert not piecing.heeds(ex, 206) and ex.partial is None
    ex = forwarded(req(Range="bytes=0-9"))
    piecing.before_forward(ex, store, CONFIG, now=NOW)
    assert piecing.heeds(ex, 206) and not piecing.heeds(ex, 304)
    assert piecing.head(ex, resp206(0, 9), streamed=False) is piecing.Head.AS_IS  # held: finish reads it
    assert piecing.head(ex, resp206(5, 9), streamed=True) is piecing.Head.AS_IS  # not what was asked
    capture = piecing.head(ex, resp206(0, 9), streamed=True)
    assert isinstance(capture, piecing.Capture) and capture.size == ByteRange(0, 9).size
