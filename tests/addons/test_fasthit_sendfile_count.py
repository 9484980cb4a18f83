"""The status page's ``fast_sendfile_hits`` (addons/fasthit.py FastHits.answer): a disk hit counts there only
when some of its body went from the file to the socket by sendfile, not when the socket took nothing (or
part of the head) and the whole body was read and handed to mitmproxy's writer instead."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from mitmproxy import connection

from fwdproxy.fasthead import Head, read_head
from fwdproxy.metrics import Served, classify
from fwdproxy.store.openfiles import Sent
from fwdproxy.store.tiered import DiskMark
from fwdproxy_addons.fasthit import FastHits, _Wire

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
BODY = b"0123456789"


@dataclass
class _Store:
    sent: Sent
    sends: int = 0

    def disk_send(self, mark: DiskMark, head: bytes, out: int) -> Sent | None:
        assert head == HEAD
        self.sends += 1
        return self.sent


@dataclass
class _Service:
    store: Any
    config: object = field(default_factory=object)
    revalidating: set[str] = field(default_factory=set)


@dataclass
class _Cache:
    service: _Service


@dataclass
class _Admin:
    records: list[tuple[bool, bool]] = field(default_factory=list)

    def owns(self, host: str) -> bool:
        return False

    def record(self, served: Served, hit_key: str, *, fast: bool = False, sendfile: bool = False) -> None:
        self.records.append((fast, sendfile))


def _answer(sent: Sent) -> tuple[_Admin, _Store, object]:
    store = _Store(sent)
    service = _Service(store)
    admin = _Admin()
    hits = FastHits(cache=_Cache(service), admin=admin)
    head = read_head(b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n", None)
    assert isinstance(head, Head)
    hits.wires[id(head)] = _Wire(
        head=head,
        data=HEAD,
        status=200,
        cache_status="fwdproxy; hit",
        content_type="",
        served=Served(classify("fwdproxy; hit"), "a.test", len(BODY)),
        primary="p",
        hit_key="p",
        credentials=None,
        revalidate=False,
        since=0.0,
        until=float("inf"),
        store=store,  # type: ignore[arg-type]
        config=service.config,
        cfg=None,
        mark=None,
        disk=DiskMark("k", 0, (0, 0), "/nowhere"),
    )
    client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=1.0)
    answered = hits.answer(client, head, time.time(), lambda: 99)
    return admin, store, answered


@pytest.mark.parametrize(
    ("sent", "counted"),
    [
        (Sent(b"", len(HEAD) + len(BODY), True), True),  # all of it direct
        (Sent(BODY[4:], len(HEAD) + 4, True), True),  # part of the body direct, the rest by the writer
        (Sent(HEAD + BODY, 0, True), False),  # the socket was full: all of it by the writer
        (Sent(HEAD[5:] + BODY, 5, True), False),  # part of the head: the body all by the writer
        (Sent(BODY, len(HEAD), True), False),  # the head alone: no body byte by sendfile
    ],
)
def test_only_bodies_partly_sent_by_sendfile_count_as_sendfile_hits(sent: Sent, counted: bool) -> None:
    admin, store, answered = _answer(sent)
    assert store.sends == 1
    assert answered is sent  # what the socket did not take goes to the writer either way
    assert admin.records == [(True, counted)]
