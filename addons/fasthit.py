"""Fast hits (issue 21): cache hits of HTTP/1.1 clients answered in a layer below mitmproxy's HTTP machinery.

mitmproxy's cost per request is its flow path (HttpLayer, HttpStream, HTTPFlow, a round of hooks through
every addon), not its connection or TLS handling (mitmproxy-notes §12). The ``next_layer`` hook puts a
FastLayer where mitmproxy chose its HTTP layer for an HTTP/1 client connection (plain HTTP to the proxy, or
HTTP/1.1 inside an intercepted tunnel). It reads each complete request head strictly (fwdproxy.fasthead) and,
when the cache exchange serves it from a body in memory or one the disk tier reads whole
(addons/_fasthit.decide: the full path's own decision and rendering), writes the whole response with one
SendData, logs and counts it as the full path would. A stale-while-revalidate hit is answered only while the
cache addon's background revalidation of that key is in flight; the first one goes the full way and starts
it. The response worked out for a head is kept (``_Wire``) and sent again as is while the store says its
memory copy is unchanged and Age and Cache-Status would read the same. For a disk hit the kept response is
the head alone; the body is read again from its kept file, or, on a plain TCP client connection whose send
buffer is empty, written from the file to the socket with sendfile (``FastLayer._writable``,
docs/mitmproxy-notes.md §26).

Any other request, and everything after it on that connection, goes to mitmproxy's HttpLayer with the bytes
already read: from then on the connection behaves exactly as without this layer. It does not come back to
the fast layer after that exchange, because nothing public says when the HttpLayer is done with it: the
layer keeps per-connection state mitmproxy exposes no API for (the Http1Server's receive buffer and
request/response stream states, a response body still streaming to the client, server connections it keeps
for the next request, a WebSocket or a nested tunnel it may have switched to, its own timers). Taking the
client's bytes back would mean reading those private attributes (a patch under addons/_mitm/) to know that
no response is still being written and no byte is buffered; answering a pipelined request while the
HttpLayer's response before it is still streaming would reorder responses on the wire.
"""

# No `from __future__ import annotations` here: mitmdump -s executes this file outside sys.modules.
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from mitmproxy import connection
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers.http import HttpLayer, HTTPMode
from mitmproxy.proxy.mode_specs import RegularMode

from fwdproxy.accesslog import LogRecord, Repeat, TunnelMode
from fwdproxy.fasthead import Head, Leave, Tunnel, read_head
from fwdproxy.http_model import Headers, Request
from fwdproxy.metrics import FROM_CACHE, Served, classify
from fwdproxy.store.openfiles import Sent
from fwdproxy.store.tiered import DiskMark, MemoryMark, TieredStore
from fwdproxy_addons._fasthit import FastAnswer, decide
from fwdproxy_addons._mitm import http1 as _http1
from fwdproxy_addons._neighbours import Server
from fwdproxy_addons._settings import SettingsSource

Commands = Generator[commands.Command, Any, None]


