"""`fwdproxy cache ls/show` of a partial entry (RFC 9111 §3.3): shown as partial, with the ranges it holds."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from fwdproxy import cache
from fwdproxy.cache import partial
from fwdproxy.cli import main
from fwdproxy.http_model import Headers, Request, Response
from fwdproxy.store import TieredStore, partial_key, variant_key

URL = "http://files.example/big.whl"


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(["cache", *args])
    return code, capsys.readouterr().out


def store_pieces(directory: Path) -> None:
    now = time.time()
    headers = Headers.of(
        [("Cache-Control", "max-age=600"), ("ETag", '"e1"'), ("Content-Range", "bytes 0-9/100")]
    )
    meta = partial.record(
        Request("GET", URL, Headers.of([("Range", "bytes=0-9")])),
        Response(206, headers),
        100,
        request_time=now,
        response_time=now,
        config=cache.CacheConfig(),
    )
    body = bytes(range(10)) + bytes(range(50, 60))
    store = TieredStore.open(directory)
    store.put(
        partial_key(cache.primary_key("GET", URL)),
        replace(meta, pieces=((0, 9), (50, 59)), body_length=20),
        body,
    )
    store.close()


def test_ls_shows_a_partial_entry_with_its_ranges(tmp_path: Path, capsys) -> None:
    store_pieces(tmp_path)
    code, out = run(capsys, "ls", "--json", "--cache-dir", str(tmp_path))
    (row,) = json.loads(out)
    assert code == 0 and row["url"] == URL and row["status"] == 206 and row["size"] == 20
    assert row["partial"] == {"pieces": [[0, 9], [50, 59]], "length": 100}
    code, out = run(capsys, "ls", "--cache-dir", str(tmp_path))
    assert code == 0 and "partial: bytes 0-9, 50-59 of 100" in out


def test_show_explains_a_partial_entry(tmp_path: Path, capsys) -> None:
    store_pieces(tmp_path)
    code, out = run(capsys, "show", "--json", "--cache-dir", str(tmp_path), URL)
    (entry,) = json.loads(out)
    assert code == 0 and entry["partial"]["pieces"] == [[0, 9], [50, 59]]
    text = " ".join(entry["explanation"])
    assert "holds bytes 0-9, 50-59 of 100" in text and "a hit" not in text
    code, out = run(capsys, "show", "--cache-dir", str(tmp_path), URL)
    assert code == 0 and "partial: bytes 0-9, 50-59 of 100" in out


def test_a_complete_entry_is_not_partial(tmp_path: Path, capsys) -> None:
    store = TieredStore.open(tmp_path)
    now = time.time()
    meta = cache.record_lifetime(
        partial.complete(
            replace(
                partial.record(
                    Request("GET", URL, Headers.of([("Range", "bytes=0-9")])),
                    Response(206, Headers.of([("Cache-Control", "max-age=600"), ("ETag", '"e1"')])),
                    10,
                    request_time=now,
                    response_time=now,
                    config=cache.CacheConfig(),
                ),
                pieces=((0, 9),),
                body_length=10,
            ),
            cache.CacheConfig(),
        ),
        cache.CacheConfig(),
    )
    store.put(variant_key(cache.primary_key("GET", URL), ""), meta, bytes(10))
    store.close()
    _, out = run(capsys, "ls", "--json", "--cache-dir", str(tmp_path))
    (row,) = json.loads(out)
    assert row["partial"] is None and row["status"] == 200 and row["size"] == 10
