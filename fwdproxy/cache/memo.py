"""Facts derived from one stored response, computed once per object instead of once per request.

A stored response is immutable, and the store hands out the very same object for every lookup while the
entry is unchanged (store/tiered.py), so what its headers say (freshness lifetime, Cache-Control, Date,
corrected initial age) can be remembered by identity. The memo holds the object itself, so its id cannot
be reused by another while remembered; the oldest are forgotten first.
"""

from __future__ import annotations

from collections.abc import Callable

SIZE = 4096
"""Objects remembered per fact: more than the hot set of a busy proxy, a few MiB at most."""


class PerObject[K, V]:
    """``compute(obj)`` remembered by the identity of ``obj``."""

    def __init__(self, compute: Callable[[K], V], size: int = SIZE) -> None:
        self._compute = compute
        self._size = size
        self._known: dict[int, tuple[K, V]] = {}

    def __call__(self, obj: K) -> V:
        found = self._known.get(id(obj))
        if found is not None and found[0] is obj:
            return found[1]
        value = self._compute(obj)
        if len(self._known) >= self._size:
            self._known.pop(next(iter(self._known)), None)
        self._known[id(obj)] = (obj, value)
        return value


class PerObjectLatest[K, A, V]:
    """``compute(obj, arg)`` remembered by the identity of ``obj`` for the latest ``arg`` only.

    For facts that change slowly with time, such as the headers served at one Age: every hit on an entry
    within the same second gets the very same value (and so the same object, for memos further on).
    """

    def __init__(self, compute: Callable[[K, A], V], size: int = SIZE) -> None:
        self._compute = compute
        self._size = size
        self._known: dict[int, tuple[K, A, V]] = {}

    def __call__(self, obj: K, arg: A) -> V:
        found = self._known.get(id(obj))
        if found is not None and found[0] is obj and found[1] == arg:
            return found[2]
        value = self._compute(obj, arg)
        if found is None and len(self._known) >= self._size:
            self._known.pop(next(iter(self._known)), None)
        self._known[id(obj)] = (obj, arg, value)
        return value
