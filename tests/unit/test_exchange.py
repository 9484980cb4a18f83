"""The cache exchange as a table: inputs, then the actions and states it goes through (no mitmproxy)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.directives import format_http_date
from fwdproxy.cache.exchange import TOO_BIG_FOR_DISK, Exchange, IllegalStep, hit
from fwdproxy.cache.states import ACTION_STATE, MOVES, Action, Fleet, Found, Joined, Limits, Role, State
from fwdproxy.cache.status import Fwd, render
from fwdproxy.http_model import Headers, Request, Response, StoredResponse

NOW = 1_700_000_000.0
URL = "http://files.example/a.whl"
KEY = "GET " + URL  # what the listing names the entry; the exchange only compares it
LIMITS = Limits(max_object=1000, stream_threshold=100, fetch_whole_below=500)


def stored(
    cache_control: str, *, resident: float = 0, etag: str = '"v1"', length: int = 10
) -> StoredResponse:
    received = NOW - resident
    headers = Headers.of(
        [("Date", format_http_date(received)), ("Cache-Control", cache_control), ("ETag", etag)]
    )
    return StoredResponse(URL, 200, "OK", headers, received, received, length, Headers.of([]))


FRESH = stored("max-age=60", resident=10)
STALE = stored("max-age=60", resident=100)
SWR = stored("max-age=60, stale-while-revalidate=100", resident=100)
NO_STALE = stored("max-age=60, must-revalidate", resident=100)
ON_ERROR = stored("max-age=60, stale-if-error=1000", resident=100)


def request(method: str = "GET", **fields: str) -> Request:
    return Request(method, URL, Headers.of([(k.replace("_", "-"), v) for k, v in fields.items()]))


def response(status: int = 200, **fields: str) -> Response:
    return Response(status, Headers.of([(k.replace("_", "-"), v) for k, v in fields.items()]), "")


@dataclass
class Row:
    """One walk through the machine: the request and what it meets; the actions it must answer with."""

    req: Request = field(default_factory=request)
    listing: tuple[StoredResponse, ...] = ()
    found: tuple[Found, ...] = ()
    """What each READ gives, in order."""
    joined: Joined = Joined.LEAD
    in_flight: bool = False
    background: bool = False
    bypass: str | None = None
    config: CacheConfig = field(default_factory=CacheConfig)
    fleet: Fleet = Fleet.OFF


def walk(row: Row) -> tuple[Exchange, list[Action]]:
    """Drive the request side the way addons/cache.py does, recording every action."""
    ex = Exchange(row.req, NOW)
    actions = [ex.begin(bypass=row.bypass, offline=row.config.offline)]
    if actions[-1] is Action.LOOKUP:
        actions.append(
            ex.looked_up(
                [(KEY + str(i), m) for i, m in enumerate(row.listing)],
                now=NOW,
                config=row.config,
                in_flight=row.in_flight,
                background=row.background,
                fetch_whole_below=LIMITS.fetch_whole_below,
                fleet=row.fleet,
            )
        )
    found = list(row.found)
    while actions[-1] in (Action.READ, Action.JOIN):
        if actions[-1] is Action.READ:
            actions.append(ex.read(found.pop(0)))
        else:
            actions.append(ex.joined(row.joined))
    assert not found, "every Found was read"
    return ex, actions


A = Action
S = State
OFFLINE = CacheConfig(offline=True)

REQUEST_SIDE = [
    pytest.param(
        Row(listing=(FRESH,), found=(Found.ENTRY,)), [A.LOOKUP, A.READ, A.SERVE], S.SERVED, id="fresh hit"
    ),
    pytest.param(Row(), [A.LOOKUP, A.JOIN, A.FORWARD], S.FORWARD, id="miss leads its key"),
    pytest.param(
        Row(joined=Joined.FOLLOW), [A.LOOKUP, A.JOIN, A.FOLLOW], S.FOLLOW, id="miss follows a leader"
    ),
    pytest.param(
        Row(joined=Joined.REMOTE),
        [A.LOOKUP, A.JOIN, A.WAIT_REMOTE],
        S.FOLLOW,
        id="miss: another process leads",
    ),
    pytest.param(
        Row(listing=(FRESH,), found=(Found.PENDING,)),
        [A.LOOKUP, A.READ, A.AWAIT_CHECK],
        S.CHECK,
        id="hit on an unchecked body file waits",
    ),
    pytest.param(
        Row(listing=(FRESH,), found=(Found.NONE,)),
        [A.LOOKUP, A.READ, A.FORWARD],
        S.FORWARD,
        id="entry vanished: a miss that does not collapse",
    ),
    pytest.param(
        Row(listing=(STALE,), found=(Found.ENTRY,)),
        [A.LOOKUP, A.READ, A.JOIN, A.FORWARD_VALIDATING],
        S.FORWARD,
        id="stale: body checked, then validators",
    ),
    pytest.param(
        Row(listing=(STALE,), found=(Found.PENDING,)),
        [A.LOOKUP, A.READ, A.AWAIT_CHECK],
        S.CHECK,
        id="stale with an unchecked body waits before validating",
    ),
    pytest.param(
        Row(listing=(SWR,), found=(Found.ENTRY,)),
        [A.LOOKUP, A.READ, A.SERVE_AND_REVALIDATE],
        S.SERVED,
        id="stale-while-revalidate",
    ),
    pytest.param(
        Row(listing=(SWR,), found=(Found.ENTRY,), background=True),
        [A.LOOKUP, A.READ, A.FORWARD_VALIDATING],
        S.FORWARD,
        id="the background revalidation validates, never collapses",
    ),
    pytest.param(Row(req=request("POST")), [A.FORWARD], S.FORWARD, id="POST forwards unlooked"),
    pytest.param(Row(req=request("POST"), config=OFFLINE), [A.REJECT], S.SERVED, id="POST offline: 504"),
    pytest.param(Row(bypass="body"), [A.FORWARD], S.FORWARD, id="bypass forwards unlooked"),
    pytest.param(Row(config=OFFLINE), [A.LOOKUP, A.REJECT], S.SERVED, id="offline miss: 504"),
    pytest.param(
        Row(req=request(Cache_Control="only-if-cached")),
        [A.LOOKUP, A.REJECT],
        S.SERVED,
        id="only-if-cached miss",
    ),
    pytest.param(
        Row(req=request(Cache_Control="no-store"), listing=(FRESH,)),
        [A.LOOKUP, A.FORWARD],
        S.FORWARD,
        id="client no-store: alone",
    ),
    pytest.param(
        Row(req=request(Range="bytes=0-9")),
        [A.LOOKUP, A.FETCH_WHOLE],
        S.FOLLOW,
        id="range on a miss: whole fetch",
    ),
    pytest.param(
        Row(req=request(Range="bytes=0-9"), in_flight=True, joined=Joined.FOLLOW),
        [A.LOOKUP, A.JOIN, A.FOLLOW],
        S.FOLLOW,
        id="range follows a flight",
    ),
    pytest.param(Row(req=request("HEAD")), [A.LOOKUP, A.FORWARD], S.FORWARD, id="HEAD never collapses"),
    # Issue 20: the fleet's shared tier, looked in once on a local miss.
    pytest.param(
        Row(fleet=Fleet.TRY), [A.LOOKUP, A.LOOKUP_SHARED], S.SHARED, id="shared: a miss looks there"
    ),
    pytest.param(
        Row(fleet=Fleet.TRIED), [A.LOOKUP, A.JOIN, A.FORWARD], S.FORWARD, id="shared: tried, then leads"
    ),
    pytest.param(
        Row(listing=(FRESH,), found=(Found.ENTRY,), fleet=Fleet.TRY),
        [A.LOOKUP, A.READ, A.SERVE],
        S.SERVED,
        id="shared: a local hit never asks",
    ),
    pytest.param(
        Row(listing=(STALE,), found=(Found.ENTRY,), fleet=Fleet.TRY),
        [A.LOOKUP, A.READ, A.JOIN, A.FORWARD_VALIDATING],
        S.FORWARD,
        id="shared: a stale entry is validated, not looked up",
    ),
    pytest.param(
        Row(req=request(Range="bytes=0-9"), fleet=Fleet.TRY),
        [A.LOOKUP, A.LOOKUP_SHARED],
        S.SHARED,
        id="shared: a range looks there too",
    ),
    pytest.param(
        Row(req=request("HEAD"), fleet=Fleet.TRY), [A.LOOKUP, A.FORWARD], S.FORWARD, id="shared: not for HEAD"
    ),
    pytest.param(
        Row(fleet=Fleet.TRY, background=True),
        [A.LOOKUP, A.FORWARD],
        S.FORWARD,
        id="shared: not for our background revalidation",
    ),
    pytest.param(
        Row(fleet=Fleet.TRY, config=OFFLINE), [A.LOOKUP, A.REJECT], S.SERVED, id="shared: offline rejects"
    ),
]


@pytest.mark.parametrize("row, actions, state", REQUEST_SIDE)
def test_request_side(row: Row, actions: list[Action], state: State) -> None:
    ex, got = walk(row)
    assert got == actions
    assert ex.state is state


def test_status_and_reason() -> None:
    ex, _ = walk(Row(listing=(FRESH,), found=(Found.ENTRY,)))
    assert render(ex.status()).startswith("fwdproxy; hit")
    ex, _ = walk(Row(config=OFFLINE))
    assert ex.reason == "offline"
    assert render(ex.reject_status()) == "fwdproxy; fwd=uri-miss; detail=offline"
    ex, _ = walk(Row(listing=(FRESH,), found=(Found.NONE,)))
    assert ex.decision.detail == "entry-vanished"
    assert ex.decision.fwd is Fwd.MISS


def test_a_hit_copied_from_the_shared_tier_says_so() -> None:
    ex, _ = walk(Row(listing=(FRESH,), found=(Found.ENTRY,), fleet=Fleet.COPIED))
    assert render(ex.status()).startswith("fwdproxy; hit")
    assert render(ex.status()).endswith("detail=shared")
    ex, _ = walk(Row(listing=(FRESH,), found=(Found.ENTRY,), fleet=Fleet.TRIED))
    assert "shared" not in render(ex.status())


def test_our_whole_fetch_never_looks_in_the_shared_tier() -> None:
    ex = Exchange(request(), NOW)
    ex.begin(bypass=None, offline=False)
    action = ex.looked_up([], now=NOW, config=CacheConfig(), in_flight=False, whole=True, fleet=Fleet.TRY)
    assert action is Action.FORWARD


def in_shared(req: Request) -> Exchange:
    ex, actions = walk(Row(req=req, fleet=Fleet.TRY))
    assert actions[-1] is Action.LOOKUP_SHARED
    return ex


def test_shared_choose_picks_the_variant_this_request_uses() -> None:
    ex = in_shared(request())
    listing = [("other", STALE), ("fresh", FRESH)]
    assert ex.choose(listing, now=NOW, config=CacheConfig()) == "fresh"
    assert ex.choose([], now=NOW, config=CacheConfig()) == ""


def test_a_fresh_shared_entry_streams_while_it_is_copied_in() -> None:
    ex = in_shared(request())
    assert ex.streaming(FRESH, now=NOW, config=CacheConfig()) is Action.SERVE
    assert ex.state is State.SERVED
    assert render(ex.status()).startswith("fwdproxy; hit")
    assert render(ex.status()).endswith("detail=shared")


@pytest.mark.parametrize(
    "req, entry",
    [
        pytest.param(request(Range="bytes=0-3"), FRESH, id="a range"),
        pytest.param(request(If_None_Match='"v1"'), FRESH, id="a validator that matches"),
        pytest.param(request(), STALE, id="stale"),
    ],
)
def test_a_shared_entry_that_does_not_answer_whole_waits_for_the_copy(
    req: Request, entry: StoredResponse
) -> None:
    ex = in_shared(req)
    assert ex.streaming(entry, now=NOW, config=CacheConfig()) is Action.AWAIT_SHARED
    assert ex.state is State.SHARED


def test_validators_come_from_the_held_entry() -> None:
    ex, _ = walk(Row(listing=(STALE,), found=(Found.ENTRY,)))
    assert ex.hold(STALE).get("if-none-match") == '"v1"'
    assert ex.candidates == ((KEY + "0", STALE),)


def forwarded(row: Row) -> Exchange:
    ex, actions = walk(row)
    assert ex.state is State.FORWARD, actions
    return ex


def head(ex: Exchange, resp: Response, length: int | None, *, failed: bool = False) -> Action:
    return ex.head(resp, length=length, failed=failed, now=NOW, config=CacheConfig(), limits=LIMITS)


CACHEABLE = {"Cache_Control": "max-age=60"}

RESPONSE_HEAD = [
    pytest.param(response(200, **CACHEABLE), 10, A.BUFFER, (False, True), id="small storable: held whole"),
    pytest.param(response(200, **CACHEABLE), 200, A.TEE, (False, False), id="big storable: teed"),
    pytest.param(response(200, **CACHEABLE), None, A.TEE, (False, False), id="unknown length: teed"),
    pytest.param(response(200, **CACHEABLE), 2000, A.PASS, (True, False), id="over max object: passes"),
    pytest.param(
        response(200, Cache_Control="no-store"), 200, A.PASS, (True, False), id="no-store streams by"
    ),
    pytest.param(response(200, Cache_Control="no-store"), 10, A.PASS, (False, False), id="no-store small"),
]


@pytest.mark.parametrize("resp, length, action, big_shared", RESPONSE_HEAD)
def test_response_head(
    resp: Response, length: int | None, action: Action, big_shared: tuple[bool, bool]
) -> None:
    ex = forwarded(Row())
    assert head(ex, resp, length) is action
    assert ex.state is ACTION_STATE[action]
    if action is not A.TEE:
        assert (ex.big, ex.shared) == big_shared
    assert bool(ex.key) == (action in (A.BUFFER, A.TEE))


def test_a_304_is_shared_and_never_stored() -> None:
    ex = forwarded(Row(listing=(STALE,), found=(Found.ENTRY,)))
    ex.hold(STALE)
    assert head(ex, response(304), None) is A.PASS
    assert (ex.big, ex.shared, ex.key) == (False, True, "")
    assert (
        ex.response(response(304, ETag='"v1"'), failed=False, now=NOW, config=CacheConfig())
        is A.SERVE_REFRESHED
    )
    assert ex.after_304 is not None and ex.after_304.updated
    assert ex.state is State.SERVED


def test_whole_fetch_too_big_is_abandoned() -> None:
    ex = Exchange(request(), NOW)
    ex.begin(bypass=None, offline=False)
    ex.looked_up([], now=NOW, config=CacheConfig(), in_flight=False, whole=True, fetch_whole_below=500)
    assert ex.role is Role.WHOLE and ex.state is State.FORWARD  # it leads already: no JOIN
    assert head(ex, response(200, **CACHEABLE), 600) is A.ABANDON
    assert ex.state is State.DONE


def test_no_room_passes_and_says_why() -> None:
    ex = forwarded(Row())
    assert head(ex, response(200, **CACHEABLE), 200) is A.TEE
    assert ex.no_room() is A.PASS
    assert ex.key == ""
    assert "detail=" + TOO_BIG_FOR_DISK in render(ex.forward_status(stored=False))


@pytest.mark.parametrize(
    "entry, failed, status, action, detail",
    [
        pytest.param(
            ON_ERROR, True, 502, A.SERVE_STALE, "stale-if-error", id="origin unreachable: stale-if-error"
        ),
        pytest.param(ON_ERROR, False, 503, A.SERVE_STALE, "stale-if-error", id="a 503: stale-if-error"),
        pytest.param(NO_STALE, True, 502, A.STORE, "", id="must-revalidate forbids it"),
        pytest.param(ON_ERROR, False, 404, A.STORE, "", id="a 404 is no error"),
    ],
)
def test_stale_on_error(
    entry: StoredResponse, failed: bool, status: int, action: Action, detail: str
) -> None:
    ex = forwarded(Row(listing=(entry,), found=(Found.ENTRY,)))
    ex.hold(entry)
    head(ex, response(status), 10, failed=failed)
    assert ex.response(response(status), failed=failed, now=NOW, config=CacheConfig()) is action
    if action is A.SERVE_STALE:
        assert ex.stale is not None and ex.stale.detail == detail
        assert ex.stale.hit is failed
        assert ex.state is State.SERVED
    else:
        assert ex.state is State.DONE


def test_stored_record_minus_our_cache_status() -> None:
    ex = forwarded(Row())
    resp = response(200, Cache_Control="max-age=60", Cache_Status="upstream; hit, fwdproxy; fwd=uri-miss")
    assert head(ex, resp, 10) is A.BUFFER
    assert ex.response(resp, failed=False, now=NOW, config=CacheConfig()) is A.STORE
    meta = ex.to_store(resp, length=10, complete=True, response_time=NOW, config=CacheConfig())
    assert meta is not None
    assert meta.headers.get_all("cache-status") == ["upstream; hit"]
    assert meta.lifetime == 60
    assert ex.to_store(resp, length=10, complete=False, response_time=NOW, config=CacheConfig()) is None


def teeing_leader() -> tuple[Exchange, StoredResponse]:
    ex = forwarded(Row())
    resp = response(200, Cache_Control="max-age=60", ETag='"v9"')
    assert head(ex, resp, 200) is A.TEE
    assert ex.storable is not None
    return ex, ex.record(resp, 200, NOW, ex.storable)


def test_a_leader_whose_client_left_resumes_for_its_followers() -> None:
    ex, meta = teeing_leader()
    assert ex.error(client_left=True, followers=2, written=50, writing=True, meta=meta) is A.RESUME
    assert (ex.resume_from, ex.if_range, ex.state) == (50, '"v9"', State.RESUME)
    assert ex.resumed(response(206, Content_Range="bytes 50-199/200"), 200)
    assert not ex.resumed(response(200), 200)
    assert ex.resume_ended(complete=True) is A.STORE
    assert ex.state is State.DONE


@pytest.mark.parametrize(
    "client_left, followers, written",
    [(False, 2, 50), (True, 0, 50), (True, 2, 0), (True, 2, 200)],
    ids=["other error", "no followers", "nothing written", "all written"],
)
def test_no_resume(client_left: bool, followers: int, written: int) -> None:
    ex, meta = teeing_leader()
    assert (
        ex.error(client_left=client_left, followers=followers, written=written, writing=True, meta=meta)
        is A.ABORT
    )
    assert ex.state is State.DONE and not ex.complete


def test_error_while_waiting_moves_nothing() -> None:
    ex, _ = walk(Row(joined=Joined.FOLLOW))
    assert ex.error(client_left=True, followers=0, written=0, writing=False, meta=None) is A.ABORT
    assert ex.state is State.FOLLOW


ILLEGAL: list[tuple[str, Callable[[Exchange], object]]] = [
    ("read before lookup", lambda ex: ex.read(Found.ENTRY)),
    ("join before lookup", lambda ex: ex.joined(Joined.LEAD)),
    ("head before forward", lambda ex: head(ex, response(200), 10)),
    ("lookup twice", lambda ex: [ex.begin(bypass=None, offline=False), ex.begin(bypass=None, offline=False)]),
    (
        "response before forward",
        lambda ex: ex.response(response(200), failed=False, now=NOW, config=CacheConfig()),
    ),
    ("no room before tee", lambda ex: ex.no_room()),
    ("streaming before the shared lookup", lambda ex: ex.streaming(FRESH, now=NOW, config=CacheConfig())),
]


@pytest.mark.parametrize("step", [s for _, s in ILLEGAL], ids=[n for n, _ in ILLEGAL])
def test_illegal_steps_raise(step: Callable[[Exchange], object]) -> None:
    ex = Exchange(request(), NOW)
    with pytest.raises(IllegalStep):
        step(ex)


def test_served_is_final() -> None:
    ex, _ = walk(Row(listing=(FRESH,), found=(Found.ENTRY,)))
    with pytest.raises(IllegalStep):
        head(ex, response(200), 10)


def test_tables_are_whole() -> None:
    assert set(MOVES) == set(State)
    assert set(ACTION_STATE) == set(Action)
    ends = {s for s, moves in MOVES.items() if not moves}
    assert ends == {State.CHECK, State.SERVED, State.DONE}


BODIES = {KEY + "0": b"0123456789"}


@pytest.mark.parametrize(
    "req, entry, status, body",
    [
        pytest.param(request(), FRESH, 200, b"0123456789", id="whole"),
        pytest.param(request("HEAD"), FRESH, 200, b"", id="HEAD"),
        pytest.param(request(If_None_Match='"v1"'), FRESH, 304, b"", id="conditional"),
        pytest.param(request(Range="bytes=2-4"), FRESH, 206, b"234", id="range"),
        pytest.param(request(Range="bytes=20-"), FRESH, 416, b"", id="unsatisfiable range"),
        pytest.param(request(), SWR, 200, b"0123456789", id="stale-while-revalidate"),
    ],
)
def test_memory_hit_answers(req: Request, entry: StoredResponse, status: int, body: bytes) -> None:
    ex, ans = hit(req, [(KEY + "0", entry)], BODIES.get, now=NOW, config=CacheConfig())
    assert ans is not None and ans.status == status and ans.content == body
    assert ex.state is State.SERVED
    assert render(ex.status()).startswith("fwdproxy; hit" if entry is FRESH else "fwdproxy; fwd=stale")


@pytest.mark.parametrize(
    "req, listing, state",
    [
        pytest.param(request(), (), State.FORWARD, id="miss"),
        pytest.param(request(), (STALE,), State.READ, id="stale: validate"),
        pytest.param(request("POST"), (FRESH,), State.FORWARD, id="POST"),
        pytest.param(request(Cache_Control="no-cache"), (FRESH,), State.READ, id="client no-cache"),
    ],
)
def test_not_a_memory_hit(req: Request, listing: tuple[StoredResponse, ...], state: State) -> None:
    ex, ans = hit(
        req, [(KEY + str(i), m) for i, m in enumerate(listing)], BODIES.get, now=NOW, config=CacheConfig()
    )
    assert ans is None
    assert ex.state is state


def test_a_body_not_in_memory_is_no_memory_hit() -> None:
    ex, ans = hit(request(), [(KEY + "0", FRESH)], {}.get, now=NOW, config=CacheConfig())
    assert ans is None and ex.state is State.READ
    _, offline = hit(request(), [], BODIES.get, now=NOW, config=CacheConfig(offline=True))
    assert offline is None
