"""The whole fwdproxy chain, in request order: ``mitmdump -s addons/fwdproxy.py --set fwd_...``."""

from __future__ import annotations

import logging

from mitmproxy import exceptions

import addons as _bootstrap  # noqa: F401  (first: makes the fwdproxy package importable under mitmdump -s)
from addons.access import Access
from addons.accesslog import AccessLog
from addons.admin import Admin
from addons.anonymize import Anonymize
from addons.cache import Cache
from addons.egress import Egress
from addons.errors import OriginErrors
from addons.fasthit import FastHits
from addons.guard import Guard
from addons.lifecycle import Lifecycle
from addons.origins import Origins
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
        Origins(),
        Admin(),
        AccessLog(),
        FastHits(),  # installs its layer in next_layer; asks the addons above through their public methods
        anonymize.last,
    ]


class _OptionErrorInOneLine(logging.Filter):
    """Under ``mitmdump -s``, a ``--set fwd_…`` value our ``configure`` rejects reaches mitmproxy's script
    loader (mitmproxy/addons/script.py ``script_error_handler``), which logs "error in script" with a whole
    traceback before mitmdump exits with status 1. The message of our OptionsError already names the option
    and what it expects: show that one line instead. Any other error keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, exceptions.OptionsError):
            record.msg, record.args, record.exc_info, record.exc_text = f"fwdproxy: {exc}", (), None, None
        return True


_script_log = logging.getLogger("mitmproxy.addons.script")
if not any(isinstance(f, _OptionErrorInOneLine) for f in _script_log.filters):
    _script_log.addFilter(_OptionErrorInOneLine())

addons = chain()