def _str(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")  # mitmproxy's own header codec


PREPARED_MAX = 4096
"""Requests remembered as prepared (as many as fasthead remembers heads)."""


@dataclass(frozen=True, slots=True)
class _Prepared:
    head: Head
    """Kept so the id() it is filed under stays this head's."""
    cfg: object
    """The anonymizer's settings it was rewritten with."""
    credentials: str | None
    """Proxy-Authorization, as mitmproxy's headers.get joins several."""
    request: Request


@dataclass(frozen=True, slots=True)
class _Wire:
    """The response to one head from one memory copy, with what counting and logging it needs. Reused for
    the same head while ``since <= now < until`` (Age and Cache-Status ttl show whole seconds), the store
    says the copy is unchanged (``mark``), and cache and anonymizer settings are the same objects."""

    head: Head
    data: bytes
    """Status line, fields and body: the bytes the client gets (without the body with ``disk``)."""
    status: int
    cache_status: str
    content_type: str
    served: Served
    primary: str
    """The entry's primary key (the background revalidation's key)."""
    hit_key: str
    """``primary`` when the answer counts as served from the cache (the status page's hit counts), else ""."""
    credentials: str | None
    revalidate: bool
    since: float
    until: float
    store: TieredStore
    config: object
    cfg: object
    mark: MemoryMark | None
    """The memory copy ``data`` (head and body) was made from."""
    disk: DiskMark | None
    """Else the disk entry whose body file is read again after ``data`` (the head) for each hit; neither:
    never reused."""


class FastHits:
    """Declares ``fwd_no_fast_hits`` and installs the FastLayer on HTTP/1 client connections."""

    def __init__(
        self,
        source: SettingsSource | None = None,
        *,
        cache: Any = None,
        access: Any = None,
        guard: Any = None,
        anonymize: Any = None,
        admin: Any = None,
        accesslog: Any = None,
        server: Server | None = None,
    ) -> None:
        """The neighbours are the addons whose hooks a hit passes through on the full path, handed over by
        ``chain()``; loaded alone (without a cache) the layer is never installed. ``server``: mitmproxy's
        Proxyserver, whose client transports a disk hit's body is written to directly (§26)."""
        self.source = source or SettingsSource()
        self.server = server or Server()
        self.enabled = not self.source.given.no_fast_hits
        self.cache, self.access, self.guard = cache, access, guard
        self.anonymize, self.admin, self.accesslog = anonymize, admin, accesslog
        self.prepared: dict[int, _Prepared] = {}
        self.wires: dict[int, _Wire] = {}
        """The responses worked out for recent heads (by id, as fasthead returns one Head per bytes)."""
        self.logged: dict[int, tuple[_Wire, Repeat]] = {}
        """The access log's record of the response kept in ``wires`` for a head (by the head's id, as there)."""

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(loader, "fwd_no_fast_hits")

    def configure(self, updated: set[str]) -> None:
        self.enabled = not self.source.current().no_fast_hits

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        chosen = nextlayer.layer
        if not self.enabled or type(chosen) is not HttpLayer or self.cache is None:
            return
        context = nextlayer.context
        client = context.client
        if client.transport_protocol != "tcp" or client.alpn not in (None, b"", b"http/1.1"):
            return  # HTTP/2 and HTTP/3 clients keep mitmproxy's layer
        if not isinstance(client.proxy_mode, RegularMode):
            return  # a forward proxy's layer: reverse, transparent or upstream modes keep mitmproxy's
        if chosen.mode is HTTPMode.regular:
            if nextlayer.data_client().startswith(b"CONNECT "):
                return  # a tunnel: mitmproxy's layer opens it, and the next_layer inside asks again
            tunnel = None
        elif chosen.mode is HTTPMode.transparent and context.server.address is not None:
            host, port = context.server.address[:2]
            tunnel = Tunnel("https" if context.server.tls else "http", host, port)
        else:
            return
        nextlayer.layer = FastLayer(context, chosen, self, tunnel)

    # -- one request ----------------------------------------------------------------------------------

    def _prepare(self, head: Head) -> "_Prepared":
        """The request as the cache addon would see it after Access and Anonymize (Proxy-Authorization taken
        out, identifying fields rewritten), remembered per head: fasthead returns the same Head object for
        the same bytes, and the rewrite depends only on them and the anonymizer's settings."""
        cfg = self.anonymize.cfg if self.anonymize is not None else None
        known = self.prepared.get(id(head))
        if known is not None and known.head is head and known.cfg is cfg:
            return known
        credentials: list[bytes] = []
        fields: list[tuple[bytes, bytes]] = []
        for name, value in head.fields:
            if name.lower() == b"proxy-authorization":
                credentials.append(value)
            else:
                fields.append((name, value))
        if self.anonymize is not None:
            fields = self.anonymize.rewrite_request(fields, head.url)
        request = Request(head.method, head.url, Headers(tuple((_str(k), _str(v)) for k, v in fields)))
        prepared = _Prepared(head, cfg, _str(b", ".join(credentials)) if credentials else None, request)
        if len(self.prepared) >= PREPARED_MAX:
            self.prepared.clear()
        self.prepared[id(head)] = prepared
        return prepared

    def answer(
        self,
        client: connection.Client,
        head: Head,
        started: float,
        direct: "Callable[[], int | None] | None" = None,
    ) -> bytes | Sent | None:
        """The bytes of the whole response to ``head`` when it is a memory hit the full path would serve as
        is; None hands the request to the full path. Logs and counts what it answers.

        ``direct``: when called, the client socket's descriptor if bytes may be written to it directly now
        (FastLayer._writable). A disk hit answered again from its body file is then written there with
        sendfile (TieredStore.disk_send) and the answer is what the socket did not take (``Sent``)."""
        # Cache.store and Cache.config are properties over the cache service: read it once per hit.
        service = self.cache.service
        store = service.store
        if store is None:
            return None
        anonymize = self.anonymize
        cfg = anonymize.cfg if anonymize is not None else None
        known = self.wires.get(id(head))
        wire: _Wire | None = None
        data: bytes | None = None
        out: int | None = None
        """The socket a disk body goes to by sendfile, once every check below has passed."""
        if (
            known is not None
            and known.head is head
            and known.since <= started < known.until
            and known.store is store
            and known.config is service.config
            and known.cfg is cfg
        ):
            # The very response the steps below gave this head from this entry, this second: from a memory
            # copy the store says is unchanged, or the same head and the body read again from its file.
            if known.mark is not None:
                if store.unchanged(known.mark):
                    data = known.data
            elif known.disk is not None:
                if direct is not None and known.disk.path is not None and (out := direct()) is not None:
                    data = known.data  # the head; the body follows it from the file (checked there)
                else:
                    body = store.disk_body(known.disk)
                    if body is not None and len(body) == known.served.body_bytes:
                        data = known.data + body
        if data is not None and known is not None:
            wire = known
            credentials = known.credentials
        else:
            if self.admin is not None and self.admin.owns(head.host):
                return None
            prepared = self._prepare(head)
            credentials = prepared.credentials
        if self.access is not None and not self.access.admits(client, credentials):
            return None  # 403/407: the full path answers it
        if self.guard is not None and self.guard.may_target_self(head.port, client.sockname):
            return None  # the loop check may have to resolve a name
        if wire is None or data is None:
            worked = self._wire(head, prepared, store, cfg, started)
            if worked is None:
                return None
            wire, data = worked
            out = None
        if wire.revalidate and not self._revalidating(wire.primary):
            return None  # RFC 5861 §3: the full path starts the background revalidation (once per key)
        if out is not None and wire.disk is not None:
            sent = store.disk_send(wire.disk, data, out)
            if sent is None:
                # Not the file this head was worked out from any more; nothing was written: as above when
                # the body file changed, the response is worked out anew (through memory).
                return self.answer(client, head, started)
            # Counted as a sendfile hit only if some of the body went that way: a socket that took nothing
            # (or part of the head) leaves the whole body to mitmproxy's writer, read like any other.
            by_sendfile = sent.written > len(data)
            self._account(
                client, head, wire, len(data) + wire.served.body_bytes, started, sendfile=by_sendfile
            )
            return sent
        self._account(client, head, wire, len(data), started)
        return data

    def _revalidating(self, primary: str) -> bool:
        """Whether the cache's CacheService has a background revalidation of ``primary`` in flight (started by
        the full path for an earlier stale-while-revalidate hit): then the full path would start none, only
        answer."""
        return primary in self.cache.service.revalidating

    def _wire(
        self, head: Head, prepared: _Prepared, store: Any, cfg: object, now: float
    ) -> "tuple[_Wire, bytes] | None":
        """The response to ``head`` worked out in full (the cache exchange's hit decision, the anonymizer's
        response rewrite) and its bytes, remembered for as long as it stays the same: with the body when it
        is a memory copy, without it when it was read from a body file (read again for each hit)."""
        cache = self.cache
        fast = decide(prepared.request, store, cache.config, now, disk_max=store.disk.read_whole_max)
        if fast is None:
            return None
        rendered = self._render(fast, head.method)
        if rendered is None:
            return None
        wire_head, cache_status, content_type = rendered
        outcome = classify(cache_status or None)
        mark = disk = None
        if fast.until > now:
            mark = store.memory_mark(fast.key)
            if mark is None and fast.from_disk and fast.whole:
                disk = store.disk_mark(fast.key)
        data = wire_head + fast.body
        wire = _Wire(
            head=head,
            data=wire_head if disk is not None else data,
            status=fast.status,
            cache_status=cache_status,
            content_type=content_type,
            served=Served(outcome, head.host.lower(), len(fast.body)),
            primary=fast.primary,
            hit_key=fast.primary if outcome in FROM_CACHE else "",
            credentials=prepared.credentials,
            revalidate=fast.revalidate,
            since=now,
            until=fast.until,
            store=store,
            config=cache.config,
            cfg=cfg,
            mark=mark,
            disk=disk,
        )
        if mark is not None or disk is not None:
            if len(self.wires) >= PREPARED_MAX:
                self.wires.clear()
            self.wires[id(head)] = wire
        return wire, data

    def _render(self, fast: FastAnswer, method: str) -> tuple[bytes, str, str] | None:
        """(status line and header bytes, Cache-Status, Content-Type) as the full path sends them after the
        anonymizer's response hooks; None when mitmproxy would read the body to the connection's end."""
        out = (*fast.fields, (b"Cache-Status", fast.cache_status))
        if self.anonymize is not None:
            out = self.anonymize.rewrite_response(out)
        if not (
            fast.status in (204, 304)
            or method == "HEAD"
            or any(k.lower() == b"content-length" for k, _ in out)
        ):
            return None
        lines = b"".join(k + b": " + v + b"\r\n" for k, v in out)
        wire = b"HTTP/1.1 %d %s\r\n%s\r\n" % (fast.status, fast.reason, lines)
        return wire, _field(out, b"cache-status"), _field(out, b"content-type")

    def _account(
        self,
        client: connection.Client,
        head: Head,
        wire: "_Wire",
        sent: int,
        started: float,
        *,
        sendfile: bool = False,
    ) -> None:
        """The metrics and the access log line the full path's response hooks give a hit."""
        if self.admin is not None:
            self.admin.record(wire.served, wire.hit_key, fast=True, sendfile=sendfile)
        log = self.accesslog
        if log is not None and log.wanted():
            ended = time.time()
            tunnel = (
                TunnelMode.INTERCEPTED
                if head.scheme == "https" and client.tls_established
                else TunnelMode.NONE
            )
            known = self.logged.get(id(head))
            if (
                known is None
                or known[0] is not wire
                or known[1].record.tunnel is not tunnel
                or known[1].record.bytes != sent
            ):
                rec = LogRecord(
                    time=started,
                    elapsed=0.0,
                    client="",
                    method=head.method,
                    url=head.url,
                    status=wire.status,
                    bytes=sent,
                    outcome=wire.served.outcome,
                    cache_status=wire.cache_status,
                    content_type=wire.content_type,
                    tunnel=tunnel,
                )
                known = (wire, log.repeat(rec))
                if self.wires.get(id(head)) is wire:  # a response sent again: so will its line be
                    if len(self.logged) >= PREPARED_MAX:
                        self.logged.clear()
                    self.logged[id(head)] = known
            # The line the record above gives with this request's time, duration and client.
            log.record_repeat(
                known[1],
                started,
                max(0.0, ended - started),
                str(client.peername[0]) if client.peername else "",
            )


_UNKNOWN: Any = object()


def _field(fields: tuple[tuple[bytes, bytes], ...], lower: bytes) -> str:
    values = [v for k, v in fields if k.lower() == lower]
    return _str(b", ".join(values)) if values else ""


class FastLayer(layer.Layer):
    """Answers memory hits on one client connection until a request needs the full path, then hands the
    connection (and the bytes read) to mitmproxy's HttpLayer for good."""

    def __init__(self, context: Any, inner: HttpLayer, hits: FastHits, tunnel: Tunnel | None) -> None:
        super().__init__(context)
        # Invisible in the stack, as mitmproxy's NextLayer is: layers find their parents by position.
        context.layers.remove(self)
        self.inner = inner
        self.hits = hits
        self.tunnel = tunnel
        self.buf = b""
        self.raw = b""
        """The last head read that was the whole buffer, and ``head`` what read_head made of it."""
        self.head: Head | None = None
        self.handed = False
        self.closed = False
        self.start: events.Start | None = None
        self.wakeup: commands.RequestWakeup | None = None
        self.since = time.monotonic()
        """When the connection last became idle (the header timeout closes it after that long)."""
        self.transport: Any = _UNKNOWN
        """The client's transport under mitmproxy's writer, looked up on the first disk hit (None: no direct
        writes on this connection)."""
        self.cut = False
        """A body file ended early after part of its response was written: close once the rest is sent."""

    def __repr__(self) -> str:
        return f"FastLayer({'handed over' if self.handed else 'answering'}: {self.inner!r})"

    def handle_event(self, event: events.Event) -> Commands:
        if type(event) is events.DataReceived and not self.handed and not self.closed:
            if event.connection is self.context.client:
                # Requests: the one event on a fast hit's path (_receive is a plain call, not a generator).
                answered = self._receive(event.data)
                if answered is not None:
                    if answered:
                        yield commands.SendData(self.context.client, answered)
                    self.since = time.monotonic()
                    if self.cut:
                        # A response that cannot be finished: the client sees it end short, never a wrong byte.
                        self.closed = True
                        yield commands.CloseConnection(self.context.client)
                        return
                if self.buf:
                    # A request for the full path, or part of a head: mitmproxy's layer reads it (with its
                    # header timeout and its strict-head checks) and everything after it.
                    yield from self._hand_over(None)
            else:
                yield from self._hand_over(event)
        elif type(event) is events.Wakeup and event.command is self.wakeup:
            self.wakeup = None  # our timer: never the HttpLayer's business (it would not know the command)
            if not self.handed:
                yield from self._on_wakeup()
        elif self.closed:
            return
        elif self.handed:
            yield from self.inner.handle_event(event)
        elif type(event) is events.Start:
            yield from self._start(event)
        else:
            yield from self._hand_over(event)

    def _handle_event(self, event: events.Event) -> Commands:
        yield from self.handle_event(event)  # pragma: no cover (handle_event is overridden whole)

    def _start(self, event: events.Start) -> Commands:
        self.start = event
        client = self.context.client
        if (timeout := _http1.HEADER_TIMEOUT.seconds) > 0:
            # The header timeout's clock, as addons/_http1 runs it for mitmproxy's layer: from the connection's
            # start for its first HTTP layer, else from now (a tunnel's inner layer).
            waited = (
                0.0
                if client in _http1.HTTP_STARTED
                else time.time() - (client.timestamp_start or time.time())
            )
            self.since = time.monotonic() - max(0.0, waited)
            self.wakeup = commands.RequestWakeup(max(0.0, timeout - waited))
            yield self.wakeup
        _http1.HTTP_STARTED.add(client)

    def _on_wakeup(self) -> Commands:
        timeout = _http1.HEADER_TIMEOUT.seconds
        if timeout <= 0:
            return
        left = self.since + timeout - time.monotonic()
        if left > 0:
            self.wakeup = commands.RequestWakeup(left)
            yield self.wakeup
        else:
            # Idle and kept alive (this layer never holds part of a head): closed without a word, as the
            # full path does after the header timeout (addons/_http1.py).
            self.closed = True
            yield commands.CloseConnection(self.context.client)

    def _receive(self, data: bytes) -> bytes | None:
        """The responses to the requests at the start of the buffer (with ``data``) that the fast layer
        answers, in order, less what went to the socket directly; None: none answered. What is left in
        ``self.buf`` is for the full path, or part of a head."""
        buf = self.buf + data if self.buf else data
        started = time.time()
        out: list[bytes] = []
        answered = False
        while buf:
            head = self.head
            if head is None or buf != self.raw:
                read = read_head(buf, self.tunnel)
                if isinstance(read, Leave):
                    break
                head = read
                if head.size == len(buf):
                    # A client repeating itself sends this head alone again: the same bytes, read the same way.
                    self.raw, self.head = buf, head
            # Direct writes only while nothing of this batch waits for the writer (the order on the wire).
            wire = self.hits.answer(self.context.client, head, started, None if out else self._writable)
            if wire is None:
                break
            answered = True
            buf = buf[head.size :]
            if isinstance(wire, Sent):
                if wire.rest:
                    out.append(wire.rest)
                if not wire.whole:
                    self.cut, buf = True, b""
                    break
            else:
                out.append(wire)
        self.buf = buf
        return b"".join(out) if answered else None

    def _writable(self) -> int | None:
        """The client socket's descriptor when a response may be written to it directly now, beside
        mitmproxy's writer (docs/mitmproxy-notes.md §26): a plain TCP client (no TLS layer turns our bytes
        into records), its transport open with nothing buffered, so every byte sent before is already in
        the socket and ours follow them; else None."""
        transport = self.transport
        if transport is _UNKNOWN:
            client = self.context.client
            transport = None if client.tls else self.hits.server.client_transport(client)
            self.transport = transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return None
        sock = transport.get_extra_info("socket")
        return None if sock is None else int(sock.fileno())

    def _hand_over(self, event: events.Event | None) -> Commands:
        self.handed = True
        buffered, self.buf = self.buf, b""
        yield from self.inner.handle_event(self.start or events.Start())
        if buffered:
            yield from self.inner.handle_event(events.DataReceived(self.context.client, buffered))
        if event is not None:
            yield from self.inner.handle_event(event)


addons = [FastHits()]
