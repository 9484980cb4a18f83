"""What `fwdproxy run` logs at each verbosity, set up once per process (the supervisor and each worker)."""

from __future__ import annotations

import logging
import sys

REQUESTS = "fwdproxy.request"
"""One line per answered request (method, URL, status, Cache-Status, ms), from -v on."""
FRAME_LOGGERS = ("hpack", "h2", "h11")
"""Protocol libraries that log every header block and frame at DEBUG: only at -vv."""


def setup(quiet: bool, verbosity: int, prefix: str = "") -> None:
    """Log to stderr: warnings only with ``quiet``; ``verbosity`` 0 is the start banner, warnings and what
    changes (INFO); 1 (-v) adds one line per request, tunnel decisions and fwdproxy's own debugging; 2 (-vv)
    adds mitmproxy's connection log and HTTP/2 frame debugging."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{prefix}: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbosity else logging.INFO)
    # mitmproxy logs every client and server connection at INFO: too chatty unless asked for twice.
    logging.getLogger("mitmproxy").setLevel(logging.INFO if verbosity >= 2 and not quiet else logging.WARNING)
    for name in FRAME_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity >= 2 and not quiet else logging.WARNING)
    logging.getLogger("mitmproxy.addons.proxyserver").addFilter(_no_listen_hint)
    logging.getLogger(REQUESTS).setLevel(logging.INFO if verbosity >= 1 and not quiet else logging.WARNING)


def _no_listen_hint(record: logging.LogRecord) -> bool:
    """Drop mitmproxy's "failed to listen … Try --mode regular@PORT" (a flag fwdproxy does not have): the
    proxy says in one line of its own why it cannot listen (runtime.listen_failure)."""
    return "failed to listen" not in record.getMessage()
