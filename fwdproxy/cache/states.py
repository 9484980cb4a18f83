"""The cache exchange's states, actions and transition tables: data the machine in exchange.py follows."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class State(enum.Enum):
    """Where one exchange is."""

    __hash__ = object.__hash__  # by identity, in C: Enum's own hashes the name in Python, per table lookup

    NEW = "new"
    """The request is known; nothing was decided yet."""
    LOOKUP = "lookup"
    """The store's listing of the request's primary key is awaited."""
    READ = "read"
    """A stored entry has to be read: to answer from it, or to have its body checked before validating."""
    CHECK = "check"
    """Waiting for a body file's checksum check; a new exchange looks again (end)."""
    SHARED = "shared"
    """A local miss looks in the fleet's shared tier (issue 20) before the origin: its entry is copied into
    the local tiers, or streams while it is copied in (``streaming``); a new exchange looks again locally
    (end)."""
    JOIN = "join"
    """Asking the in-flight table whether this request leads its key or follows another."""
    FOLLOW = "follow"
    """Waiting for the request that leads the key (here or in another process); a new exchange looks
    again if its response does not answer this one (end)."""
    FORWARD = "forward"
    """On its way to the origin (with validators when revalidating); its response head is awaited."""
    TEE = "tee"
    """The response body streams to the client and into the store."""
    BUFFER = "buffer"
    """A storable response is held whole, to be stored when complete."""
    PASS = "pass"
    """The response goes through unstored (or is a 304 / an error a stored response may replace)."""
    RESUME = "resume"
    """The leader's client left mid-body: our own Range request fetches the rest for its followers."""
    SERVED = "served"
    """Answered by the cache; the response hooks leave the flow alone (end)."""
    DONE = "done"
    """The origin's response or error was dealt with (end)."""


class Action(enum.Enum):
    """What the addon does next; the data it needs is on the Exchange (no allocation per step)."""

    __hash__ = object.__hash__  # by identity, in C: Enum's own hashes the name in Python, per table lookup

    LOOKUP = "lookup"
    """List the stored responses of ``primary`` (store.variants): call ``looked_up`` with them."""
    READ = "read"
    """Get the stored entry ``selected``: call ``read`` with whether it was there (or awaits a check)."""
    SERVE = "serve"
    """Answer from the entry just read (answer.answer) with Cache-Status ``status()``."""
    SERVE_AND_REVALIDATE = "serve-and-revalidate"
    """SERVE, and start one background revalidation of the key (RFC 5861 §3)."""
    AWAIT_CHECK = "await-check"
    """The entry's body file is being checked: wait for it, then look again with may_check False."""
    REJECT = "reject"
    """Answer 504 (§5.2.1.7 only-if-cached, or --offline): the reason is ``reason``."""
    FETCH_WHOLE = "fetch-whole"
    """Fetch the whole object in a flow of our own leading the key, and follow it (range on a miss)."""
    LOOKUP_SHARED = "lookup-shared"
    """Copy the request's entry from the shared tier into the local tiers (FleetStore.fetch, which takes the
    fleet's fetch lock on a shared miss or waits for another node's), then look again with ``fleet`` COPIED
    or TRIED; a big entry announced while it is copied in goes to ``streaming``."""
    AWAIT_SHARED = "await-shared"
    """The entry copied in does not answer this request as it streams: wait until the copy has ended, then
    look again locally."""
    JOIN = "join"
    """Join the key's flight (taking the cross-process lock if nobody here leads): call ``joined``."""
    FOLLOW = "follow"
    """Follow the leader of the key in this process."""
    WAIT_REMOTE = "wait-remote"
    """Another process fetches the key: wait for its lock, then look again without collapsing."""
    FORWARD = "forward"
    """Let the request go to the origin as it is."""
    FORWARD_VALIDATING = "forward-validating"
    """Hold the selected entry and ask the origin with validators (``validate``, §4.3.1)."""
    SERVE_PIECES = "serve-pieces"
    """A range inside a fresh partial entry's pieces: answer the 206 from them (fwdproxy/cache/partial.py)."""
    FILL = "fill"
    """A whole GET finds pieces: ask the origin for ``fill.span`` only (Range, If-Range ``fill.if_range``),
    merge its 206 and answer the whole 200 from the completed entry (RFC 9111 §3.4)."""
    ABANDON = "abandon"
    """Our whole fetch for ranges is too big or of unknown length: kill it; its followers go themselves."""
    PASS = "pass"
    """Let the response through unstored (stream it if ``big``)."""
    BUFFER = "buffer"
    """Hold the storable response whole; store it under ``key`` when it ends."""
    TEE = "tee"
    """Open a store writer for ``key`` and copy the body into it as it streams (``no_room`` if refused)."""
    SERVE_REFRESHED = "serve-refreshed"
    """A 304 answered our validators: freshen the held entries (``after_304.updated``) and answer from
    ``after_304.serve`` (§4.3.3-4)."""
    FRESHEN_304 = "freshen-304"
    """A 304 answered our validators but is not answered from them: freshen the held entries, then pass the
    304 on or (no stored response matches it) drop them and answer 502, as ``after_304.action`` says."""
    SERVE_STALE = "serve-stale"
    """The origin failed: answer from the held entry (RFC 5861 §4), with Cache-Status ``status()``."""
    STORE = "store"
    """Store the complete response under ``key`` (if any) and say what happened in Cache-Status."""
    RESUME = "resume"
    """The leader's client left: fetch the rest of the body for the followers (RFC 9110 §14.2)."""
    ABORT = "abort"
    """The response ended badly: drop any partial write; the flight lands."""


