"""The storage interface the cache uses: get, a streaming writer, update, delete, variants, iterate.

Keys are strings the caller computes (fwdproxy.cache.key). Several responses per URL (RFC 9111 §4.1,
Vary) are stored under composite keys, `variant_key(primary, secondary)` = primary + "\\0" + secondary;
`variants(primary)` lists them all (with their metadata, so the caller can match the stored request
headers that Vary names against a new request), `get(variant)` fetches one, and `purge(primary)`
removes them all (§4.4). No index record is kept, so nothing can fall out of step with the entries:
the listing is one indexed range query on the disk tier.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from fwdproxy.http_model import StoredResponse
from fwdproxy.store.record import Entry, Outcome, StoreStats, Verification


class Writer(Protocol):
    """Streams one body into a store: write(chunk)…, then commit(meta) or abort(); never raises."""

    @property
    def written(self) -> int: ...

    @property
    def temp_path(self) -> str | None: ...

    @property
    def failure(self) -> Outcome | None: ...

    def write(self, chunk: bytes) -> bool: ...

    def commit(self, meta: StoredResponse) -> Outcome: ...

    def abort(self) -> None: ...


class Store(Protocol):
    """What DiskStore and TieredStore both offer; every method turns storage faults into misses."""

    def get(self, key: str) -> Entry | None: ...

    def writer(self, key: str, *, max_length: int | None = None) -> Writer: ...

    def put(self, key: str, meta: StoredResponse, body: bytes) -> Outcome: ...

    def update(self, key: str, meta: StoredResponse) -> bytes | None: ...

    def delete(self, key: str) -> bool: ...

    def purge(self, primary: str) -> int: ...

    def variants(self, primary: str) -> list[tuple[str, StoredResponse]]: ...

    def iterate(self) -> Iterator[tuple[str, StoredResponse]]: ...

    def verify(self, key: str) -> Verification: ...

    def stats(self) -> StoreStats: ...

    def check(self) -> bool: ...

    def close(self) -> None: ...
