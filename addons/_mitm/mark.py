"""The mark every replacement of a mitmproxy attribute carries, so the register can tell ours from theirs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PATCHED = "_fwd_patched"


def marked[F: Callable[..., Any]](func: F) -> F:
    """``func``, marked as fwdproxy's replacement of a mitmproxy attribute."""
    setattr(func, PATCHED, True)
    return func


def is_ours(obj: object) -> bool:
    """True when ``obj`` (a function, or a class we subclassed) is fwdproxy's replacement."""
    return bool(getattr(obj, PATCHED, False))
