"""The typed settings the addons read: handed over by `fwdproxy run`, or parsed from mitmproxy's ``fwd_*`` options.

`fwdproxy run` parses flags and the TOML file into one ``Settings`` record (fwdproxy/config.py) and gives it
to ``chain()``, which gives this one ``SettingsSource`` to every addon: nothing is turned back into text.
Under ``mitmdump -s addons/fwdproxy.py --set fwd_...=...`` the addons declare the ``fwd_*`` options from the
options table (fwdproxy/options.py) and the same table parses what the user set. In both cases an addon's
``configure`` asks ``current()`` and gets typed values; the result is kept while the option values stay the
same, so the chain's dozen addons parse (and read the TOML file) once per change, not once each.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mitmproxy import ctx, exceptions

from fwdproxy import config, options
from fwdproxy.config import Resolved, Settings, from_mitm, resolved


class SettingsSource:
    """One per chain: the settings given, overridden by any ``fwd_*`` option set away from its default."""

    def __init__(self, given: Settings | None = None) -> None:
        self.given = given if given is not None else Settings()
        self._seen: tuple[tuple[str, Any], ...] | None = None
        self._current = self.given
        self._files: dict[tuple[str, str], dict[str, Any]] = {}
        """The TOML files fwd_config and fwd_anonymize_config name, as read (while the option stays)."""

    def declare(self, loader: Any, *names: str) -> None:
        """``loader.add_option`` for these ``fwd_*`` options, from the table (once per mitmproxy instance)."""
        for name in names:
            opt = options.BY_MITM[name]
            if name in loader.master.options:
                continue  # declared by another addon of the chain: mitmproxy options are global
            choices = list(opt.choices) if opt.choices else None
            loader.add_option(
                name,
                options.mitm_type(opt),
                options.mitm_default(opt),
                options.mitm_help(opt),
                choices=choices,
            )

    def current(self) -> Settings:
        """The settings now; OptionsError (naming the option) when a ``fwd_*`` value does not parse."""
        opts = ctx.options
        changed = []
        for name, opt in options.BY_MITM.items():
            if name in opts:
                value = getattr(opts, name)
                value = tuple(value) if isinstance(value, list | tuple) else value
                default = options.mitm_default(opt)
                if value != (tuple(default) if isinstance(default, list) else default):
                    changed.append((name, value))
        seen = tuple(changed)
        if seen != self._seen:
            try:
                values = dict(seen)
                named = {values.get("fwd_config"), values.get("fwd_anonymize_config")}
                self._files = {k: doc for k, doc in self._files.items() if k[0] in named}
                self._current = from_mitm(self.given, values, self._read) if seen else self._given_resolved()
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e
            self._seen = seen
        return self._current

    def _read(self, path: str, where: str) -> dict[str, Any]:
        if (path, where) not in self._files:
            self._files[path, where] = config.read_toml(path, where)
        return self._files[path, where]

    def _given_resolved(self) -> Settings:
        if self.given.resolved is None:
            self.given = _with_resolved(self.given)
        return self.given

    def resolved(self) -> Resolved:
        """The typed tables of the current settings."""
        s = self.current()
        assert s.resolved is not None
        return s.resolved


def _with_resolved(s: Settings) -> Settings:
    return dataclasses.replace(s, resolved=resolved(s))
