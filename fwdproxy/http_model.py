"""Small request/response records of our own, so the pure core never sees a mitmproxy type."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

Field = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Headers:
    """An ordered, case-insensitive, multi-valued header list; immutable."""

    fields: tuple[Field, ...] = ()
    _index: dict[str, list[str]] | None = field(default=None, init=False, repr=False, compare=False)
    """Lower-case name -> values, built at the first lookup: a policy decision asks a dozen names."""
    _latin1: tuple[tuple[bytes, bytes], ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    """The fields encoded for the wire, made at the first ``latin1()``."""

    @classmethod
    def of(cls, fields: Iterable[Field] | dict[str, str] = ()) -> Headers:
        items = fields.items() if isinstance(fields, dict) else fields
        return cls(tuple((str(k), str(v)) for k, v in items))

    def latin1(self) -> tuple[tuple[bytes, bytes], ...]:
        """The fields as bytes for an HTTP/1 head (Latin-1, unencodable characters replaced), encoded once:
        a stored entry's served headers are one object for every hit within a second of Age."""
        encoded = self._latin1
        if encoded is None:
            encoded = tuple(
                (k.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for k, v in self.fields
            )
            object.__setattr__(self, "_latin1", encoded)
        return encoded

    def _by_name(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            index = {}
            for k, v in self.fields:
                index.setdefault(k.lower(), []).append(v)
            object.__setattr__(self, "_index", index)  # a cache of immutable data: still immutable outside
        return index

    def get_all(self, name: str) -> list[str]:
        """Every field line with this name, in order."""
        return list(self._by_name().get(name.lower(), ()))

    def get(self, name: str, default: str | None = None) -> str | None:
        """All values of the field joined with ", " (RFC 9110 §5.3), or default when absent."""
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return name.lower() in self._by_name()

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def without(self, *names: str) -> Headers:
        """A copy without the named fields (case-insensitive)."""
        drop = {n.lower() for n in names}
        return Headers(tuple((k, v) for k, v in self.fields if k.lower() not in drop))

    def with_(self, name: str, value: str) -> Headers:
        """A copy where the named field is replaced by one line with this value (kept in place if present)."""
        lname = name.lower()
        if lname not in self._by_name():
            return Headers((*self.fields, (name, value)))
        out: list[Field] = []
        done = False
        for k, v in self.fields:
            if k.lower() == lname:
                if not done:
                    out.append((k, value))
                    done = True
            else:
                out.append((k, v))
        if not done:
            out.append((name, value))
        return Headers(tuple(out))


@dataclass(frozen=True, slots=True)
class Request:
    """What the cache needs to know of a client request."""

    method: str
    """Upper-case method, e.g. "GET"."""
    url: str
    """Absolute URL as sent: scheme://host[:port]/path?query."""
    headers: Headers = Headers()


@dataclass(frozen=True, slots=True)
class Response:
    """What the cache needs to know of a response (the body is kept elsewhere)."""

    status: int
    headers: Headers = Headers()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The metadata of one stored response (the body lives in the store beside it)."""

    url: str
    """Absolute URL of the request that produced it."""
    status: int
    reason: str
    headers: Headers
    """Response header fields as received, minus hop-by-hop ones and those named in Connection."""
    request_time: float
    """When the request that produced it was sent (RFC 9111 §4.2.3 request_time), epoch seconds."""
    response_time: float
    """When the response was received (RFC 9111 §4.2.3 response_time), epoch seconds."""
    body_length: int
    """Exact length of the stored body in bytes."""
    vary_request: Headers = Headers()
    """The request header fields that this response's Vary names, as the request carried them (§4.1)."""
    rule: str = ""
    """Name of the cache rule that changed how it is cached ("" when plain RFC rules applied)."""
    lifetime: float | None = None
    """The freshness lifetime the proxy computed when it stored (or last freshened) it, seconds; None in
    entries stored before fwdproxy recorded it. `cache ls/show` explain from it (cache.record_lifetime)."""
    lifetime_source: str = ""
    """Where the origin's part of that lifetime came from: a freshness.Source value (max-age, s-maxage,
    expires, heuristic, none)."""
    rule_detail: str = ""
    """How the cache rule changed the lifetime: rule-immutable, rule-min-ttl, rule-max-ttl; "" if it did not."""
    pieces: tuple[tuple[int, int], ...] = ()
    """A partial entry (RFC 9111 §3.3, fwdproxy/cache/partial.py): the byte ranges of the representation its
    body holds, both ends inclusive, sorted, disjoint, concatenated in that order; () for a complete entry."""
    full_length: int = -1
    """A partial entry: the length of the whole representation (its Content-Range complete-length)."""
    facts: object = field(default=None, init=False, repr=False, compare=False)
    """What its headers say for the cache policy (fwdproxy.cache.facts.Facts), worked out at the first use and
    kept here: a cache of immutable data, so the record stays immutable outside."""
