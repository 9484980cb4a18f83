"""The cache exchange of one request as a sans-IO state machine: the next action from what was found.

The cache addon feeds an Exchange the request, then what the store and the in-flight table answered, then
the origin's response head, its end or its error. Each step returns an Action (states.py) and moves the
exchange to the state ACTION_STATE names for it, which must be one MOVES lets the current state reach (an
illegal step raises). The Exchange reads no clock, store, socket or flow: the addon passes ``now``, the
listing and what reading an entry gave, and performs the actions; the data an action needs is on the
Exchange (``selected``, ``key``, ``reason``, ``status()``, ``after_304`` ...)::

    NEW --LOOKUP--> LOOKUP --READ--> READ --SERVE / SERVE_AND_REVALIDATE--> SERVED
     |                |                |--AWAIT_CHECK--> CHECK (end: look again when checked)
     |--REJECT--> SERVED (504)         '--(gone) like LOOKUP without the entry
     |                |--LOOKUP_SHARED--> SHARED (a local miss, fleet TRY; end: look again locally)
     |                                      '--streaming: SERVE--> SERVED / AWAIT_SHARED--> SHARED
     '--FORWARD--> FORWARD (a method or request the cache does not keep)
    LOOKUP/READ --REJECT--> SERVED   --FETCH_WHOLE / FOLLOW / WAIT_REMOTE--> FOLLOW (end: look again)
                --JOIN--> JOIN --(lead) FORWARD[_VALIDATING]--> FORWARD
    FORWARD --TEE--> TEE --STORE--> DONE          --RESUME--> RESUME --> DONE (the leader's client left)
            --BUFFER--> BUFFER --STORE / SERVE_STALE--> DONE / SERVED
            --PASS--> PASS --FRESHEN_304 / SERVE_REFRESHED / SERVE_STALE / STORE--> DONE / SERVED
            --ABANDON--> DONE (our whole fetch for ranges turned out too big)

The hit path alone, flow-free, for a layer below mitmproxy's HTTP layer that answers memory hits itself
(it must decide exactly as the addon does, so it drives the same Exchange)::

    hit(request: Request, listing: Sequence[tuple[str, StoredResponse]],
        body_of: Callable[[str], bytes | None], *, now: float, config: CacheConfig,
        bypass: str | None = None) -> tuple[Exchange, Answer | None]

``listing`` is ``store.variants(primary_key(method, url))``, ``body_of(key)`` the memory tier's body of an
entry (None when it is not in memory), ``bypass`` what fwdproxy.unkeyed.bypass says of the request. The
Answer is the response to send (304, 206/416, HEAD, or all of it; fwdproxy/cache/answer.py) with
Cache-Status ``exchange.status()``; when ``exchange.state`` is SERVED after SERVE_AND_REVALIDATE the key
also wants one background revalidation (RFC 5861 §3). None: not a memory hit (a miss, a stale entry to
validate, a body on disk, a 504 ...): hand the request to the full path unanswered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import assert_never

from fwdproxy.cache.answer import Answer, answer
from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.freshness import record_lifetime
from fwdproxy.cache.headers import storable_headers, without_our_status
from fwdproxy.cache.key import primary_key, secondary_key, vary_matches, vary_request_headers
from fwdproxy.cache.partial import Decision as PiecesDecision
from fwdproxy.cache.partial import Plan
from fwdproxy.cache.policy import LookupDecision, Verdict, lookup, stale_on_error
from fwdproxy.cache.states import (
    ACTION_STATE,
    EVENTS,
    MOVES,
    Action,
    Fleet,
    Found,
    Joined,
    Limits,
    Role,
    State,
)
from fwdproxy.cache.status import CacheStatus, Fwd
from fwdproxy.cache.storability import StoreDecision, is_storable
from fwdproxy.cache.validation import (
    After304,
    NotModified,
    client_conditional_matches,
    conditional_request_headers,
    on_not_modified,
)
from fwdproxy.http_model import Headers, Request, Response, StoredResponse
from fwdproxy.store.record import variant_key

TOO_BIG_FOR_DISK = "too-big-for-disk"
"""Cache-Status detail of a response kept out of the store because it would not fit within the disk limit."""

_ANSWERING = (Verdict.SERVE, Verdict.STALE_WHILE_REVALIDATE)
_MISSES = (Fwd.URI_MISS, Fwd.VARY_MISS)


class IllegalStep(RuntimeError):
    """A step the transition table does not allow from the exchange's state (a bug in the caller)."""


