"""What the cache addon does with the origin's answer: tee it into the store, store it, freshen entries after a
304 or a HEAD, and resume a body for followers (not an addon; the exchange decides, these do)."""

import logging
import time

from mitmproxy import http

from fwdproxy import cache
from fwdproxy import store as storage
from fwdproxy.bodysource import Progress
from fwdproxy.cache import After304, CacheConfig
from fwdproxy.cache.exchange import Exchange
from fwdproxy.cache.states import Action, Limits
from fwdproxy.http_model import Response
from fwdproxy.inflight import Shape
from fwdproxy_addons import _respond
from fwdproxy_addons._cacheflow import Held
from fwdproxy_addons._cachehttp import content_length, to_response
from fwdproxy_addons._notes import FlowNotes

log = logging.getLogger("fwdproxy.cache")


def tee(
    flow: http.HTTPFlow,
    ex: Exchange,
    held: Held,
    store: storage.TieredStore,
    record: Response,
    length: int | None,
    limits: Limits,
) -> Action:
    """TEE: open a writer for the exchange's key and copy the body into it as it streams; followers of this
    leader read the growing temp file. PASS instead when the disk has no room for it."""
    resp = flow.response
    assert resp is not None and ex.storable is not None
    writer = store.writer(ex.key, max_length=limits.max_object, expected_length=length)
    if writer.failure is storage.Outcome.NO_ROOM:
        # Issue 16: the body would take the disk past --disk-cache-size beside what is stored and being
        # written; it streams through unstored (the disk never holds more than the limit).
        return ex.no_room()
    held.writer = writer
    flight, progress = held.flight, None
    if flight is not None and length is not None:
        flight.meta = ex.record(record, length, resp.timestamp_start or time.time(), ex.storable)
        flight.progress = progress = Progress(length)
        flight.set_shape(Shape.STREAMING)
    elif flight is not None:
        flight.set_shape(Shape.BUFFERED)  # no length to promise followers: they wait for the commit

    def copy(chunk: bytes) -> bytes:
        if chunk:
            writer.write(chunk)
            if progress is not None and writer.temp_path is not None:
                if flight is not None and flight.path is None:
                    flight.path = writer.temp_path
                    flight.file_ready.set()
                progress.advance(writer.written)
        else:
            ex.complete = True  # mitmproxy-notes §3: the end of the body is signalled by b""
        return chunk

    resp.stream = copy
    return Action.TEE


def store_response(
    flow: http.HTTPFlow,
    ex: Exchange,
    held: Held | None,
    store: storage.TieredStore,
    resp: Response,
    now: float,
    config: CacheConfig,
) -> bool:
    """STORE: commit the teed body, or put the held one, if the exchange keeps it; whether it was stored."""
    assert flow.response is not None
    writer = held.writer if held is not None else None
    raw = flow.response.raw_content
    expected = content_length(flow.response)
    if writer is not None:
        length = writer.written
        complete = ex.complete and (expected is None or expected == length)
    else:
        length = len(raw) if raw is not None else -1
        complete = raw is not None and (expected is None or expected == length)
    meta = ex.to_store(
        resp,
        length=length,
        complete=complete,
        response_time=flow.response.timestamp_start or now,
        config=config,
    )
    if meta is None:
        if writer is not None and ex.key:
            writer.abort()
        return False
    if writer is not None:
        outcome = writer.commit(meta)
    else:
        assert raw is not None
        outcome = store.put(ex.key, meta, raw)
    if outcome is storage.Outcome.NO_ROOM:
        ex.kept_out()
    if outcome is not storage.Outcome.STORED:
        log.info("not stored %s: %s", ex.request.url, outcome)
    ex.stored = outcome is storage.Outcome.STORED
    return ex.stored


def freshen(store: storage.TieredStore, ex: Exchange, config: CacheConfig) -> None:
    """§4.3.4: the entries a 304 freshened (``after_304.updated``) replace their stored records."""
    assert ex.after_304 is not None
    for updated in ex.after_304.updated:
        # freshen() keeps what identifies a variant (its selecting headers) and the body length
        for key, meta in ex.candidates:
            if meta.vary_request == updated.vary_request and meta.body_length == updated.body_length:
                updated = cache.record_lifetime(updated, config)
                ex.stored = store.update(key, updated) is not None or ex.stored
                break


def after_304(flow: http.HTTPFlow, store: storage.TieredStore, ex: Exchange) -> None:
    """FRESHEN_304 not answered from the store: pass the 304 on, or (it matches no stored response) drop the
    candidates and ask the client to retry."""
    assert ex.after_304 is not None and flow.response is not None
    if ex.after_304.action is After304.RETRY:
        for key, _ in ex.candidates:
            store.delete(key)
        flow.response = _respond.text(
            502, f"{ex.request.url}: the origin's 304 matches no stored response; retry"
        )
    else:
        flow.response.headers["Cache-Status"] = cache.render(ex.revalidated_status())


def freshen_from_head(
    store: storage.TieredStore, ex: Exchange, resp: Response, now: float, config: CacheConfig
) -> None:
    """§4.3.5: a 200 to HEAD updates (or voids) the stored GET responses it describes."""
    for key, meta in store.variants(ex.primary):
        fresh = cache.freshen_from_head(meta, resp, request_time=ex.request_time, response_time=now)
        if fresh is None:
            store.delete(key)
        elif fresh is not meta:
            store.update(key, cache.record_lifetime(fresh, config))


def resume_headers(flow: http.HTTPFlow, leader: FlowNotes) -> None:
    """Our continuation for a leader whose client left: accept it only if it is exactly the missing tail of the
    same representation, and copy it into the leader's writer."""
    ex, held, resp = leader.cache, leader.held, flow.response
    assert ex is not None and held is not None and resp is not None
    writer, flight = held.writer, held.flight
    assert writer is not None and flight is not None and flight.meta is not None
    if not ex.resumed(to_response(resp), flight.meta.body_length):
        log.info("%s: the origin did not resume (%s); followers fail", ex.request.url, resp.status_code)
        writer.abort()
        resp.stream = True
        return
    progress = flight.progress

    def copy(chunk: bytes) -> bytes:
        if chunk:
            writer.write(chunk)
            if progress is not None:
                progress.advance(writer.written)
        else:
            ex.complete = True
        return chunk

    resp.stream = copy


def resume_done(flow: http.HTTPFlow, leader: FlowNotes) -> None:
    """Our continuation ended: commit the completed body for the followers, or drop it."""
    ex, held = leader.cache, leader.held
    assert ex is not None and held is not None
    writer, flight = held.writer, held.flight
    assert writer is not None and flight is not None and flight.meta is not None
    complete = flow.error is None and ex.complete and writer.written == flight.meta.body_length
    if ex.resume_ended(complete=complete) is Action.STORE:
        ex.stored = writer.commit(flight.meta) is storage.Outcome.STORED
    else:
        writer.abort()
