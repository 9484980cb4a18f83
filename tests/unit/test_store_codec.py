"""The stored record format: round trips, versions, and damage that must read as a miss."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwdproxy.http_model import Headers, StoredResponse
from fwdproxy.store import codec
from fwdproxy.store.codec import Decoded, Undecodable
from fwdproxy.store.record import variant_key

STAMP = bytes(range(16))
META = StoredResponse(
    url="https://example.org/a?b=c",
    status=200,
    reason="OK",
    headers=Headers.of([("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]),
    request_time=1700000000.25,
    response_time=1700000000.5,
    body_length=5,
    vary_request=Headers.of({"Accept-Encoding": "gzip"}),
    rule="ci",
)


def record(**doc_changes: object) -> bytes:
    """A version-1 record whose JSON was edited."""
    good = codec.encode(META, stamp=STAMP, digest="00")
    size = codec.HEADER.unpack_from(good)[3]
    doc = json.loads(good[codec.HEADER.size : codec.HEADER.size + size])
    doc.update(doc_changes)
    text = json.dumps(doc).encode()
    return codec.HEADER.pack(codec.MAGIC, 1, STAMP, len(text)) + text


def test_round_trip_keeps_every_field_and_the_inline_body() -> None:
    decoded = codec.decode(codec.encode(META, stamp=STAMP, digest=codec.checksum(b"hello"), inline=b"hello"))
    assert decoded == Decoded(meta=META, stamp=STAMP, checksum=codec.checksum(b"hello"), inline=b"hello")


def test_record_is_compact_json_after_a_fixed_header() -> None:
    blob = codec.encode(META, stamp=STAMP, digest="ab")
    assert blob[:3] == b"FW\x01"
    assert b'"status":200' in blob and b": " not in blob


headers = st.lists(st.tuples(st.text(), st.text()), max_size=5).map(lambda f: Headers(tuple(f)))


@given(
    url=st.text(),
    status=st.integers(0, 999),
    reason=st.text(),
    headers=headers,
    times=st.tuples(st.floats(allow_nan=False), st.floats(allow_nan=False)),
    length=st.integers(0, 2**62),
    vary=headers,
    inline=st.binary(max_size=64),
)
def test_round_trip_property(
    url: str,
    status: int,
    reason: str,
    headers: Headers,
    times: tuple[float, float],
    length: int,
    vary: Headers,
    inline: bytes,
) -> None:
    meta = StoredResponse(url, status, reason, headers, times[0], times[1], length, vary)
    decoded = codec.decode(codec.encode(meta, stamp=STAMP, digest="d", inline=inline))
    assert isinstance(decoded, Decoded)
    assert (decoded.meta, decoded.inline) == (meta, inline)


@given(st.binary())
def test_decode_never_raises_on_arbitrary_bytes(blob: bytes) -> None:
    assert codec.decode(blob) is not None


@given(st.binary())
def test_decode_never_raises_on_a_valid_header_before_garbage(garbage: bytes) -> None:
    codec.decode(codec.HEADER.pack(codec.MAGIC, 1, STAMP, len(garbage)) + garbage)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_other_versions_are_recognised_not_parsed(version: int) -> None:
    blob = codec.HEADER.pack(codec.MAGIC, version, STAMP, 3) + b"???"
    assert codec.decode(blob) is Undecodable.OTHER_VERSION
    assert codec.stamp_of(blob) is None


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"FW\x01", id="short header"),
        pytest.param(b"XX" + codec.encode(META, stamp=STAMP, digest="d")[2:], id="wrong magic"),
        pytest.param(codec.encode(META, stamp=STAMP, digest="d")[:40], id="truncated json"),
        pytest.param(codec.HEADER.pack(codec.MAGIC, 1, STAMP, 2) + b"[]", id="json not an object"),
        pytest.param(codec.HEADER.pack(codec.MAGIC, 1, STAMP, 2) + b"\xff\xfe", id="not utf-8"),
        pytest.param(record(status=None), id="status null"),
        pytest.param(record(status=True), id="status bool"),
        pytest.param(record(body_length=-1), id="negative length"),
        pytest.param(record(body_length=1.5), id="fractional length"),
        pytest.param(record(headers=[["a"]]), id="header not a pair"),
        pytest.param(record(headers={"a": "b"}), id="headers not a list"),
        pytest.param(record(request_time="now"), id="time not a number"),
        pytest.param(record(sha256=7), id="checksum not a string"),
    ],
)
def test_damage_is_corrupt_not_an_exception(blob: bytes) -> None:
    assert codec.decode(blob) is Undecodable.CORRUPT


def test_missing_field_is_corrupt() -> None:
    good = codec.encode(META, stamp=STAMP, digest="d")
    text = good[codec.HEADER.size :].replace(b'"rule":"ci",', b"")
    assert codec.decode(codec.HEADER.pack(codec.MAGIC, 1, STAMP, len(text)) + text) is Undecodable.CORRUPT


def test_stamp_of_reads_only_the_prefix() -> None:
    blob = codec.encode(META, stamp=STAMP, digest="d")
    assert codec.stamp_of(blob[: codec.STAMP_PREFIX]) == STAMP
    assert codec.stamp_of(blob[:5]) is None


def test_checksum_is_sha256_hex() -> None:
    assert codec.checksum(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    hasher = codec.new_checksum()
    hasher.update(b"he")
    hasher.update(b"llo")
    assert hasher.hexdigest() == codec.checksum(b"hello")


@pytest.mark.parametrize(
    "primary, secondary, expected",
    [
        pytest.param("GET http://a/", "", "GET http://a/\0", id="4.1 no Vary"),
        pytest.param(
            "GET http://a/", "accept-encoding=gzip", "GET http://a/\0accept-encoding=gzip", id="4.1"
        ),
    ],
)
def test_variant_key(primary: str, secondary: str, expected: str) -> None:
    assert variant_key(primary, secondary) == expected


def test_variant_key_refuses_a_primary_holding_nul() -> None:
    with pytest.raises(ValueError, match="normalised URL"):
        variant_key("GET http://a/\0x", "")


def test_the_recorded_lifetime_round_trips() -> None:
    meta = dataclasses.replace(
        META, lifetime=31536000.0, lifetime_source="none", rule_detail="rule-immutable"
    )
    decoded = codec.decode(codec.encode(meta, stamp=STAMP, digest="00"))
    assert isinstance(decoded, Decoded) and decoded.meta == meta


def test_a_record_without_a_lifetime_still_decodes() -> None:
    """Entries written before lifetimes were recorded (same format version) are read, not dropped."""
    blob = codec.encode(META, stamp=STAMP, digest="00")
    assert b'"lifetime"' not in blob
    decoded = codec.decode(blob)
    assert isinstance(decoded, Decoded) and decoded.meta.lifetime is None and decoded.meta == META


def test_a_damaged_lifetime_is_corrupt() -> None:
    assert codec.decode(record(lifetime="soon", source="none", rule_detail="")) is Undecodable.CORRUPT
    assert codec.decode(record(lifetime=5, source=3, rule_detail="")) is Undecodable.CORRUPT
