"""Response storage: a byte-sized LRU memory tier in front of a diskcache disk tier (no mitmproxy here).

Start with `TieredStore.open(cache_dir)`; see base.py for the interface and the Vary layout, disk.py
for the on-disk layout, and writer.py for how streamed bodies become visible atomically.
"""

from fwdproxy.store.base import Store, Writer
from fwdproxy.store.check import body_matches
from fwdproxy.store.codec import FORMAT_VERSION
from fwdproxy.store.disk import DISK_SIZE, INLINE_MAX, DiskStore
from fwdproxy.store.memory import MEMORY_OBJECT_MAX, MEMORY_SIZE, MemoryStore
from fwdproxy.store.record import (
    BodyFile,
    Entry,
    Outcome,
    StoreStats,
    TierStats,
    Verification,
    VerifyReport,
    is_partial_key,
    partial_key,
    variant_key,
)
from fwdproxy.store.tiered import TieredStore, TieredWriter
from fwdproxy.store.verify import verify_all
from fwdproxy.store.writer import DiskWriter

__all__ = [
    "DISK_SIZE",
    "FORMAT_VERSION",
    "INLINE_MAX",
    "MEMORY_OBJECT_MAX",
    "MEMORY_SIZE",
    "BodyFile",
    "DiskStore",
    "DiskWriter",
    "Entry",
    "MemoryStore",
    "Outcome",
    "Store",
    "StoreStats",
    "TierStats",
    "TieredStore",
    "TieredWriter",
    "Verification",
    "VerifyReport",
    "Writer",
    "body_matches",
    "is_partial_key",
    "partial_key",
    "variant_key",
    "verify_all",
]
