"""Range requests (RFC 9110 §14): parsing, If-Range, and the exact bytes of 206 bodies."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwdproxy.http_model import Headers
from fwdproxy.ranges import (
    MAX_RANGES,
    ByteRange,
    Full,
    Partial,
    RangeDecision,
    Unsatisfiable,
    assemble,
    content_range,
    if_range_allows,
    parse_range,
    partial_body,
    range_decision,
    unsatisfiable_headers,
)

LENGTH = 10000  # the representation length of the §14.1.2 examples


def partial(*ranges: tuple[int, int]) -> Partial:
    return Partial(tuple(ByteRange(*r) for r in ranges))


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("bytes=0-499", partial((0, 499)), id="14.1.2 first 500 bytes"),
        pytest.param("bytes=500-999", partial((500, 999)), id="14.1.2 second 500 bytes"),
        pytest.param("bytes=-500", partial((9500, 9999)), id="14.1.2 suffix"),
        pytest.param("bytes=9500-", partial((9500, 9999)), id="14.1.2 open end"),
        pytest.param("bytes=0-0,-1", partial((0, 0), (9999, 9999)), id="14.1.2 first and last byte"),
        pytest.param("bytes=500-600,601-999", partial((500, 999)), id="14.6 adjacent coalesced"),
        pytest.param("bytes=500-700,601-999", partial((500, 999)), id="14.6 overlapping coalesced"),
        pytest.param("bytes=9000-99999", partial((9000, 9999)), id="14.1.2 last-pos clamped"),
        pytest.param("bytes=-20000", partial((0, 9999)), id="14.1.2 suffix longer than body"),
        pytest.param("BYTES=0-1", partial((0, 1)), id="14.1 unit case-insensitive"),
        pytest.param(" bytes= 0-1 ,\t5-6 ", partial((0, 1), (5, 6)), id="5.6.1 OWS around elements"),
        pytest.param("bytes=0-1,,5-6,", partial((0, 1), (5, 6)), id="5.6.1 empty elements"),
        pytest.param("bytes=500-599,0-99", partial((500, 599), (0, 99)), id="14.6 client order kept"),
        pytest.param("bytes=700-799,0-99,50-149", partial((0, 149), (700, 799)), id="14.6 coalesced sorted"),
        pytest.param("bytes=20000-,0-0", partial((0, 0)), id="14.1.2 unsatisfiable spec dropped"),
        pytest.param("bytes=10000-", Unsatisfiable(), id="15.5.17 first-pos at length"),
        pytest.param("bytes=-0", Unsatisfiable(), id="14.1.2 zero suffix"),
        pytest.param("bytes=10000-10001,20000-", Unsatisfiable(), id="15.5.17 none satisfiable"),
        pytest.param(None, Full(), id="no Range"),
        pytest.param("", Full(), id="empty"),
        pytest.param("bytes=5-1", Full(), id="14.1.2 last before first"),
        pytest.param("bytes=0-1,5-4", Full(), id="one invalid spec voids all"),
        pytest.param("bytes=abc", Full(), id="not numbers"),
        pytest.param("items=0-1", Full(), id="14.2 unknown unit"),
        pytest.param("bytes 0-1", Full(), id="no equals"),
        pytest.param("bytes =0-1", Full(), id="space before equals"),
        pytest.param("bytes=", Full(), id="no specs"),
        pytest.param("bytes=,", Full(), id="only empty specs"),
        pytest.param("bytes=0 - 1", Full(), id="spaces inside a spec"),
        pytest.param("bytes=0-1;x", Full(), id="junk"),
        pytest.param("bytes=--1", Full(), id="negative suffix"),
        pytest.param("bytes=1-2-3", Full(), id="three numbers"),
        pytest.param("bytes=\u0663-\u0664", Full(), id="non-ASCII digits"),
        pytest.param("bytes=0-1, bytes=5-6", Full(), id="two Range lines joined"),
        pytest.param("bytes=" + "9" * 5000 + "-", Unsatisfiable(), id="huge first-pos"),
        pytest.param("bytes=0-" + "9" * 5000, partial((0, 9999)), id="huge last-pos"),
        pytest.param("bytes=-" + "9" * 5000, partial((0, 9999)), id="huge suffix"),
    ],
)
def test_parse_range(value: str | None, expected: RangeDecision) -> None:
    assert parse_range(value, LENGTH) == expected


def test_too_many_ranges_are_ignored() -> None:
    specs = [f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES + 1)]
    assert parse_range("bytes=" + ",".join(specs[:MAX_RANGES]), LENGTH) == partial(
        *((i * 10, i * 10 + 1) for i in range(MAX_RANGES))
    )
    assert parse_range("bytes=" + ",".join(specs), LENGTH) == Full()


def test_stacked_overlaps_cost_no_more_than_the_body() -> None:
    # CVE-2011-3192 ("Apache killer"): many overlapping ranges multiplied the response size.
    value = "bytes=" + ",".join(f"{i}-{LENGTH}" for i in range(MAX_RANGES))
    assert parse_range(value, LENGTH) == partial((0, 9999))


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("bytes=0-", Unsatisfiable(), id="no byte to start at"),
        pytest.param("bytes=-5", Full(), id="suffix of nothing is the empty whole"),
    ],
)
def test_parse_range_empty_representation(value: str, expected: RangeDecision) -> None:
    assert parse_range(value, 0) == expected


GMT = "Sun, 06 Nov 1994 08:49:37 GMT"
GMT_PLUS_1 = "Sun, 06 Nov 1994 08:49:38 GMT"


@pytest.mark.parametrize(
    "if_range, etag, last_modified, date, expected",
    [
        pytest.param(None, None, None, None, True, id="no If-Range"),
        pytest.param('"v1"', '"v1"', None, None, True, id="8.8.3.2 strong match"),
        pytest.param(' "v1" ', '"v1"', None, None, True, id="OWS"),
        pytest.param('"v1"', '"v2"', None, None, False, id="other tag"),
        pytest.param('"v1"', 'W/"v1"', None, None, False, id="8.8.3.2 stored tag weak"),
        pytest.param('W/"v1"', 'W/"v1"', None, None, False, id="13.1.5 weak If-Range"),
        pytest.param('"v1"', None, GMT, None, False, id="no stored tag"),
        pytest.param('"v1', '"v1', None, None, False, id="malformed tag"),
        pytest.param(GMT, '"v1"', GMT, None, True, id="13.1.5 date equals Last-Modified"),
        pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", None, GMT, None, True, id="5.6.7 rfc850 form"),
        pytest.param("Sun Nov  6 08:49:37 1994", None, GMT, None, True, id="5.6.7 asctime form"),
        pytest.param(GMT_PLUS_1, None, GMT, None, False, id="13.1.5 date differs"),
        pytest.param(GMT, None, None, None, False, id="no Last-Modified"),
        pytest.param("yesterday", None, GMT, None, False, id="not a date"),
        pytest.param(GMT, None, "garbage", None, False, id="stored date garbage"),
        pytest.param(GMT, None, GMT, GMT_PLUS_1, True, id="8.8.2.2 strong: Date a second later"),
        pytest.param(GMT, None, GMT, GMT, False, id="8.8.2.2 weak: Date in the same second"),
        pytest.param(GMT, None, GMT, "garbage", False, id="Date garbage"),
    ],
)
def test_if_range_allows(
    if_range: str | None, etag: str | None, last_modified: str | None, date: str | None, expected: bool
) -> None:
    assert if_range_allows(if_range, etag, last_modified, date=date) is expected


@pytest.mark.parametrize(
    "method, fields, expected",
    [
        pytest.param("GET", {"Range": "bytes=0-9"}, partial((0, 9)), id="plain range"),
        pytest.param("get", {"Range": "bytes=0-9"}, partial((0, 9)), id="method case"),
        pytest.param("HEAD", {"Range": "bytes=0-9"}, Full(), id="14.2 HEAD"),
        pytest.param("POST", {"Range": "bytes=0-9"}, Full(), id="14.2 POST"),
        pytest.param("GET", {}, Full(), id="no Range"),
        pytest.param("GET", {"If-Range": '"old"'}, Full(), id="13.1.5 If-Range alone"),
        pytest.param("GET", {"Range": "bytes=0-9", "If-Range": '"v1"'}, partial((0, 9)), id="If-Range holds"),
        pytest.param("GET", {"Range": "bytes=0-9", "If-Range": '"old"'}, Full(), id="If-Range fails"),
        pytest.param("GET", {"range": "bytes=99999-"}, Unsatisfiable(), id="416"),
    ],
)
def test_range_decision(method: str, fields: dict[str, str], expected: RangeDecision) -> None:
    decision = range_decision(method, Headers.of(fields), length=LENGTH, etag='"v1"', last_modified=GMT)
    assert decision == expected


BODY = b"0123456789abcdefghij"  # 20 bytes


def test_single_range_206() -> None:
    layout = partial_body(partial((5, 9)), len(BODY), "text/plain", "unused")
    assert layout.headers == Headers.of([("Content-Range", "bytes 5-9/20"), ("Content-Length", "5")])
    assert layout.parts == (ByteRange(5, 9),)
    assert assemble(layout, BODY) == b"56789"


def test_multipart_206_exact_bytes() -> None:
    layout = partial_body(partial((0, 2), (15, 19)), len(BODY), "text/plain", "SEP")
    expected = (
        b"--SEP\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Range: bytes 0-2/20\r\n"
        b"\r\n"
        b"012"
        b"\r\n--SEP\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Range: bytes 15-19/20\r\n"
        b"\r\n"
        b"fghij"
        b"\r\n--SEP--\r\n"
    )
    assert assemble(layout, BODY) == expected
    assert layout.headers == Headers.of(
        [("Content-Type", "multipart/byteranges; boundary=SEP"), ("Content-Length", str(len(expected)))]
    )
    # Slices stay slices, so a caller can stream them from a file.
    assert [p for p in layout.parts if isinstance(p, ByteRange)] == [(0, 2), (15, 19)]


def test_multipart_without_content_type() -> None:
    layout = partial_body(partial((0, 0), (19, 19)), len(BODY), None, "b")
    assert assemble(layout, BODY) == (
        b"--b\r\nContent-Range: bytes 0-0/20\r\n\r\n0\r\n--b\r\nContent-Range: bytes 19-19/20\r\n\r\nj\r\n--b--\r\n"
    )


def test_multipart_parses_as_mime() -> None:
    layout = partial_body(partial((0, 2), (8, 12), (18, 19)), len(BODY), "application/octet-stream", "x-1")
    ctype = layout.headers.get("Content-Type")
    raw = f"Content-Type: {ctype}\r\n\r\n".encode() + assemble(layout, BODY)
    message = email.message_from_bytes(raw, policy=email.policy.HTTP)
    parts = [(p["Content-Range"], p.get_payload(decode=True)) for p in message.iter_parts()]
    assert parts == [
        ("bytes 0-2/20", b"012"),
        ("bytes 8-12/20", b"89abc"),
        ("bytes 18-19/20", b"ij"),
    ]


@pytest.mark.parametrize("boundary", ["", "a b", "x" * 71, "é", "a\r\nb"])
def test_bad_boundary(boundary: str) -> None:
    with pytest.raises(ValueError, match="is not a multipart boundary"):
        partial_body(partial((0, 1), (5, 6)), len(BODY), None, boundary)


def test_content_range_and_416() -> None:
    assert content_range(ByteRange(100, 199), 1000) == "bytes 100-199/1000"
    assert ByteRange(100, 199).size == 100
    assert unsatisfiable_headers(1000) == Headers.of(
        [("Content-Range", "bytes */1000"), ("Content-Length", "0")]
    )


# --- properties ----------------------------------------------------------------------------------------

lengths = st.integers(min_value=0, max_value=5000)
specs = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", st.integers(0, 6000), st.integers(0, 6000)),
    st.builds(lambda a: f"{a}-", st.integers(0, 6000)),
    st.builds(lambda a: f"-{a}", st.integers(0, 6000)),
)
range_values = st.lists(specs, min_size=1, max_size=8).map(lambda s: "bytes=" + ",".join(s))


def check(decision: RangeDecision, length: int) -> None:
    if isinstance(decision, Partial):
        assert decision.ranges
        for start, end in decision.ranges:
            assert 0 <= start <= end < length
        ordered = sorted(decision.ranges)
        assert all(a.end + 1 < b.start for a, b in zip(ordered, ordered[1:], strict=False))


@given(st.text(), lengths)
def test_parse_range_never_raises_on_text(value: str, length: int) -> None:
    check(parse_range(value, length), length)


@given(st.from_regex(r"\A(bytes|Bytes|byte|)=?[0-9,\- \t]{0,30}\Z"), lengths)
def test_parse_range_never_raises_on_near_misses(value: str, length: int) -> None:
    check(parse_range(value, length), length)


@given(range_values, lengths)
def test_parse_range_well_formed(value: str, length: int) -> None:
    decision = parse_range(value, length)
    check(decision, length)
    assert (
        not isinstance(decision, Full)
        or length == 0
        or any(int(a) > int(b) for a, _, b in (s.partition("-") for s in value[6:].split(",")) if a and b)
    )


@given(range_values, st.integers(min_value=1, max_value=300))
def test_layout_length_matches_bytes(value: str, length: int) -> None:
    decision = parse_range(value, length)
    if isinstance(decision, Partial):
        body = bytes(i % 251 for i in range(length))
        layout = partial_body(decision, length, "application/octet-stream", "BOUNDARY")
        built = assemble(layout, body)
        assert len(built) == layout.content_length == int(layout.headers.get("Content-Length") or -1)
        if len(decision.ranges) == 1:
            (r,) = decision.ranges
            assert built == body[r.start : r.end + 1]
