"""Partial entries (RFC 9111 §3.3-3.4) in the pure core: which 206s become pieces, how pieces merge, what a
later request gets from them, and the exchange's rows for them (no mitmproxy)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwdproxy.cache import partial
from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.directives import format_http_date
from fwdproxy.cache.exchange import Exchange, IllegalStep
from fwdproxy.cache.partial import Decision, Plan
from fwdproxy.cache.states import Action, Joined, Limits, State
from fwdproxy.cache.status import Fwd, render
from fwdproxy.http_model import Headers, Request, Response, StoredResponse
from fwdproxy.ranges import ByteRange, Partial
from fwdproxy.store import codec, partial_key

NOW = 1_700_000_000.0
URL = "http://files.example/big.whl"
TOTAL = 1000
BODY = random.Random(5).randbytes(TOTAL)
CONFIG = CacheConfig()


def req(**fields: str) -> Request:
    return Request("GET", URL, Headers.of([(k.replace("_", "-"), v) for k, v in fields.items()]))


def resp206(first: int, last: int, total: int = TOTAL, *, etag: str = '"e1"', **fields: str) -> Response:
    headers = [
        ("Date", format_http_date(NOW)),
        ("Cache-Control", "max-age=60"),
        ("Content-Range", f"bytes {first}-{last}/{total}"),
        ("Content-Length", str(last - first + 1)),
    ]
    if etag:
        headers.append(("ETag", etag))
    headers += [(k.replace("_", "-"), v) for k, v in fields.items()]
    return Response(206, Headers.of(headers), "Partial Content")


def entry(*pieces: tuple[int, int], etag: str = '"e1"', age: float = 0) -> tuple[StoredResponse, bytes]:
    """A partial entry holding these pieces of BODY."""
    meta = partial.record(
        req(Range="bytes=0-0"),
        resp206(0, 0, etag=etag),
        TOTAL,
        request_time=NOW - age,
        response_time=NOW - age,
        config=CONFIG,
    )
    body = b"".join(BODY[a : b + 1] for a, b in pieces)
    return replace(meta, pieces=pieces, body_length=len(body)), body


# -- validators and Content-Range ------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, expected",
    [
        ([("ETag", '"a"')], '"a"'),
        ([("ETag", 'W/"a"')], None),
        ([("ETag", "a")], None),
        (
            [
                ("ETag", 'W/"a"'),
                ("Last-Modified", format_http_date(NOW - 10)),
                ("Date", format_http_date(NOW)),
            ],
            None,
        ),
        (
            [("Last-Modified", format_http_date(NOW - 10)), ("Date", format_http_date(NOW))],
            format_http_date(NOW - 10),
        ),
        (
            [("Last-Modified", format_http_date(NOW)), ("Date", format_http_date(NOW))],
            None,
        ),  # weak: same second
        ([("Last-Modified", format_http_date(NOW - 10))], None),  # no Date to tell
        ([], None),
    ],
)
def test_strong_validator(fields: list[tuple[str, str]], expected: str | None) -> None:
    assert partial.strong_validator(Headers.of(fields)) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("bytes 0-9/10", (ByteRange(0, 9), 10)),
        (" bytes 5-5/6 ", (ByteRange(5, 5), 6)),
        ("bytes */10", None),
        ("bytes 0-9/*", None),
        ("bytes 5-4/10", None),
        ("bytes 0-10/10", None),
        ("bytes 0-9/10, bytes 0-9/10", None),
        ("items 0-9/10", None),
        ("bytes -1-9/10", None),
        ("bytes ٠-9/10", None),  # an Arabic-Indic zero is no DIGIT
        ("bytes 0-9/" + "9" * 30, None),
        (None, None),
    ],
)
def test_content_range(value: str | None, expected: object) -> None:
    assert partial.content_range(value) == expected


# -- which 206s become pieces (§3.3) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "asked, response, expected",
    [
        ("bytes=0-99", resp206(0, 99), (ByteRange(0, 99), TOTAL)),
        ("bytes=-100", resp206(900, 999), (ByteRange(900, 999), TOTAL)),
        ("bytes=900-", resp206(900, 999), (ByteRange(900, 999), TOTAL)),
        ("bytes=990-5000", resp206(990, 999), (ByteRange(990, 999), TOTAL)),
        ("bytes=0-99", resp206(0, 98), None),  # not what was asked
        ("bytes=0-99", resp206(1, 100), None),
        ("bytes=-100", resp206(0, 99), None),
        ("bytes=0-99", resp206(0, 99, etag='W/"e1"'), None),  # weak: never combined (§3.4)
        ("bytes=0-99", resp206(0, 99, etag=""), None),  # no validator at all
        ("bytes=0-99", resp206(0, 99, Vary="Accept"), None),
        ("bytes=0-99", resp206(0, 99, Content_Type="multipart/byteranges; boundary=x"), None),
        ("bytes=0-9,20-29", resp206(0, 29), None),  # several ranges asked
        ("bytes=0-99", resp206(0, 99, total=partial.PIECES_MAX + 1), None),
        (
            "bytes=0-99",
            replace(resp206(0, 99), headers=resp206(0, 99).headers.with_("Content-Length", "150")),
            None,
        ),
        (
            "bytes=0-99",
            replace(
                resp206(0, 99),
                headers=Headers(resp206(0, 99).headers.fields + (("Content-Range", "bytes 0-99/1000"),)),
            ),
            None,
        ),
        ("bytes=0-99", replace(resp206(0, 99), status=200), None),
    ],
)
def test_piece_of(asked: str, response: Response, expected: object) -> None:
    assert partial.piece_of(req(Range=asked), response) == expected


def test_may_keep_judges_the_whole_response() -> None:
    assert partial.may_keep(req(Range="bytes=0-9"), resp206(0, 9), CONFIG)
    assert not partial.may_keep(req(Range="bytes=0-9"), resp206(0, 9, Cache_Control="no-store"), CONFIG)
    assert not partial.may_keep(req(Range="bytes=0-9"), resp206(0, 9, Cache_Control="private"), CONFIG)
    assert not partial.may_keep(req(Range="bytes=0-9", Authorization="x"), resp206(0, 9), CONFIG)


# -- merging and reading pieces -------------------------------------------------------------------------


def test_merge_coalesces_and_new_bytes_win() -> None:
    old, body = entry((0, 99), (200, 299))
    new = old
    pieces, merged = partial.merge(old, body, new, ByteRange(50, 249), BODY[50:250])
    assert pieces == ((0, 299),) and merged == BODY[:300]
    pieces, merged = partial.merge(old, body, new, ByteRange(100, 199), BODY[100:200])  # exactly the gap
    assert pieces == ((0, 299),) and merged == BODY[:300]
    pieces, merged = partial.merge(old, body, new, ByteRange(500, 509), BODY[500:510])
    assert pieces == ((0, 99), (200, 299), (500, 509))
    assert merged == BODY[:100] + BODY[200:300] + BODY[500:510]


def test_merge_starts_over_on_another_validator_or_length() -> None:
    old, body = entry((0, 99))
    other, _ = entry((0, 0), etag='"e2"')
    assert partial.merge(old, body, other, ByteRange(100, 199), b"x" * 100) == (((100, 199),), b"x" * 100)
    longer = replace(old, full_length=TOTAL + 1)
    assert partial.merge(old, body, longer, ByteRange(100, 199), b"y" * 100) == (((100, 199),), b"y" * 100)
    assert partial.merge(None, b"", old, ByteRange(5, 6), b"ab") == (((5, 6),), b"ab")


@given(st.lists(st.tuples(st.integers(0, TOTAL - 1), st.integers(0, 300)), min_size=1, max_size=12))
def test_merged_pieces_are_always_the_representation(spans: list[tuple[int, int]]) -> None:
    meta, _ = entry((0, 0))
    stored: StoredResponse | None = None
    body = b""
    for start, size in spans:
        end = min(TOTAL - 1, start + size)
        pieces, body = partial.merge(stored, body, meta, ByteRange(start, end), BODY[start : end + 1])
        stored = replace(meta, pieces=pieces, body_length=len(body))
        assert all(a <= b for a, b in pieces)
        assert all(pieces[i][1] + 1 < pieces[i + 1][0] for i in range(len(pieces) - 1))  # sorted, apart
        assert body == b"".join(BODY[a : b + 1] for a, b in pieces)
        r = ByteRange(start, end)
        assert partial.covers(pieces, r) and partial.extract(pieces, body, r) == BODY[start : end + 1]


def test_missing_span_and_completeness() -> None:
    assert partial.missing_span(((0, 99),), TOTAL) == ByteRange(100, 999)
    assert partial.missing_span(((100, 199), (500, 999)), TOTAL) == ByteRange(0, 499)
    assert partial.missing_span(((0, 99), (500, 599)), TOTAL) == ByteRange(100, 999)
    assert partial.missing_span(((0, 999),), TOTAL) is None
    assert partial.missing_span(((0, 99),), TOTAL, within=ByteRange(50, 199)) == ByteRange(100, 199)
    assert partial.missing_span(((0, 99), (150, 160)), TOTAL, within=ByteRange(50, 199)) == ByteRange(
        100, 199
    )
    assert partial.missing_span(((100, 199),), TOTAL, within=ByteRange(50, 150)) == ByteRange(50, 99)
    assert partial.missing_span(((100, 199), (300, 399)), TOTAL, within=ByteRange(150, 350)) == ByteRange(
        200, 299
    )
    assert partial.missing_span(((0, 99),), TOTAL, within=ByteRange(10, 20)) is None
    assert partial.overlaps(((0, 99),), ByteRange(99, 200)) and not partial.overlaps(
        ((0, 99),), ByteRange(100, 200)
    )
    assert partial.is_complete(((0, 999),), TOTAL) and not partial.is_complete(((0, 998),), TOTAL)
    with pytest.raises(ValueError):
        partial.extract(((0, 9),), BODY[:10], ByteRange(5, 10))


# -- what a later request does --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_, pieces, age, plan",
    [
        (req(Range="bytes=10-19"), ((0, 99),), 0, Plan.SERVE),
        (req(Range="bytes=10-19, 950-"), ((0, 99), (900, 999)), 0, Plan.SERVE),
        (req(Range="bytes=-50"), ((900, 999),), 0, Plan.SERVE),
        (req(Range="bytes=10-19", If_Range='"e1"'), ((0, 99),), 0, Plan.SERVE),
        (req(Range="bytes=10-19", If_Range='"e2"'), ((0, 99),), 0, Plan.CAPTURE),
        (req(Range="bytes=10-19", If_Range='W/"e1"'), ((0, 99),), 0, Plan.CAPTURE),
        (req(Range="bytes=10-19"), ((0, 99),), 120, Plan.CAPTURE),  # stale: the origin is asked
        (req(Range="bytes=90-109"), ((0, 99),), 0, Plan.FILL),  # past the piece: only the rest is asked
        (req(Range="bytes=90-109"), ((0, 99),), 120, Plan.FILL),  # stale pieces: If-Range guards them
        (req(Range="bytes=200-209"), ((0, 99),), 0, Plan.CAPTURE),  # nothing of it stored: as it is
        (req(Range="bytes=90-109, 500-509"), ((0, 99),), 0, Plan.CAPTURE),  # several ranges: as they are
        (req(Range="bytes=90-109", If_Range='"e2"'), ((0, 99),), 0, Plan.CAPTURE),
        (req(Range="bytes=5000-"), ((0, 99),), 0, Plan.CAPTURE),  # unsatisfiable: the origin says 416
        (req(Range="bytes=10-19", Cache_Control="no-cache"), ((0, 99),), 0, Plan.CAPTURE),
        (req(), ((0, 99),), 0, Plan.FILL),
        (req(), ((0, 99),), 120, Plan.FILL),  # If-Range guards a stale one (§3.4 combines its headers)
        (req(If_None_Match='"e1"'), ((0, 99),), 0, Plan.NONE),
        (req(If_Range='"e1"'), ((0, 99),), 0, Plan.NONE),
        (req(Range="bytes=10-19", If_Modified_Since=format_http_date(NOW)), ((0, 99),), 0, Plan.NONE),
    ],
)
def test_plan(request_: Request, pieces: tuple[tuple[int, int], ...], age: float, plan: Plan) -> None:
    meta, _ = entry(*pieces, age=age)
    assert partial.plan(request_, meta, now=NOW, config=CONFIG).plan is plan


def test_plan_without_pieces() -> None:
    assert partial.plan(req(Range="bytes=0-9"), None, now=NOW, config=CONFIG) == Decision(Plan.CAPTURE)
    assert partial.plan(req(), None, now=NOW, config=CONFIG) == Decision(Plan.NONE)
    head = Request("HEAD", URL, Headers.of([("Range", "bytes=0-9")]))
    assert partial.plan(head, None, now=NOW, config=CONFIG).plan is Plan.NONE


def test_fill_asks_from_the_first_missing_byte_with_if_range() -> None:
    meta, _ = entry((0, 99), (500, 599))
    found = partial.plan(req(), meta, now=NOW, config=CONFIG)
    assert found.span == ByteRange(100, 999) and found.if_range == '"e1"'


def test_a_range_over_the_edge_of_the_pieces_asks_only_the_rest() -> None:
    meta, _ = entry((0, 99), (500, 599))
    found = partial.plan(req(Range="bytes=50-549"), meta, now=NOW, config=CONFIG)
    assert found.plan is Plan.FILL and found.span == ByteRange(100, 499) and found.if_range == '"e1"'
    assert found.want == Partial((ByteRange(50, 549),))


def test_answer_single_and_multipart() -> None:
    meta, body = entry((0, 99), (900, 999))
    headers, content = partial.answer(meta, body, Partial((ByteRange(10, 19),)), now=NOW + 5, boundary="b0")
    assert content == BODY[10:20]
    assert headers.get("content-range") == f"bytes 10-19/{TOTAL}" and headers.get("content-length") == "10"
    assert (
        headers.get("age") == "5"
        and headers.get("accept-ranges") == "bytes"
        and headers.get("etag") == '"e1"'
    )
    headers, content = partial.answer(
        meta, body, Partial((ByteRange(0, 1), ByteRange(998, 999))), now=NOW, boundary="b0"
    )
    assert headers.get("content-type") == "multipart/byteranges; boundary=b0"
    assert (
        BODY[0:2] in content
        and BODY[998:1000] in content
        and headers.get("content-length") == str(len(content))
    )


def test_complete_entry_is_a_plain_200() -> None:
    meta, body = entry((0, 999))
    whole = partial.complete(meta, CONFIG)
    assert (whole.status, whole.body_length, whole.pieces, whole.full_length) == (200, TOTAL, (), -1)
    assert whole.headers.get("content-length") == str(TOTAL) and "content-range" not in whole.headers
    assert partial.fill_headers(whole, now=NOW).get("content-length") == str(TOTAL)


def test_pieces_survive_the_record_format() -> None:
    meta, body = entry((0, 99), (500, 599))
    decoded = codec.decode(codec.encode(meta, stamp=b"s" * 16, digest=codec.checksum(body)))
    assert isinstance(decoded, codec.Decoded)
    assert decoded.meta.pieces == ((0, 99), (500, 599)) and decoded.meta.full_length == TOTAL
    plain = replace(meta, pieces=())
    assert b"pieces" not in codec.encode(plain, stamp=b"s" * 16, digest="")  # complete entries unchanged


def test_partial_key_is_never_a_primary_key() -> None:
    key = partial_key("GET " + URL)
    assert key.startswith("partial:") and not key.split(" ", 1)[0].isupper()


# -- the exchange's rows ------------------------------------------------------------------------------


def forwarded(request_: Request) -> Exchange:
    """A miss that leads its key, on its way to the origin (as addons/cache.py drives it)."""
    ex = Exchange(request_, NOW)
    assert ex.begin(bypass=None, offline=False) is Action.LOOKUP
    action = ex.looked_up([], now=NOW, config=CONFIG, in_flight=False)
    if action is Action.JOIN:
        action = ex.joined(Joined.LEAD)
    assert action is Action.FORWARD and ex.state is State.FORWARD
    return ex


def test_pieces_serve_a_range_as_a_hit() -> None:
    ex = forwarded(req(Range="bytes=0-9"))
    assert ex.wants_pieces()
    meta, _ = entry((0, 99))
    found = partial.plan(ex.request, meta, now=NOW, config=CONFIG)
    assert ex.pieces(found) is Action.SERVE_PIECES and ex.state is State.SERVED
    assert render(ex.status()).startswith("fwdproxy; hit; ttl=")
    assert not ex.wants_pieces()


def test_pieces_fill_a_whole_get() -> None:
    ex = forwarded(req())
    meta, _ = entry((0, 99))
    assert ex.pieces(partial.plan(ex.request, meta, now=NOW, config=CONFIG)) is Action.FILL
    assert ex.state is State.FORWARD and ex.decision.fwd is Fwd.PARTIAL
    assert (
        ex.head(resp206(100, 999), length=900, failed=False, now=NOW, config=CONFIG, limits=Limits())
        is Action.PASS
    )
    assert render(ex.forward_status(stored=True)) == "fwdproxy; fwd=partial; fwd-status=206; stored"
    with pytest.raises(IllegalStep):
        ex.pieces(Decision(Plan.NONE))


def test_pieces_capture_says_partial_only_when_there_are_some() -> None:
    ex = forwarded(req(Range="bytes=0-9"))
    assert ex.pieces(Decision(Plan.CAPTURE)) is Action.FORWARD and ex.decision.fwd is Fwd.URI_MISS
    ex = forwarded(req(Range="bytes=0-9"))
    assert ex.pieces(Decision(Plan.CAPTURE, had=True)) is Action.FORWARD and ex.decision.fwd is Fwd.PARTIAL
    with pytest.raises(IllegalStep):
        ex.pieces(Decision(Plan.NONE))


def test_only_plain_misses_ask_for_pieces() -> None:
    ex = Exchange(req(Range="bytes=0-9"), NOW)
    assert not ex.wants_pieces()  # not on its way yet
    with pytest.raises(IllegalStep):
        ex.pieces(Decision(Plan.NONE))
    head = forwarded(Request("HEAD", URL))
    assert not head.wants_pieces()
    background = Exchange(req(), NOW)
    background.begin(bypass=None, offline=False)
    background.looked_up([], now=NOW, config=CONFIG, in_flight=False, background=True)
    assert background.state is State.FORWARD and not background.wants_pieces()
