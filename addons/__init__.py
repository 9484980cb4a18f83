"""Thin mitmproxy addons that adapt hooks to the fwdproxy package.

``mitmdump -s addons/<name>.py`` puts this folder first on ``sys.path`` while the script is imported, and the
aggregator here is called ``fwdproxy.py``: a plain ``import fwdproxy`` would then find that script instead of
the package. Every addon module therefore starts with ``import addons as _bootstrap``, and this file imports the real
package with the folder out of the way (the repository root is added for source checkouts).
"""

import os
import sys

_pkg = sys.modules.get("fwdproxy")
if _pkg is None or not hasattr(_pkg, "__path__"):
    _here = os.path.dirname(os.path.abspath(__file__))
    _saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.append(os.path.dirname(_here))
    sys.modules.pop("fwdproxy", None)
    try:
        import fwdproxy  # noqa: F401  (the package, cached in sys.modules for every later import)
    finally:
        sys.path[:] = _saved
