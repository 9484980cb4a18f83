"""The stored record format: a versioned header, the metadata as compact JSON, then a small inline body.

Layout of one record (the diskcache value column):

    b"FW" | version (1 byte) | stamp (16 bytes) | metadata length (4 bytes, big-endian) | JSON | inline body

The version comes first so a record of another version is recognised without parsing the rest; such
records read as a miss (like cachecontrol's serializer) and are left for the fwdproxy that wrote them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from fwdproxy.http_model import Headers, StoredResponse

FORMAT_VERSION = 1
MAGIC = b"FW"
HEADER = struct.Struct(">2sB16sI")
STAMP_PREFIX = 3 + 16
"""Bytes of a record that hold magic, version and stamp: all a coherence check needs to read."""
CHECKSUM = "sha256"
"""sha256 rather than blake2b: OpenSSL's SHA extensions made it twice as fast here (1.1 vs 0.5 GiB/s)."""


class Undecodable(enum.Enum):
    """Why a record could not be read."""

    OTHER_VERSION = "other-version"
    """Written by another format version: a miss, but not damage."""
    CORRUPT = "corrupt"
    """Damaged: the entry should be deleted."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A parsed record."""

    meta: StoredResponse
    stamp: bytes
    checksum: str
    """Hex digest of the whole body (algorithm CHECKSUM)."""
    inline: bytes
    """The body when it is kept in the database (small bodies); b"" when it lives in a file."""


def new_stamp() -> bytes:
    """A fresh random stamp for a newly written record."""
    return os.urandom(16)


def new_checksum() -> Any:
    """An incremental hash object for a body being streamed (hashlib has no public type for it)."""
    return hashlib.new(CHECKSUM)


_HASH = getattr(hashlib, CHECKSUM)
"""CHECKSUM's own constructor: hashlib.new looks the name up on every call (0.7 of 3.5 µs for 1 KiB)."""


def checksum(data: bytes) -> str:
    """The hex digest of a whole body."""
    digest: str = _HASH(data).hexdigest()
    return digest


def _fields(headers: Headers) -> list[list[str]]:
    return [[k, v] for k, v in headers.fields]


def encode(meta: StoredResponse, *, stamp: bytes, digest: str, inline: bytes = b"") -> bytes:
    """One record; inline is the body when it is stored in the database itself."""
    doc = {
        "url": meta.url,
        "status": meta.status,
        "reason": meta.reason,
        "headers": _fields(meta.headers),
        "request_time": meta.request_time,
        "response_time": meta.response_time,
        "body_length": meta.body_length,
        "vary_request": _fields(meta.vary_request),
        "rule": meta.rule,
        CHECKSUM: digest,
    }
    if meta.lifetime is not None:  # optional keys: records without them (older ones) still decode
        doc |= {"lifetime": meta.lifetime, "source": meta.lifetime_source, "rule_detail": meta.rule_detail}
    if meta.pieces:  # a partial entry (RFC 9111 §3.3): which bytes of how many its body holds
        doc |= {"pieces": [list(p) for p in meta.pieces], "full_length": meta.full_length}
    # ensure_ascii keeps any str (even lone surrogates from odd header bytes) round-trippable.
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return HEADER.pack(MAGIC, FORMAT_VERSION, stamp, len(text)) + text + inline


def stamp_of(prefix: bytes) -> bytes | None:
    """The stamp of a record from its first STAMP_PREFIX bytes, or None if they are not ours."""
    if len(prefix) < STAMP_PREFIX or prefix[:2] != MAGIC or prefix[2] != FORMAT_VERSION:
        return None
    return bytes(prefix[3:STAMP_PREFIX])


def _typed(doc: dict[str, Any], name: str, kind: type) -> Any:
    value = doc[name]
    # bool is an int subclass; a status of true is damage, not 1.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"{name} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _headers(doc: dict[str, Any], name: str) -> Headers:
    raw = _typed(doc, name, list)
    if not all(isinstance(f, list) and len(f) == 2 and all(isinstance(p, str) for p in f) for f in raw):
        raise ValueError(f"{name} is not a list of [name, value] pairs")
    return Headers(tuple((k, v) for k, v in raw))


def _number(doc: dict[str, Any], name: str) -> float:
    value = doc[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} is not a number")
    return float(value)


def _pieces(doc: dict[str, Any]) -> tuple[tuple[int, int], ...]:
    raw = _typed(doc, "pieces", list)
    if not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(n, int) and not isinstance(n, bool) for n in p)
        for p in raw
    ):
        raise ValueError("pieces is not a list of [start, end] pairs")
    return tuple((p[0], p[1]) for p in raw)


def decode(record: bytes) -> Decoded | Undecodable:
    """Parse a record; never raises."""
    if len(record) < HEADER.size:
        return Undecodable.CORRUPT
    magic, version, stamp, size = HEADER.unpack_from(record)
    if magic != MAGIC:
        return Undecodable.CORRUPT
    if version != FORMAT_VERSION:
        return Undecodable.OTHER_VERSION
    end = HEADER.size + size
    if end > len(record):
        return Undecodable.CORRUPT
    try:
        doc = json.loads(record[HEADER.size : end])
        if not isinstance(doc, dict):
            return Undecodable.CORRUPT
        meta = StoredResponse(
            url=_typed(doc, "url", str),
            status=_typed(doc, "status", int),
            reason=_typed(doc, "reason", str),
            headers=_headers(doc, "headers"),
            request_time=_number(doc, "request_time"),
            response_time=_number(doc, "response_time"),
            body_length=_typed(doc, "body_length", int),
            vary_request=_headers(doc, "vary_request"),
            rule=_typed(doc, "rule", str),
            lifetime=_number(doc, "lifetime") if "lifetime" in doc else None,
            lifetime_source=_typed(doc, "source", str) if "lifetime" in doc else "",
            rule_detail=_typed(doc, "rule_detail", str) if "lifetime" in doc else "",
            pieces=_pieces(doc) if "pieces" in doc else (),
            full_length=_typed(doc, "full_length", int) if "pieces" in doc else -1,
        )
        digest = _typed(doc, CHECKSUM, str)
    except (ValueError, KeyError, RecursionError):  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        return Undecodable.CORRUPT
    if meta.body_length < 0:
        return Undecodable.CORRUPT
    return Decoded(meta=meta, stamp=stamp, checksum=digest, inline=record[end:])
