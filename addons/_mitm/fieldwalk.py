"""A patch to two of mitmproxy's per-message dataclass walks (not an addon): each compiled once per class.

mitmproxy builds a ``RequestData`` or ``ResponseData`` for every request and response it parses or makes,
and (unless Python runs with ``-O``) ``MessageData.__post_init__`` then type-checks every field through
``dataclasses.fields()`` and ``typecheck.check_option_type``, which takes ``typing`` apart again for each
value: about 5% of a full-path hit's CPU. ``Hook.args`` walks ``dataclasses.fields()`` for every event
hook. Both answers depend only on the class, so :func:`apply` replaces them with versions that work the
class out once and keep it: the same checks (the same ``TypeError`` text, ints accepted for floats as
mitmproxy does), the same hook arguments. A field type the compiler does not know (anything but classes
and unions of classes) is still checked by ``check_option_type`` itself (docs/mitmproxy-notes.md §25).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from mitmproxy import hooks, http
from mitmproxy.utils import typecheck

from fwdproxy_addons._mitm.mark import marked

type Check = tuple[str, Any, tuple[type, ...] | None]
"""A field's name, its declared type, and the classes a value may be an instance of (None: ask typecheck)."""

_checks: dict[type, tuple[Check, ...]] = {}
_hook_fields: dict[type, tuple[str, ...]] = {}


def classes_for(typeinfo: Any) -> tuple[type, ...] | None:
    """The classes ``check_option_type`` accepts for ``typeinfo``, or None when it is not classes or a union of them."""
    origin = typing.get_origin(typeinfo)
    members = (
        typing.get_args(typeinfo) if origin is typing.Union or origin is types.UnionType else (typeinfo,)
    )
    found: list[type] = []
    for member in members:
        if (
            not isinstance(member, type)
            or typing.get_origin(member) is not None
            or member in (typing.Any, typing.TextIO, typing.BinaryIO)  # check_option_type: duck-typed IO
        ):
            return None
        found.append(member)
        if member is float:
            found.append(int)  # check_option_type lets an int through where a float is declared
    return tuple(found)


def checks_for(cls: type) -> tuple[Check, ...]:
    """One :data:`Check` per dataclass field of ``cls``, in field order."""
    found = _checks.get(cls)
    if found is None:
        found = _checks[cls] = tuple(
            (field.name, field.type, classes_for(field.type)) for field in dataclasses.fields(cls)
        )
    return found


def check_fields(self: object) -> None:
    """mitmproxy's ``MessageData.__post_init__``, with the class's checks compiled once."""
    for name, typeinfo, classes in checks_for(type(self)):
        value = getattr(self, name)
        if classes is None:
            typecheck.check_option_type(name, value, typeinfo)
        elif not isinstance(value, classes):
            raise TypeError(f"Expected {typeinfo} for {name}, but got {type(value)}.")


def hook_args(self: hooks.Hook) -> list[Any]:
    """mitmproxy's ``Hook.args``: the hook's field values in field order, the field names looked up once."""
    cls = type(self)
    names = _hook_fields.get(cls)
    if names is None:
        names = _hook_fields[cls] = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    return [getattr(self, name) for name in names]


def apply() -> None:
    """Replace ``MessageData.__post_init__`` (when mitmproxy defined it: not under ``-O``) and ``Hook.args``."""
    if "__post_init__" in vars(http.MessageData):
        http.MessageData.__post_init__ = marked(check_fields)  # type: ignore[method-assign]
    hooks.Hook.args = marked(hook_args)  # type: ignore[method-assign]
