"""`fwdproxy cache warm`: fetch a list of URLs through a running proxy so its cache holds them."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import httpx

from fwdproxy.metrics import FROM_CACHE, cache_status_params, classify


@dataclass(frozen=True, slots=True)
class Fetched:
    """What happened to one URL."""

    url: str
    status: int = 0
    """The final status (redirects followed); 0 when no response came."""
    bytes: int = 0
    """Body bytes received, as sent (not decompressed)."""
    cache_status: str = ""
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error and 0 < self.status < 400

    @property
    def outcome(self) -> str:
        """ "cached" (was already there), "stored" (is now), "not stored", or "failed"."""
        if not self.ok:
            return "failed"
        if classify(self.cache_status) in FROM_CACHE:
            return "cached"
        params = cache_status_params(self.cache_status) or {}
        return "stored" if "stored" in params else "not stored"


def read_urls(lines: Iterable[str]) -> list[str]:
    """The URLs of a list file: one per line; blank lines and ``#`` comments are skipped."""
    urls = []
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            urls.append(text)
    return urls


def check_urls(urls: Sequence[str]) -> None:
    """Raises ValueError naming the first line that is not an http(s) URL."""
    for n, url in enumerate(urls, 1):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"URL {n} ({url!r}) is not an http:// or https:// URL")


def ssl_context(cacert: str | None) -> ssl.SSLContext:
    """The system's trust store, plus the proxy's CA (intercepted HTTPS is signed with it)."""
    ctx = ssl.create_default_context()
    if cacert:
        ctx.load_verify_locations(cafile=cacert)
    return ctx


def fetch(client: httpx.Client, url: str) -> Fetched:
    """GET one URL through the client's proxy, reading and discarding the body."""
    start = time.monotonic()
    try:
        with client.stream("GET", url) as resp:
            size = sum(len(chunk) for chunk in resp.iter_raw())
            return Fetched(
                url,
                resp.status_code,
                size,
                resp.headers.get("cache-status", ""),
                seconds=time.monotonic() - start,
            )
    except httpx.HTTPError as e:
        return Fetched(url, error=f"{type(e).__name__}: {e}", seconds=time.monotonic() - start)


def warm(
    urls: Sequence[str],
    *,
    proxy: str,
    cacert: str | None,
    concurrency: int = 4,
    timeout: float = 60.0,
    progress: Callable[[Fetched], None] = lambda f: None,
) -> list[Fetched]:
    """Fetch every URL through the proxy, ``concurrency`` at a time; results in the order of ``urls``."""
    results: list[Fetched | None] = [None] * len(urls)
    with httpx.Client(
        proxy=proxy, verify=ssl_context(cacert), trust_env=False, timeout=timeout, follow_redirects=True
    ) as client:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = {pool.submit(fetch, client, url): i for i, url in enumerate(urls)}
            for future in as_completed(futures):
                fetched = future.result()
                results[futures[future]] = fetched
                progress(fetched)
    return [r for r in results if r is not None]


def summarize(results: Sequence[Fetched]) -> dict[str, Any]:
    """Counts by outcome, bytes and failures, for the summary line and --json."""
    counts = dict.fromkeys(("cached", "stored", "not stored", "failed"), 0)
    for r in results:
        counts[r.outcome] += 1
    return {
        "urls": len(results),
        **{k.replace(" ", "_"): v for k, v in counts.items()},
        "bytes": sum(r.bytes for r in results),
        "failures": [
            {"url": r.url, "status": r.status or None, "error": r.error or None} for r in results if not r.ok
        ],
        "results": [
            {
                "url": r.url,
                "status": r.status,
                "bytes": r.bytes,
                "cache_status": r.cache_status or None,
                "outcome": r.outcome,
                "seconds": round(r.seconds, 3),
            }
            for r in results
        ],
    }
