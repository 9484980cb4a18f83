"""The cache service without mitmproxy: opening the store from Settings, driving exchanges through the store
and the in-flight table, collapsing, the whole fetch for ranges, 304 freshening, teeing and resuming."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fwdproxy.cache.exchange import Exchange
from fwdproxy.cache.filling import Held
from fwdproxy.cache.service import CacheService, held
from fwdproxy.cache.states import Action, State
from fwdproxy.config import Settings
from fwdproxy.http_model import Headers, Request, Response
from fwdproxy.inflight import Flight, Shape

URL = "http://files.example/a.whl"


@dataclass
class Notes:
    """The fields of the addon's FlowNotes the service uses (its Noted protocol)."""

    held: Held | None = None
    whole: tuple[Flight, int | None] | None = None
    background: bool = False
    shared_tried: bool = False
    shared_hit: bool = False


def settings(tmp_path: Path, **changes: Any) -> Settings:
    return dataclasses.replace(Settings(), cache_dir=str(tmp_path / "c"), **changes)


def service(tmp_path: Path, **changes: Any) -> CacheService:
    svc = CacheService()
    svc.configure(settings(tmp_path, **changes), (), {})
    return svc


def run(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(make())


def req(**fields: str) -> Request:
    return Request("GET", URL, Headers.of(fields))


def look(
    svc: CacheService, noted: Notes, request: Request | None = None, **kw: Any
) -> tuple[Exchange, Action]:
    now = time.time()
    ex = Exchange(request or req(), now)
    options: dict[str, Any] = {
        "bypass": None,
        "replay": False,
        "collapse": True,
        "may_check": True,
        "now": now,
    }
    action, entry = svc.look(ex, noted, **(options | kw))
    if action in (Action.SERVE, Action.SERVE_AND_REVALIDATE):
        assert entry is not None
        noted.held = Held(body=entry.body)  # what the addon serves
    return ex, action


def fetch(
    svc: CacheService, ex: Exchange, noted: Notes, body: bytes, status: int = 200, **fields: str
) -> tuple[Action, Action]:
    """The origin answers: the head, then (held whole, or teed chunk by chunk) the end."""
    named = {k.replace("_", "-").title().replace("Etag", "ETag"): v for k, v in fields.items()}
    headers = Headers.of({"Content-Length": str(len(body)), **named})
    resp, now = Response(status, headers, "OK"), time.time()
    mine = held(noted)
    head, copy = svc.head(ex, mine, resp, length=len(body), failed=False, now=now, response_time=now)
    if copy is not None:
        for i in range(0, len(body), 7):
            copy(body[i : i + 7])
        copy(b"")
    raw = None if copy is not None else body
    end = svc.respond(ex, mine, resp, raw=raw, expected=len(body), failed=False, now=now, response_time=now)
    svc.land(ex, mine)
    return head, end


def test_configure_opens_the_store_once_and_reopens_it_only_for_what_it_was_opened_with(
    tmp_path: Path,
) -> None:
    svc = service(tmp_path)
    first = svc.store
    assert first is not None and svc.opened is not None and svc.opened[0] == str(tmp_path / "c")
    svc.configure(settings(tmp_path, negative_ttl=5.0), (), {})
    assert svc.store is first and svc.config.negative_ttl == 5.0  # the policy changes, the store stays
    svc.configure(settings(tmp_path, memory_cache_size=2 * 1024**2), (), {})
    assert svc.store is not first and svc.store is not None
    svc.store.close()


def test_stale_on_error_covers_5xx_only_when_set_on_purpose(tmp_path: Path) -> None:
    svc = service(tmp_path, serve_stale_on_error=60.0)
    assert (svc.config.stale_if_disconnected, svc.config.serve_stale_on_error) == (60.0, 0.0)
    svc.configure(
        settings(tmp_path, serve_stale_on_error=60.0, explicit=frozenset({"serve_stale_on_error"})), (), {}
    )
    assert (svc.config.stale_if_disconnected, svc.config.serve_stale_on_error) == (60.0, 60.0)


def test_a_missing_shared_cache_ca_is_refused_before_anything_opens(tmp_path: Path) -> None:
    svc = CacheService()
    with pytest.raises(ValueError, match="--shared-cache-ca .*: no such file"):
        svc.configure(
            settings(
                tmp_path, shared_cache="redis://127.0.0.1:1/0", shared_cache_ca=str(tmp_path / "no.pem")
            ),
            (),
            {},
        )
    assert svc.store is None


def test_a_miss_is_led_stored_and_then_served(tmp_path: Path) -> None:
    async def main() -> None:
        svc = service(tmp_path)
        noted = Notes()
        ex, action = look(svc, noted)
        assert action is Action.FORWARD and ex.state is State.FORWARD
        assert noted.held is not None and noted.held.flight is svc.flights.table[ex.primary]  # it leads
        flight = noted.held.flight
        assert fetch(svc, ex, noted, b"wheel", cache_control="max-age=60") == (Action.BUFFER, Action.STORE)
        assert ex.stored and flight.done.result() is True and not svc.flights.table  # landed
        again = Notes()
        ex2, action = look(svc, again)
        assert action is Action.SERVE and again.held is not None and again.held.body == b"wheel"
        assert ex2.status().hit

    run(main)


def test_a_second_request_follows_the_leader_and_is_answered_from_what_it_stored(tmp_path: Path) -> None:
    async def main() -> None:
        svc = service(tmp_path)
        lead, follower = Notes(), Notes()
        ex1, first = look(svc, lead)
        ex2, second = look(svc, follower)
        assert (first, second) == (Action.FORWARD, Action.FOLLOW)
        leader = await svc.wait(ex2, follower)
        assert leader is not None and lead.held is not None and leader is lead.held.flight
        waiting = asyncio.ensure_future(svc.follow(ex2, leader))
        await asyncio.sleep(0)
        assert not waiting.done()  # the follower waits for the leader's response
        fetch(svc, ex1, lead, b"once", cache_control="max-age=60")
        got = await waiting
        assert isinstance(got, tuple) and got[0].body == b"once"
        assert ex2.collapsed_status(got[0].meta.status).collapsed and ex2.state is State.SERVED

    run(main)


def test_a_follower_of_a_response_nobody_may_share_goes_itself(tmp_path: Path) -> None:
    async def main() -> None:
        svc = service(tmp_path)
        lead, follower = Notes(), Notes()
        ex1, _ = look(svc, lead)
        ex2, _ = look(svc, follower)
        leader = await svc.wait(ex2, follower)
        assert leader is not None
        waiting = asyncio.ensure_future(svc.follow(ex2, leader))
        assert fetch(svc, ex1, lead, b"mine", cache_control="private")[0] is Action.PASS
        assert leader.shape.result() is Shape.NOT_SHARED and await waiting is None
        _, action = look(svc, follower, collapse=False)
        assert action is Action.FORWARD  # then asks the origin without joining again

    run(main)


def test_a_stale_entry_is_validated_and_a_304_freshens_it(tmp_path: Path) -> None:
    async def main() -> None:
        svc = service(tmp_path)
        noted = Notes()
        ex, _ = look(svc, noted)
        fetch(svc, ex, noted, b"v1", cache_control="max-age=0", etag='"e1"')
        noted = Notes()
        ex, action = look(svc, noted)
        assert action is Action.FORWARD_VALIDATING
        validators = svc.validators(ex, noted)
        assert validators is not None and validators.get("If-None-Match") == '"e1"'
        assert noted.held is not None and noted.held.body == b"v1"  # held to answer the 304 from
        mine = noted.held
        resp, now = Response(304, Headers.of({"ETag": '"e1"', "Cache-Control": "max-age=60"})), time.time()
        assert svc.head(ex, mine, resp, length=0, failed=False, now=now, response_time=now)[0] is Action.PASS
        end = svc.respond(ex, mine, resp, raw=b"", expected=None, failed=False, now=now, response_time=now)
        assert end is Action.SERVE_REFRESHED and ex.stored
        svc.land(ex, mine)
        fresh = Notes()
        assert look(svc, fresh)[1] is Action.SERVE and fresh.held is not None and fresh.held.body == b"v1"

    run(main)


def test_a_big_body_is_teed_into_the_store_and_followers_read_it_as_it_grows(tmp_path: Path) -> None:
    async def main() -> None:
        svc = service(tmp_path, stream_threshold=16)
        noted = Notes()
        ex, _ = look(svc, noted)
        assert noted.held is not None and noted.held.flight is not None
        flight = noted.held.flight
        body = bytes(range(256)) * 4
        assert fetch(svc, ex, noted, body, cache_control="max-age=60") == (Action.TEE, Action.STORE)
        assert flight.shape.result() is Shape.STREAMING and flight.meta is not None
        assert flight.progress is not None and flight.meta.body_length == len(body)
        assert ex.stored and flight.done.result() is True
        assert svc.store is not None
        entry = svc.store.get(ex.key)
        assert entry is not None and entry.meta.body_length == len(body)

    run(main)


def test_the_whole_fetch_for_a_range_leads_and_lands_when_nobody_took_it(tmp_path: Path) -> None:
    async def main() -> None:
        svc = service(tmp_path, range_fetch_whole_below=1024**2)
        noted = Notes()
        ex, action = look(svc, noted, req(Range="bytes=0-9"))
        assert action is Action.FETCH_WHOLE
        lead = svc.lead_whole(ex, noted)
        assert lead is not None and noted.held is not None and noted.held.leader is lead[0]
        flight = lead[0]
        assert svc.flights.table[ex.primary] is flight and flight.followers == 1
        whole = Notes(whole=lead)
        svc.whole_ended(ex.primary, lead, whole)  # an addon answered the whole fetch before the cache saw it
        assert flight.done.result() is False and not svc.flights.table
        svc.whole_ended(ex.primary, lead, whole)  # once only

    run(main)


def test_the_whole_fetch_taken_by_the_cache_leads_its_key(tmp_path: Path) -> None:
    async def main() -> None:
        svc = service(tmp_path, range_fetch_whole_below=1024**2)
        ranged = Notes()
        ex, _ = look(svc, ranged, req(Range="bytes=0-9"))
        lead = svc.lead_whole(ex, ranged)
        assert lead is not None
        whole = Notes(whole=lead)
        ex_whole, action = look(svc, whole)
        assert action is Action.FORWARD and whole.whole is None
        assert whole.held is not None and whole.held.flight is lead[0]
        fetch(svc, ex_whole, whole, b"0123456789abcdef", cache_control="max-age=60")
        assert lead[0].done.result() is True

    run(main)


def test_one_background_revalidation_per_key_at_a_time(tmp_path: Path) -> None:
    svc = CacheService()
    assert svc.revalidation("k") and not svc.revalidation("k")
    svc.revalidated("k")
    assert svc.revalidation("k")


def test_a_leader_whose_client_left_mid_body_resumes_for_its_followers(tmp_path: Path) -> None:
    async def main() -> None:
        svc = service(tmp_path, stream_threshold=16)
        lead, follower = Notes(), Notes()
        ex, _ = look(svc, lead)
        look(svc, follower)
        body = bytes(range(200))
        headers = Headers.of({"Content-Length": "200", "Cache-Control": "max-age=60", "ETag": '"r1"'})
        resp, now = Response(200, headers, "OK"), time.time()
        mine = held(lead)
        action, copy = svc.head(ex, mine, resp, length=200, failed=False, now=now, response_time=now)
        assert action is Action.TEE and copy is not None
        copy(body[:80])
        assert svc.failed(ex, mine, client_left=True) is Action.RESUME
        assert (ex.resume_from, ex.if_range) == (80, '"r1"')
        rest = Response(206, Headers.of({"Content-Range": "bytes 80-199/200"}), "Partial Content")
        more = svc.resuming(ex, mine, rest)
        assert more is not None
        more(body[80:])
        more(b"")
        svc.resumed(ex, mine, ok=True)
        assert ex.stored
        svc.land(ex, mine)
        assert svc.store is not None
        entry = svc.store.get(ex.key)
        assert entry is not None and entry.meta.body_length == 200

    run(main)


def test_a_wrong_continuation_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    async def main() -> None:
        svc = service(tmp_path, stream_threshold=16)
        lead, follower = Notes(), Notes()
        ex, _ = look(svc, lead)
        look(svc, follower)
        headers = Headers.of({"Content-Length": "200", "Cache-Control": "max-age=60", "ETag": '"r1"'})
        now = time.time()
        mine = held(lead)
        _, copy = svc.head(
            ex, mine, Response(200, headers), length=200, failed=False, now=now, response_time=now
        )
        assert copy is not None
        copy(bytes(80))
        assert svc.failed(ex, mine, client_left=True) is Action.RESUME
        assert svc.resuming(ex, mine, Response(200, Headers.of({}))) is None  # the whole body again: no
        svc.resumed(ex, mine, ok=True)
        assert not ex.stored
        flight = mine.flight
        svc.land(ex, mine)
        assert flight is not None and flight.done.result() is False

    run(main)
