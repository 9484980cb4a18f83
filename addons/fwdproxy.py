"""The whole fwdproxy chain, in request order: ``mitmdump -s addons/fwdproxy.py --set fwd_...``."""

from __future__ import annotations

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons.access import Access
from addons.accesslog import AccessLog
from addons.admin import Admin
from addons.anonymize import Anonymize
from addons.cache import Cache
from addons.egress import Egress
from addons.errors import OriginErrors
from addons.guard import Guard
from addons.lifecycle import Lifecycle
from addons.readtimeout import ReadTimeout
from addons.strict import Strict
from addons.tunnel import Tunnel


def chain() -> list[object]:
    """Fresh instances of every fwdproxy addon, in the order their hooks must run."""
    anonymize = Anonymize()  # requests before the cache; anonymize.last has the last word on responses
    # Admin answers PURGE and http://fwdproxy.local/ in requestheaders, before the cache's request hook;
    # it and AccessLog come after the cache so their response hooks see the final Cache-Status.
    return [
        Lifecycle(),
        Access(),
        Strict(),
        Guard(),
        Tunnel(),
        anonymize,
        Cache(),
        Egress(),
        OriginErrors(),
        ReadTimeout(),
        Admin(),
        AccessLog(),
        anonymize.last,
    ]


addons = chain()
