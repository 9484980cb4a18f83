"""Anonymity (issue 5): strip what identifies the client before the cache sees a request; hide backends."""

from __future__ import annotations

import logging

from mitmproxy import http

from fwdproxy.anonymize import (
    AnonymizeConfig,
    Level,
    anonymize_request,
    anonymize_response,
    touched,
)
from fwdproxy.http_model import Headers
from fwdproxy_addons._settings import SettingsSource

log = logging.getLogger("fwdproxy.anonymize")


def _str(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")  # mitmproxy's own header codec: round-trips any byte


def _bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class Anonymize:
    """Rewrites request headers in ``requestheaders`` and strips response headers at the configured level.

    ``requestheaders`` runs before the cache's ``request`` hook, so cache keys and Vary matching see the
    rewritten headers: one client's identifying headers neither split entries nor reach another client.
    The flow is only touched when a header on the level's lists is present (or strict rewrites every
    request), so a clean request costs one pass over its header names.

    Put this addon before the cache and ``self.last`` after every other addon (see AnonymizeResponses).
    """

    def __init__(self, source: SettingsSource | None = None) -> None:
        self.source = source or SettingsSource()
        self._apply(AnonymizeConfig())
        self.last = AnonymizeResponses(self)

    def _apply(self, cfg: AnonymizeConfig) -> None:
        self.cfg = cfg
        t = touched(cfg)
        self.request_names = frozenset(_bytes(n) for n in t.request)
        self.request_prefixes = tuple(_bytes(p) for p in t.request_prefixes)
        self.every_request = t.every_request
        self.response_names = frozenset(_bytes(n) for n in t.response)

    def load(self, loader):  # type: ignore[no-untyped-def]
        self.source.declare(loader, "fwd_anonymize", "fwd_anonymize_config")

    def configure(self, updated: set[str]) -> None:
        s = self.source.current()
        cfg = self.source.resolved().anonymize
        file_level = s.sections.get("anonymize", {}).get("level")
        if cfg != self.cfg and file_level not in (None, s.anonymize):
            # Flags override the file, as everywhere in fwdproxy; say so rather than surprise a mitmdump user.
            log.info(
                "anonymize level %s (fwd_anonymize) overrides anonymize.level = %r in %s",
                s.anonymize,
                file_level,
                s.anonymize_config or s.config,
            )
        if cfg != self.cfg:
            self._apply(cfg)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # answered by the proxy (403, 407): nothing is forwarded
        req = flow.request
        fields = list(req.headers.fields)
        # Only strict reads the URL (Referer same-site check); building it costs a few string joins.
        after = self.rewrite_request(fields, req.url if self.cfg.level is Level.STRICT else "")
        if after is fields:
            return
        req.headers = http.Headers(after)
        if log.isEnabledFor(logging.DEBUG):
            gone = sorted({k.lower() for k, _ in fields} - {k.lower() for k, _ in after})
            # Names only: the values are what identifies the client.
            shown = ", ".join(_str(n) for n in gone) or "nothing"
            log.debug("%s %s: removed %s", req.method, req.pretty_url, shown)

    def rewrite_request(self, fields: list[tuple[bytes, bytes]], url: str) -> list[tuple[bytes, bytes]]:
        """The request fields as ``requestheaders`` leaves them (for the fast hit layer, which has no flow)."""
        if not self.every_request and not any(
            (n := k.lower()) in self.request_names or n.startswith(self.request_prefixes) for k, _ in fields
        ):
            return fields
        before = Headers(tuple((_str(k), _str(v)) for k, v in fields))
        after = anonymize_request(before, url if self.cfg.level is Level.STRICT else "", self.cfg)
        return fields if after == before else [(_bytes(k), _bytes(v)) for k, v in after]

    def rewrite_response(self, fields: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
        """The response fields as ``strip_response`` leaves them."""
        if not self.response_names or not any(k.lower() in self.response_names for k, _ in fields):
            return fields
        after = anonymize_response(Headers(tuple((_str(k), _str(v)) for k, v in fields)), self.cfg)
        return tuple((_bytes(k), _bytes(v)) for k, v in after)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Before the cache stores the response (so entries carry no backend names) and before a streamed
        # response's headers go out. mitmproxy also calls this for a response an addon set in `request`.
        self.strip_response(flow)

    def strip_response(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None:
            return
        fields = resp.headers.fields
        after = self.rewrite_response(fields)
        if after is not fields:
            resp.headers = http.Headers(list(after))


class AnonymizeResponses:
    """The last word on response headers: strips them again after every other addon's ``response`` hook.

    A later addon may replace the response there, e.g. the cache answering from a stored response after
    the origin's 304; entries stored before strict (or a response_remove rule) was switched on still carry
    backend names. Headers of a streamed response went out after ``responseheaders``: nothing to do then.
    """

    def __init__(self, anonymize: Anonymize) -> None:
        self.anonymize = anonymize

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and not flow.response.stream:
            self.anonymize.strip_response(flow)


_anonymize = Anonymize()
addons = [_anonymize, _anonymize.last]
