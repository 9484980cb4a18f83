"""A partial entry's body read whole (RFC 9111 §3.3 pieces are merged in memory), checked like any body."""

from __future__ import annotations

import os

from fwdproxy.store import codec
from fwdproxy.store.record import BodyFile, Entry


def whole_body(entry: Entry) -> bytes | None:
    """The entry's body as bytes: in memory already, or read from its file and checked against its checksum
    (issue 16: a damaged body is never used); None when the file is short, unreadable or damaged."""
    body = entry.body
    if isinstance(body, bytes):
        return body
    return _read(body)


def _read(body: BodyFile) -> bytes | None:
    try:
        with body:
            data = os.pread(body.fileno(), body.length, 0) if body.length else b""
    except OSError:
        return None
    if len(data) != body.length or (body.digest and codec.checksum(data) != body.digest):
        return None
    return data