@dataclass(slots=True)
class Exchange:
    """One request's way through the cache: its state, what was decided, and what an action needs."""

    request: Request
    """The request as the cache saw it (before validators were added)."""
    request_time: float
    state: State = State.NEW
    decision: LookupDecision = LookupDecision(Verdict.FORWARD)
    primary: str = ""
    role: Role = Role.ALONE
    selected: str = ""
    """Store key of the selected stored response (§4.1), "" when none."""
    listing: Sequence[tuple[str, StoredResponse]] = ()
    may_check: bool = True
    """A body file not yet checked may be waited for (False after one wait: then it is a miss)."""
    collapse: bool = True
    """This request may share one origin request with others for its key."""
    background: bool = False
    replay: bool = False
    in_flight: bool = False
    """Another request for the key was in flight in this process when it was looked up."""
    fetch_whole_below: int = 0
    verified: bool = False
    """The selected body was read (and checked) before asking the origin to validate it."""
    candidates: tuple[tuple[str, StoredResponse], ...] = ()
    """Stored responses our validators were taken from, the selected one first (§4.3.1)."""
    reason: str = ""
    """Why REJECT answers 504."""
    fwd_status: int | None = None
    """The status the next hop answered with (RFC 9211 fwd-status); None when it gave none."""
    big: bool = False
    """PASS: stream the body instead of holding it."""
    shared: bool = False
    """Followers of this leader wait for what it stores (BUFFERED) instead of asking themselves."""
    key: str = ""
    """Store key of the response (§4.1 variant), "" when it is not stored."""
    storable: StoreDecision | None = None
    complete: bool = False
    """The whole body arrived (a streamed body's end was seen)."""
    stored: bool = False
    """The response (or a 304's refresh) reached the store."""
    after_304: NotModified | None = None
    stale: CacheStatus | None = None
    """SERVE_STALE's Cache-Status."""
    resume_from: int = 0
    if_range: str = ""
    partial: PiecesDecision | None = None
    """What the URL's partial entry gave this miss (``pieces``; fwdproxy/cache/partial.py), None: not asked."""

    def _do(self, action: Action) -> Action:
        to = ACTION_STATE[action]
        if to not in MOVES[self.state]:
            raise IllegalStep(f"{action.value} from {self.state.value}")
        self.state = to
        return action

    def _expect(self, event: str) -> None:
        if self.state not in EVENTS[event]:
            raise IllegalStep(f"{event} in {self.state.value}")

    @property
    def served(self) -> bool:
        return self.state is State.SERVED

    # -- request side: NEW, LOOKUP, READ, JOIN --------------------------------------------------------

    def begin(self, *, bypass: str | None, offline: bool) -> Action:
        """§4: whether the store is consulted. ``bypass``: why the URL does not say what the origin answers
        (fwdproxy.unkeyed); nothing stored may answer such a request and its response answers no one else."""
        self._expect("begin")
        if self.request.method not in ("GET", "HEAD"):
            self.decision = LookupDecision(Verdict.FORWARD, fwd=Fwd.METHOD)
        elif bypass is not None:
            self.decision = LookupDecision(Verdict.FORWARD, fwd=Fwd.BYPASS, detail=bypass)
        else:
            self.primary = primary_key(self.request.method, self.request.url)
            return self._do(Action.LOOKUP)
        if offline:
            self.reason = "offline"
            return self._do(Action.REJECT)
        return self._do(Action.FORWARD)

    def looked_up(
        self,
        listing: Sequence[tuple[str, StoredResponse]],
        *,
        now: float,
        config: CacheConfig,
        in_flight: bool,
        background: bool = False,
        replay: bool = False,
        whole: bool = False,
        may_check: bool = True,
        collapse: bool = True,
        fetch_whole_below: int = 0,
        fleet: Fleet = Fleet.OFF,
    ) -> Action:
        """The stored responses of the primary key (maybe none): serve, check, reject, look in the fleet's
        shared tier, collapse or forward. ``whole``: this is our own whole fetch for ranges, leading its key
        already. ``fleet``: where the request stands with the shared tier (OFF: there is none)."""
        self._expect("looked_up")
        decision = lookup(self.request, [meta for _, meta in listing], now=now, config=config)
        self.listing, self.in_flight, self.may_check, self.collapse = listing, in_flight, may_check, collapse
        self.background, self.replay = background, replay
        self.fetch_whole_below = fetch_whole_below
        if whole:
            self.role = Role.WHOLE
        self.selected = next((k for k, m in listing if m is decision.stored), "")
        if background and decision.stored is not None:
            decision = LookupDecision(
                Verdict.REVALIDATE,
                decision.stored,
                Fwd.STALE,
                decision.age,
                decision.ttl,
                "stale-while-revalidate",
            )
        self.decision = decision
        if decision.verdict in _ANSWERING:
            if self.selected:
                if fleet is Fleet.COPIED:  # the entry just copied in from the shared tier
                    self.decision = replace(decision, detail="shared")
                return self._do(Action.READ)
            self.decision = LookupDecision(Verdict.FORWARD, fwd=Fwd.MISS, detail="entry-vanished")
        elif fleet is Fleet.TRY and self.shared_first():
            return self._do(Action.LOOKUP_SHARED)
        return self._after_read()

    def shared_first(self) -> bool:
        """Whether a local miss looks in the fleet's shared tier before the origin (issue 20): a GET whose
        URI or variant is not stored here, neither our own background request nor our whole fetch."""
        return (
            self.request.method == "GET"
            and self.decision.verdict is Verdict.FORWARD
            and self.decision.fwd in _MISSES
            and self.role is Role.ALONE
            and not self.background
        )

    def choose(
        self, listing: Sequence[tuple[str, StoredResponse]], *, now: float, config: CacheConfig
    ) -> str:
        """LOOKUP_SHARED: the key of the shared entry this request would use (§4.1), "" when none."""
        stored = lookup(self.request, [meta for _, meta in listing], now=now, config=config).stored
        return next((k for k, m in listing if m is stored), "")

    def streaming(self, meta: StoredResponse, *, now: float, config: CacheConfig) -> Action:
        """A big entry from the shared tier is announced while it is copied in (every byte checked against
        its chunk's digest as it arrives): SERVE it as it grows when it is fresh and answers this request
        whole; otherwise AWAIT_SHARED (a range, a client validator that matches, a stale entry or another
        variant: the local lookup decides once the copy is in)."""
        self._expect("streaming")
        request = self.request
        if "range" not in request.headers and vary_matches(meta, request):
            decision = lookup(request, [meta], now=now, config=config)
            if (
                decision.verdict is Verdict.SERVE
                and decision.stored is meta
                and not client_conditional_matches(request, meta)
            ):
                self.decision = replace(decision, detail="shared")
                return self._do(Action.SERVE)
        return self._do(Action.AWAIT_SHARED)

    def read(self, found: Found) -> Action:
        """What reading the ``selected`` entry gave."""
        self._expect("read")
        if found is Found.PENDING:
            return self._do(Action.AWAIT_CHECK)
        if not self.verified and self.decision.verdict in _ANSWERING:
            if found is Found.ENTRY:
                if self.decision.verdict is Verdict.STALE_WHILE_REVALIDATE:
                    return self._do(Action.SERVE_AND_REVALIDATE)
                return self._do(Action.SERVE)
            self.decision = LookupDecision(Verdict.FORWARD, fwd=Fwd.MISS, detail="entry-vanished")
            return self._after_read()
        return self._route()  # the body to validate was checked (or is gone: the origin sends it whole)

    def _after_read(self) -> Action:
        decision = self.decision
        if decision.verdict is Verdict.GATEWAY_TIMEOUT:
            self.reason = decision.detail or "only-if-cached"
            return self._do(Action.REJECT)
        if decision.verdict is Verdict.REVALIDATE and self.selected and self.may_check:
            # A 304 would be answered from this body: have it checked before the origin is asked.
            self.verified = True
            return self._do(Action.READ)
        return self._route()

    def _route(self) -> Action:
        if self.collapse and self.fetches_whole():
            return self._do(Action.FETCH_WHOLE)
        if self.collapse and self.role is Role.ALONE and self.collapsible():
            return self._do(Action.JOIN)
        return self._forward()

    def fetches_whole(self) -> bool:
        """Whether a range request on a miss waits for a whole fetch (--range-fetch-whole-below)."""
        return (
            bool(self.fetch_whole_below)
            and self.request.method == "GET"
            and "range" in self.request.headers
            and self.decision.verdict is Verdict.FORWARD
            and self.decision.fwd in _MISSES
            and not self.in_flight  # one is in flight: follow it (collapsible)
            and not self.background
            and not self.replay
        )

    def collapsible(self) -> bool:
        """Whether this request may share one origin request with others for the same key: not when the
        client itself asked to go forward, and ranges follow but never lead."""
        return (
            self.request.method == "GET"
            and self.decision.fwd in (*_MISSES, Fwd.STALE)
            and not self.background
            and ("range" not in self.request.headers or self.in_flight)
        )

    def joined(self, joined: Joined) -> Action:
        """What joining the key's flight gave."""
        self._expect("joined")
        if joined is Joined.FOLLOW:
            return self._do(Action.FOLLOW)
        if joined is Joined.REMOTE:
            return self._do(Action.WAIT_REMOTE)
        self.role = Role.LEADER
        return self._forward()

    def followed(self) -> Action:
        """The leader's response (stored, or its growing body) answers this follower."""
        self._expect("followed")
        return self._do(Action.SERVE)

    def _forward(self) -> Action:
        if self.decision.verdict is Verdict.REVALIDATE:
            return self._do(Action.FORWARD_VALIDATING)
        return self._do(Action.FORWARD)

    def wants_pieces(self) -> bool:
        """Whether this exchange, on its way to the origin, asks the URL's partial entry first (RFC 9111 §3.3):
        a client's GET that found nothing stored for the URL and leads (or goes alone)."""
        return (
            self.state is State.FORWARD
            and self.partial is None
            and self.request.method == "GET"
            and self.decision.verdict is Verdict.FORWARD
            and self.decision.fwd is Fwd.URI_MISS
            and self.role in (Role.ALONE, Role.LEADER)
            and not self.background
            and not self.replay
        )

    def pieces(self, found: PiecesDecision) -> Action:
        """What the URL's partial entry gave (``partial.plan``): SERVE_PIECES a range inside fresh pieces
        (a hit), FILL the rest of a whole GET (``fwd=partial``), or go FORWARD as the request is (a range
        the pieces lack: ``fwd=partial`` too when there are some; RFC 9211 §2.2)."""
        self._expect("pieces")
        if self.partial is not None:
            raise IllegalStep("pieces twice")
        self.partial = found
        match found.plan:
            case Plan.SERVE:
                assert found.lookup is not None
                self.decision = found.lookup
                return self._do(Action.SERVE_PIECES)
            case Plan.FILL:
                self.decision = replace(self.decision, fwd=Fwd.PARTIAL)
                return self._do(Action.FILL)
            case Plan.CAPTURE | Plan.NONE:
                if found.had:
                    self.decision = replace(self.decision, fwd=Fwd.PARTIAL)
                return self._do(Action.FORWARD)
            case _:
                assert_never(found.plan)

    def hold(self, selected: StoredResponse) -> Headers:
        """§4.3.1: the validators to ask with, taken from the selected entry (read again just now) and its
        siblings, which a 304 may then freshen."""
        self.candidates = (
            (self.selected, selected),
            *((k, m) for k, m in self.listing if k != self.selected),
        )
        return conditional_request_headers(self.request, [m for _, m in self.candidates])

    def status(self) -> CacheStatus:
        """Cache-Status of a SERVE."""
        return self.decision.cache_status()

    def collapsed_status(self, fwd_status: int) -> CacheStatus:
        """Cache-Status of a follower answered from its leader's response."""
        return CacheStatus(fwd=self.decision.fwd, fwd_status=fwd_status, collapsed=True)

    def reject_status(self) -> CacheStatus:
        return CacheStatus(fwd=self.decision.fwd or Fwd.MISS, detail=self.reason)

    # -- response side: FORWARD, TEE, BUFFER, PASS, RESUME --------------------------------------------

    def head(
        self,
        resp: Response,
        *,
        length: int | None,
        failed: bool,
        now: float,
        config: CacheConfig,
        limits: Limits,
    ) -> Action:
        """The origin's response head (``failed``: one we made because the origin could not be reached):
        how the response travels, and what followers of this leader do."""
        self._expect("head")
        self.fwd_status = None if failed else resp.status  # ours is no status the origin sent (RFC 9211)
        big = length is None or length > limits.stream_threshold
        if self.role is Role.WHOLE and (length is None or length > limits.fetch_whole_below):
            return self._do(Action.ABANDON)
        request = self.request
        if (
            resp.status == 304
            or request.method != "GET"
            or self.decision.fwd is Fwd.BYPASS  # never stored (fwdproxy.unkeyed)
            or self.stale_reason(resp, failed=failed, now=now, config=config)
        ):
            self.big, self.shared = big and resp.status != 304, resp.status == 304
            return self._do(Action.PASS)
        decision = is_storable(request, resp, complete=True, config=config)
        if not decision or (length is not None and length > limits.max_object):
            self.big, self.shared = big, False
            return self._do(Action.PASS)
        self.key = variant_key(self.primary, secondary_key(resp.headers, request.headers))
        self.storable = decision
        if not big:
            self.shared = True
            return self._do(Action.BUFFER)
        return self._do(Action.TEE)

    def no_room(self) -> Action:
        """The store refused the writer: the body would take the disk past its limit (issue 16). It streams
        through unstored and Cache-Status says why (RFC 9211 §2.8 detail)."""
        self._expect("no_room")
        self.kept_out()
        self.big, self.shared = True, False
        return self._do(Action.PASS)

    def kept_out(self) -> None:
        """The disk limit, not the response, kept it out of the store: Cache-Status says so."""
        self.key = ""
        self.decision = replace(self.decision, detail=TOO_BIG_FOR_DISK)

    def record(
        self, resp: Response, length: int, response_time: float, decision: StoreDecision
    ) -> StoredResponse:
        """The record to store for this response (RFC 9111 §3.1: minus hop-by-hop and Connection-named fields)."""
        return StoredResponse(
            url=self.request.url,
            status=resp.status,
            reason=resp.reason,
            headers=storable_headers(without_our_status(resp.headers), response_time=response_time),
            request_time=self.request_time,
            response_time=response_time,
            body_length=length,
            vary_request=vary_request_headers(resp.headers, self.request.headers),
            rule=decision.rule.name if decision.rule else "",
        )

    def stale_reason(self, resp: Response, *, failed: bool, now: float, config: CacheConfig) -> str:
        """RFC 5861 §4 / --serve-stale-on-error: the reason the held entry may stand in for this error, or ""."""
        if not self.candidates:
            return ""
        status = None if failed else resp.status
        verdict = stale_on_error(self.request, self.candidates[0][1], status=status, now=now, config=config)
        return verdict.detail if verdict else ""

    def response(self, resp: Response, *, failed: bool, now: float, config: CacheConfig) -> Action:
        """The whole response arrived (or was held): freshen on a 304, stand in for an error, or store."""
        self._expect("response")
        if resp.status == 304 and self.candidates:
            self.after_304 = on_not_modified(
                self.request,
                resp,
                [m for _, m in self.candidates],
                request_time=self.request_time,
                response_time=now,
            )
            if self.after_304.action in (After304.SERVE_STORED, After304.SEND_304):
                return self._do(Action.SERVE_REFRESHED)
            return self._do(Action.FRESHEN_304)
        # A teed response was judged at its head (no stale entry may stand in for it) and is being stored.
        if self.state is not State.TEE and (
            reason := self.stale_reason(resp, failed=failed, now=now, config=config)
        ):
            # Issue 17's contract: an entry standing in for an origin that gave no response at all says
            # `hit; fwd=stale; detail=origin-error` (the body is the cache's; the request did go forward).
            self.stale = CacheStatus(
                hit=failed, fwd=Fwd.STALE, fwd_status=None if failed else resp.status, detail=reason
            )
            return self._do(Action.SERVE_STALE)
        self.fwd_status = None if failed else resp.status
        return self._do(Action.STORE)

    def revalidated_status(self) -> CacheStatus:
        """Cache-Status after a 304 answered our validators."""
        return CacheStatus(fwd=self.decision.fwd or Fwd.STALE, fwd_status=304, detail=self.decision.detail)

    def freshens_head(self, resp: Response) -> bool:
        """§4.3.5: a 200 to HEAD updates (or voids) the stored GET responses it describes."""
        return self.request.method == "HEAD" and resp.status == 200 and self.decision.fwd is not Fwd.BYPASS

    def to_store(
        self, resp: Response, *, length: int, complete: bool, response_time: float, config: CacheConfig
    ) -> StoredResponse | None:
        """The record to store now that the body is known (``complete``: all of it), or None."""
        if not self.key:
            return None
        decision = is_storable(self.request, resp, complete=complete, config=config)
        if not decision:
            return None
        # What decided its lifetime, for `cache ls/show`.
        return record_lifetime(self.record(resp, length, response_time, decision), config)

    def forward_status(self, *, stored: bool) -> CacheStatus:
        """Cache-Status of a response from the origin."""
        decision = self.decision
        return CacheStatus(
            fwd=decision.fwd or Fwd.MISS,
            fwd_status=self.fwd_status,
            stored=stored,
            ttl=decision.ttl if decision.stored is not None and not stored else None,
            detail=decision.detail,
        )

    def error(
        self, *, client_left: bool, followers: int, written: int, writing: bool, meta: StoredResponse | None
    ) -> Action:
        """The flow failed. A leader whose client went away mid-body while followers read along resumes:
        the rest of the body comes with a Range request of our own (RFC 9110 §14.2) guarded by If-Range
        (§13.1.5) into the same temp file. Otherwise the partial write is dropped."""
        if self.state is State.TEE and client_left and followers and writing and meta is not None:
            etag = meta.headers.get("etag")
            validator = etag if etag and not etag.startswith("W/") else meta.headers.get("last-modified")
            if validator and 0 < written < meta.body_length:
                self.resume_from, self.if_range = written, validator
                return self._do(Action.RESUME)
        self.complete = False
        if State.DONE not in MOVES[self.state]:
            return Action.ABORT  # not (or no longer) waiting for the origin: only the resources go
        return self._do(Action.ABORT)

    def resume_ended(self, *, complete: bool) -> Action:
        """Our continuation ended: STORE the body it completed, or ABORT (the followers fail)."""
        self.complete = complete
        action = Action.STORE if complete else Action.ABORT
        return self._do(action) if self.state is State.RESUME else action

    def resumed(self, resp: Response, total: int) -> bool:
        """Whether the continuation is exactly the missing tail (of ``total`` bytes) of the same
        representation; if not, the followers fail."""
        expected = f"bytes {self.resume_from}-{total - 1}/{total}"
        return resp.status == 206 and (resp.headers.get("content-range") or "").strip() == expected


def hit(
    request: Request,
    listing: Sequence[tuple[str, StoredResponse]],
    body_of: Callable[[str], bytes | None],
    *,
    now: float,
    config: CacheConfig,
    bypass: str | None = None,
) -> tuple[Exchange, Answer | None]:
    """The exchange as far as a memory hit goes, and the answer when it is one (see the module doc)."""
    ex = Exchange(request, now)
    if ex.begin(bypass=bypass, offline=config.offline) is not Action.LOOKUP:
        return ex, None
    if ex.looked_up(listing, now=now, config=config, in_flight=False, collapse=False) is not Action.READ:
        return ex, None
    if ex.verified or (body := body_of(ex.selected)) is None:
        return ex, None  # a stale entry to validate, or a body not in memory: the full path's
    if ex.read(Found.ENTRY) not in (Action.SERVE, Action.SERVE_AND_REVALIDATE):
        return ex, None
    assert ex.decision.stored is not None
    return ex, answer(request, ex.decision.stored, body, now)
