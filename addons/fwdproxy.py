"""The whole fwdproxy chain, in request order: ``mitmdump -s addons/fwdproxy.py --set fwd_...``."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys


def _make_importable() -> None:
    """Make the packages ``fwdproxy`` and ``fwdproxy_addons`` importable when mitmdump loads this file.

    ``mitmdump -s`` puts this file's folder first on ``sys.path`` while it loads the script, and there this
    very file would be found as ``fwdproxy`` instead of the package: the package is imported with the folder
    out of the way, before anything else. An installed fwdproxy (editable or not) provides both packages; in a
    source checkout that is not installed, the repository root (this folder's parent) is added to
    ``sys.path`` once and this folder is registered as ``fwdproxy_addons``. Nothing else in the folder
    touches ``sys.path``: a single addon loaded alone (``mitmdump -s addons/egress.py``) gets here through
    its own ``import fwdproxy``.
    """
    if __name__ == "fwdproxy":
        # Another script of this folder, loaded alone (mitmdump -s addons/egress.py), imported the package
        # while the folder was first on sys.path and found this file: the package takes its place (the import
        # statement hands over whatever sys.modules holds once this file has run).
        del sys.modules["fwdproxy"]
    if hasattr(sys.modules.get("fwdproxy"), "__path__") and "fwdproxy_addons" in sys.modules:
        return  # imported as fwdproxy_addons.fwdproxy (fwdproxy run), or loaded again
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        if importlib.util.find_spec("fwdproxy") is None:
            root = os.path.dirname(here)
            saved.append(root)
            sys.path.append(root)
        import fwdproxy  # noqa: F401  (the package, cached in sys.modules for every later import)

        if importlib.util.find_spec("fwdproxy_addons") is None:
            spec = importlib.util.spec_from_file_location(
                "fwdproxy_addons", os.path.join(here, "__init__.py"), submodule_search_locations=[here]
            )
            assert spec is not None and spec.loader is not None
            sys.modules["fwdproxy_addons"] = module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved


_make_importable()

from mitmproxy import exceptions

from fwdproxy.config import Settings
from fwdproxy_addons import _mitm
from fwdproxy_addons._neighbours import Server
from fwdproxy_addons._settings import SettingsSource
from fwdproxy_addons.access import Access
from fwdproxy_addons.accesslog import AccessLog
from fwdproxy_addons.admin import Admin
from fwdproxy_addons.anonymize import Anonymize
from fwdproxy_addons.cache import Cache
from fwdproxy_addons.egress import Egress
from fwdproxy_addons.errors import OriginErrors
from fwdproxy_addons.fasthit import FastHits
from fwdproxy_addons.guard import Guard
from fwdproxy_addons.lifecycle import Lifecycle
from fwdproxy_addons.origins import Origins
from fwdproxy_addons.readtimeout import ReadTimeout
from fwdproxy_addons.strict import Strict
from fwdproxy_addons.tunnel import Tunnel


def chain(settings: Settings | None = None, server: Server | None = None) -> list[object]:
    """Fresh instances of every fwdproxy addon, in the order their hooks must run.

    ``settings``: typed, from `fwdproxy run` (flags and the TOML file); None under mitmdump, where the
    ``fwd_*`` options are parsed with the same table. Addons that need each other are handed over here, and
    ``server`` (mitmproxy's Proxyserver, when the caller made it; else found once, see addons/_neighbours.py)
    to those that need the listeners or live connections.
    Raises UnsupportedMitmproxy (an OptionsError) on a mitmproxy the patches were not written for.
    """
    _mitm.install()  # every adaptation of mitmproxy's internals, checked first (addons/_mitm/__init__.py)
    source = SettingsSource(settings)
    server = server or Server()
    anonymize = Anonymize(source)  # requests before the cache; anonymize.last has the last word on responses
    cache, egress = Cache(source), Egress(source)
    # Admin answers PURGE and http://fwdproxy.local/ in requestheaders, before the cache's request hook;
    # it and AccessLog come after the cache so their response hooks see the final Cache-Status.
    admin = Admin(source, cache=cache, egress=egress, server=server)
    access, guard, accesslog = Access(source), Guard(admin, server), AccessLog(source)
    return [
        Lifecycle(source, cache=cache, admin=admin, server=server),
        access,
        Strict(source, server),
        guard,
        Tunnel(source),
        anonymize,
        cache,
        egress,
        OriginErrors(source),
        ReadTimeout(source, server),
        Origins(source),
        admin,
        accesslog,
        # Installs its layer in next_layer; asks the addons above through their public methods.
        FastHits(
            source,
            cache=cache,
            access=access,
            guard=guard,
            anonymize=anonymize,
            admin=admin,
            accesslog=accesslog,
            server=server,
        ),
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

if __name__ != "fwdproxy":  # not while standing in for the package (see _make_importable)
    addons = chain()
