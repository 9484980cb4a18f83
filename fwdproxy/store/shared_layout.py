"""How the shared tier lays entries out in Redis: key names, the metadata value, chunks, and the URL.

One primary key (a URL) is one hash, ``fwd:m:{<sha256 of the primary>}``, whose fields are the variant keys
(RFC 9111 §4.1) and whose values are ``SharedMeta`` records: the codec record (metadata and the body's
sha256, with the sha256 of each chunk where the codec keeps an inline body) behind a small header naming the
chunk size. The chunk digests let a reader check each chunk before any of its bytes go to a client. A body is stored once per digest, whatever URL
reached it, as ``fwd:c:{<digest>}:<n>`` values of CHUNK bytes (the last one shorter). The ``{…}`` hash tags
keep one body's chunks in one Cluster slot, so they pipeline to one node. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from fwdproxy.http_model import StoredResponse
from fwdproxy.store import codec

PREFIX = "fwd:"
CHUNK = 1024 * 1024
"""1 MiB values: big enough that a 256 MiB body is 256 round trips at most (pipelined), small enough that
Redis's single thread is never held long by one value (its docs advise against values of many MiB)."""
TTL = 30 * 86400
"""Seconds every key lives at most, so `volatile-lru` servers can evict ours too; LRU does the rest."""
CHANNEL = PREFIX + "invalidate"
"""Pub/sub channel on which a node tells the others which primary keys (or variant keys) went."""
DIGEST_SIZE = 32
"""Bytes of one chunk's raw sha256."""
MAGIC = b"FS"
VERSION = 1
_HEADER = struct.Struct(">2sBI")


def meta_key(primary: str) -> str:
    """The hash holding every variant of one primary key."""
    return f"{PREFIX}m:{{{hashlib.sha256(primary.encode('utf-8', 'surrogatepass')).hexdigest()}}}"


def lock_key(primary: str) -> str:
    """The cross-node fetch lock of one primary key (SET NX PX)."""
    return f"{PREFIX}l:{{{hashlib.sha256(primary.encode('utf-8', 'surrogatepass')).hexdigest()}}}"


def chunk_key(digest: str, index: int) -> str:
    """Chunk ``index`` of the body whose sha256 is ``digest``."""
    return f"{PREFIX}c:{{{digest}}}:{index}"


def chunk_count(length: int, chunk: int = CHUNK) -> int:
    """How many chunks a body of ``length`` bytes takes (an empty body takes none)."""
    return (length + chunk - 1) // chunk


@dataclass(frozen=True, slots=True)
class SharedMeta:
    """One variant as the shared tier holds it."""

    meta: StoredResponse
    digest: str
    """sha256 of the whole body (hex): names its chunks and checks them on read."""
    chunk: int = CHUNK
    """Bytes per chunk (the last one is shorter)."""
    chunk_digests: tuple[bytes, ...] = ()
    """The raw sha256 of each chunk, in order (32 bytes each)."""


def encode_meta(entry: SharedMeta) -> bytes:
    """The hash field value of one variant."""
    inline = b"".join(entry.chunk_digests)
    record = codec.encode(entry.meta, stamp=codec.new_stamp(), digest=entry.digest, inline=inline)
    return _HEADER.pack(MAGIC, VERSION, entry.chunk) + record


def decode_meta(value: bytes) -> SharedMeta | None:
    """A variant read back; None for damage or another version (both read as a miss)."""
    if len(value) < _HEADER.size:
        return None
    magic, version, chunk = _HEADER.unpack_from(value)
    if magic != MAGIC or version != VERSION or chunk <= 0:
        return None
    decoded = codec.decode(value[_HEADER.size :])
    if not isinstance(decoded, codec.Decoded) or len(decoded.checksum) != 64:
        return None
    count = chunk_count(decoded.meta.body_length, chunk)
    if len(decoded.inline) != count * DIGEST_SIZE:
        return None
    digests = tuple(decoded.inline[i : i + DIGEST_SIZE] for i in range(0, len(decoded.inline), DIGEST_SIZE))
    return SharedMeta(decoded.meta, decoded.checksum, chunk, digests)


@dataclass(frozen=True, slots=True)
class SharedUrl:
    """--shared-cache parsed: where the servers are and how to reach them."""

    nodes: tuple[tuple[str, int], ...]
    cluster: bool = False
    tls: bool = False
    db: int = 0
    username: str | None = None
    password: str | None = None

    def redacted(self) -> str:
        """The URL without its password, for logs and the status page."""
        scheme = ("rediss" if self.tls else "redis") + ("+cluster" if self.cluster else "")
        user = f"{self.username or ''}:***@" if self.password else ""
        hosts = ",".join(f"{h}:{p}" for h, p in self.nodes)
        return f"{scheme}://{user}{hosts}" + ("" if self.cluster else f"/{self.db}")


SCHEMES = {"redis": (False, False), "rediss": (False, True), "redis+cluster": (True, False)}
SCHEMES["rediss+cluster"] = (True, True)


def parse_url(url: str) -> SharedUrl:
    """Parse ``redis://[user:password@]host:port/db``, ``rediss://…`` or ``redis+cluster://h:p[,h:p…]``.

    Raises:
        ValueError: says what was given and what is expected.
    """
    example = "try e.g. redis://127.0.0.1:6379/0 or redis+cluster://10.0.0.1:7000,10.0.0.2:7000"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError(f"{url!r} is not a redis://, rediss:// or redis+cluster:// URL; {example}")
    cluster, tls = SCHEMES[scheme.lower()]
    netloc, _, path = rest.partition("/")
    creds, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = creds.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        parsed = urlsplit(f"//{part}")
        try:
            port = parsed.port or 6379
        except ValueError:
            raise ValueError(f"{url!r}: {part!r} is not host:port; {example}") from None
        if not parsed.hostname:
            raise ValueError(f"{url!r}: {part!r} has no host; {example}")
        nodes.append((parsed.hostname, port))
    if len(nodes) > 1 and not cluster:
        raise ValueError(f"{url!r} names several servers: use redis+cluster:// for a Redis Cluster")
    db = 0
    if path.strip("/"):
        if cluster or not path.strip("/").isdigit():
            raise ValueError(f"{url!r}: the database is a number (and a Cluster has only 0); {example}")
        db = int(path.strip("/"))
    return SharedUrl(tuple(nodes), cluster, tls, db, username, password)
