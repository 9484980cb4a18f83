"""Hashing a big body file before it is served: at disk speed, from the very descriptor that will be sent."""

from __future__ import annotations

import os

from fwdproxy.store import codec
from fwdproxy.store.record import BodyFile

BLOCK = 8 * 2**20
"""Bytes read per pread: hashlib releases the GIL for buffers this big, so the event loop keeps running."""


def body_matches(body: BodyFile, block: int = BLOCK) -> bool | None:
    """Whether the file holds exactly ``body.length`` bytes hashing to ``body.digest``; None on a read error.

    Reads with pread through the open descriptor (its offset stays 0 for the sender), so the check is about
    the inode that is served, whatever was renamed over its path meanwhile. Meant for a worker thread."""
    hasher = codec.new_checksum()
    buffer = bytearray(min(block, max(body.length, 1)))
    view = memoryview(buffer)
    fd = body.fileno()
    offset = 0
    try:
        while offset < body.length:
            got = os.preadv(fd, [view[: min(block, body.length - offset)]], offset)
            if got == 0:
                return False  # shorter than its record says
            hasher.update(view[:got])
            offset += got
        extra = os.pread(fd, 1, offset)
    except OSError:
        return None
    return not extra and hasher.hexdigest() == body.digest
