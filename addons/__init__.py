"""Thin mitmproxy addons that adapt hooks to the fwdproxy package, installed as ``fwdproxy_addons``.

The repository keeps them in ``addons/``; pyproject maps that folder to the package ``fwdproxy_addons``
(setuptools ``package-dir``), so an installed fwdproxy claims no generic top-level name. Modules import each
other and the core by package name (``from fwdproxy_addons import _respond``, ``from fwdproxy import ...``);
only the mitmdump entry script, ``fwdproxy.py`` here, has to make that work under ``mitmdump -s`` (see it).
"""