MOVES: Mapping[State, frozenset[State]] = {
    State.NEW: frozenset({State.LOOKUP, State.FORWARD, State.SERVED}),
    State.LOOKUP: frozenset(
        {State.READ, State.SERVED, State.SHARED, State.JOIN, State.FOLLOW, State.FORWARD}
    ),
    State.READ: frozenset({State.SERVED, State.CHECK, State.READ, State.JOIN, State.FOLLOW, State.FORWARD}),
    State.SHARED: frozenset({State.SERVED, State.SHARED}),
    State.JOIN: frozenset({State.FORWARD, State.FOLLOW}),
    State.FOLLOW: frozenset({State.SERVED}),
    State.CHECK: frozenset(),
    State.FORWARD: frozenset({State.FORWARD, State.TEE, State.BUFFER, State.PASS, State.SERVED, State.DONE}),
    State.TEE: frozenset({State.DONE, State.PASS, State.RESUME}),
    State.BUFFER: frozenset({State.DONE, State.SERVED}),
    State.PASS: frozenset({State.DONE, State.SERVED}),
    State.RESUME: frozenset({State.DONE}),
    State.SERVED: frozenset(),
    State.DONE: frozenset(),
}
"""Which states each state may move to."""

ACTION_STATE: Mapping[Action, State] = {
    Action.LOOKUP: State.LOOKUP,
    Action.READ: State.READ,
    Action.SERVE: State.SERVED,
    Action.SERVE_AND_REVALIDATE: State.SERVED,
    Action.AWAIT_CHECK: State.CHECK,
    Action.REJECT: State.SERVED,
    Action.FETCH_WHOLE: State.FOLLOW,
    Action.LOOKUP_SHARED: State.SHARED,
    Action.AWAIT_SHARED: State.SHARED,
    Action.JOIN: State.JOIN,
    Action.FOLLOW: State.FOLLOW,
    Action.WAIT_REMOTE: State.FOLLOW,
    Action.FORWARD: State.FORWARD,
    Action.FORWARD_VALIDATING: State.FORWARD,
    Action.SERVE_PIECES: State.SERVED,
    Action.FILL: State.FORWARD,
    Action.ABANDON: State.DONE,
    Action.PASS: State.PASS,
    Action.BUFFER: State.BUFFER,
    Action.TEE: State.TEE,
    Action.SERVE_REFRESHED: State.SERVED,
    Action.FRESHEN_304: State.DONE,
    Action.SERVE_STALE: State.SERVED,
    Action.STORE: State.DONE,
    Action.RESUME: State.RESUME,
    Action.ABORT: State.DONE,
}
"""The state each action leaves the exchange in."""


class Found(enum.Enum):
    """What reading a stored entry gave (the answer to Action.READ)."""

    __hash__ = object.__hash__  # by identity, in C: Enum's own hashes the name in Python, per table lookup

    ENTRY = "entry"
    PENDING = "pending"
    """Its body file awaits a checksum check this process has not made yet (issue 16)."""
    NONE = "none"
    """Gone, or unchecked where no check may be awaited."""


class Joined(enum.Enum):
    """What joining the key's flight gave (the answer to Action.JOIN)."""

    __hash__ = object.__hash__  # by identity, in C: Enum's own hashes the name in Python, per table lookup

    LEAD = "lead"
    FOLLOW = "follow"
    REMOTE = "remote"
    """Another process holds the key's lock."""


class Fleet(enum.Enum):
    """Where the request stands with the fleet's shared tier (issue 20; an input of ``looked_up``)."""

    __hash__ = object.__hash__  # by identity, in C: Enum's own hashes the name in Python, per table lookup

    OFF = "off"
    """No shared tier (the default: nothing of it runs)."""
    TRY = "try"
    """A shared tier is configured and this request has not looked there yet: a local miss does."""
    TRIED = "tried"
    """It looked there and nothing came (a shared miss, the tier down or slow): the origin is next."""
    COPIED = "copied"
    """It looked there and the entry was copied into the local tiers: a hit from it says ``detail=shared``."""


class Role(enum.Enum):
    """Whether the exchange leads its key's flight (followers wait on its response)."""

    __hash__ = object.__hash__  # by identity, in C: Enum's own hashes the name in Python, per table lookup

    ALONE = "alone"
    LEADER = "leader"
    WHOLE = "whole"
    """Leads as our own whole fetch for range requests (--range-fetch-whole-below)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes that decide how a response travels (the cache addon's options)."""

    max_object: int = 1024**3
    """Bigger responses pass through unstored."""
    stream_threshold: int = 1024**2
    """Bigger bodies (or of unknown length) stream to the client instead of being held."""
    fetch_whole_below: int = 0
    """On a miss, a range of an object this small is answered from one whole fetch (0: never)."""


EVENTS: Mapping[str, frozenset[State]] = {
    "begin": frozenset({State.NEW}),
    "looked_up": frozenset({State.LOOKUP}),
    "read": frozenset({State.READ}),
    "joined": frozenset({State.JOIN}),
    "followed": frozenset({State.FOLLOW}),
    "streaming": frozenset({State.SHARED}),
    "pieces": frozenset({State.FORWARD}),
    "head": frozenset({State.FORWARD}),
    "no_room": frozenset({State.TEE}),
    "response": frozenset({State.FORWARD, State.TEE, State.BUFFER, State.PASS}),
}
"""The states in which each input of the Exchange may arrive (its method of that name)."""
