"""`fwdproxy env`: the environment that makes common clients use the proxy and trust its CA.

Why each variable (checked against each tool's documentation):

- ``http_proxy``/``https_proxy`` in lower case: curl reads only the lower-case ``http_proxy`` (the upper-case
  one is ignored since "httpoxy"), and wget and apt read the lower-case ones; Python (requests, pip, httpx,
  urllib), Go, cargo, git, Node (with ``NODE_USE_ENV_PROXY``) and Docker's CLI read either case. Both cases
  of ``NO_PROXY`` for the same reason.
- ``SSL_CERT_FILE``: OpenSSL's default bundle, so Python's ssl module, httpx, uv, Ruby and Go on Linux
  (crypto/x509 reads it) trust the proxy. ``REQUESTS_CA_BUNDLE`` (requests, so also many Python tools),
  ``PIP_CERT`` (pip's --cert; pip vendors its own requests), ``CURL_CA_BUNDLE`` (curl and requests),
  ``GIT_SSL_CAINFO`` (git over HTTPS, e.g. cargo git dependencies and go get), ``CARGO_HTTP_CAINFO`` (cargo,
  which ignores SSL_CERT_FILE). All point at one bundle: the system store plus the fwdproxy CA, because each
  of them *replaces* the default trust store rather than adding to it.
- ``NODE_EXTRA_CA_CERTS``: Node *adds* these to its built-in roots, so the fwdproxy CA alone is enough.
  ``NODE_USE_ENV_PROXY=1``: recent Node releases (24 and later) then honour HTTP(S)_PROXY for their own
  fetch and https modules; older ones ignore it.
- ``npm_config_proxy``/``npm_config_https_proxy``/``npm_config_noproxy``: npm's own settings (older npm
  versions do not read the environment). Yarn 1 reads the same npm_config variables.
- ``npm_config_cafile`` only when npm's own configuration names a ``ca`` or ``cafile``: npm hands that to
  Node as the ``ca`` of every TLS connection, which *replaces* Node's roots, NODE_EXTRA_CA_CERTS included,
  and makes Node parse the certificates into a new store per connection (the 145-certificate bundle cost
  about 80 ms per connection here, and delayed npm's tarball tunnels by up to 1.5 s). Without one, npm
  passes no ``ca``: Node uses its built-in public roots plus NODE_EXTRA_CA_CERTS, loaded once per process,
  so intercepted hosts are trusted through the fwdproxy CA and hosts passed through blind (or reached
  directly) through the public roots, at no cost per connection. With one (the development machine's
  /usr/etc/npmrc has ``cafile=/etc/ssl/certs/ca-certificates.crt``), NODE_EXTRA_CA_CERTS alone fails on
  every intercepted host with ``UNABLE_TO_VERIFY_LEAF_SIGNATURE`` (the forged leaf's issuer, the fwdproxy
  CA, is not in that file), and it cannot be undone from the environment: npm flattens its config layers
  in order, an empty or missing cafile in a later layer leaves the earlier one's certificates in place,
  and ``npm_config_ca=null`` becomes the one-element list ``["null"]``. So then, and when npm's
  configuration cannot be read (npm not on PATH yet), npm gets the whole bundle, correct for every host,
  and pays its parse per connection; removing the npmrc ``cafile`` line (or putting the fwdproxy CA into
  the file it names) avoids that. The question goes to npm as the environment has it, so a shell that
  evaluated an older ``fwdproxy env`` should ``unset npm_config_cafile`` first. Measured with
  scripts/bench_clients (internet simulator, 10 packages, medians of 3): npm's warm run through the proxy
  took 1.47 s with the bundle and 1.12 s without it.
- ``CARGO_HTTP_PROXY``: cargo's http.proxy, explicit rather than relying on its fallback to https_proxy.
- ``APT_CONFIG``: apt reads no CA variable and a plain ``sudo`` drops the environment, so a small apt.conf
  (``Acquire::http::Proxy``, ``Acquire::https::Proxy``, ``Acquire::https::CaInfo``) is written beside the
  bundle; ``sudo -E apt-get`` (or copying it into /etc/apt/apt.conf.d/) uses it.
- Go needs nothing more: GOPROXY and the checksum database are HTTPS, reached via HTTPS_PROXY and trusted via
  SSL_CERT_FILE (on macOS Go uses the keychain instead: trust the CA there).
- Docker builds do not inherit the environment: pass ``--build-arg HTTP_PROXY --build-arg HTTPS_PROXY
  --build-arg NO_PROXY`` (predefined build args) and ``--network host`` when the proxy is on 127.0.0.1; see
  the README for the CA inside a build.
"""

from __future__ import annotations

import argparse
import enum
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, assert_never

from fwdproxy import runtime, trust

BUNDLE_NAME = "fwdproxy-ca-bundle.pem"
APT_CONF_NAME = "fwdproxy-apt.conf"
DEFAULT_PROXY = "http://127.0.0.1:8080"
CA_NAME = "mitmproxy-ca-cert.pem"
DEFAULT_NO_PROXY = "localhost,127.0.0.1,::1"
"""Loopback services (databases, local registries in CI) should be reached directly, not through the proxy."""


class Format(enum.StrEnum):
    SH = "sh"
    """``export NAME='value'`` lines for ``eval "$(fwdproxy env)"``."""
    GITHUB = "github"
    """``NAME=value`` lines to append to ``$GITHUB_ENV``."""


def variables(
    proxy: str, no_proxy: str, bundle: str, ca: str, apt_conf: str, npm_cafile: bool = True
) -> list[tuple[str, str]]:
    """Every variable and its value, in a stable order (see the module docstring for why each);
    ``npm_config_cafile`` only with ``npm_cafile`` (see :func:`npm_has_ca`)."""
    pairs = [
        ("HTTP_PROXY", proxy),
        ("HTTPS_PROXY", proxy),
        ("http_proxy", proxy),
        ("https_proxy", proxy),
        ("NO_PROXY", no_proxy),
        ("no_proxy", no_proxy),
        ("SSL_CERT_FILE", bundle),
        ("REQUESTS_CA_BUNDLE", bundle),
        ("PIP_CERT", bundle),
        ("CURL_CA_BUNDLE", bundle),
        ("GIT_SSL_CAINFO", bundle),
        ("CARGO_HTTP_CAINFO", bundle),
        ("CARGO_HTTP_PROXY", proxy),
        ("NODE_EXTRA_CA_CERTS", ca),
        ("NODE_USE_ENV_PROXY", "1"),
        ("npm_config_proxy", proxy),
        ("npm_config_https_proxy", proxy),
        ("npm_config_noproxy", no_proxy),
        ("npm_config_cafile", bundle),
        ("APT_CONFIG", apt_conf),
    ]
    return [(k, v) for k, v in pairs if npm_cafile or k != "npm_config_cafile"]


def parse_npm_ca(text: str) -> bool | None:
    """Whether ``npm config get ca cafile`` output names a CA; None when it is not that output."""
    values = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
    if set(values) != {"ca", "cafile"}:
        return None
    return any(v.strip() not in ("", "null", "undefined") for v in values.values())


def npm_has_ca(env: Mapping[str, str] | None = None) -> bool | None:
    """Whether npm's configuration (npmrc files and ``npm_config_*`` variables, as npm resolves them in the
    current directory) sets ``ca`` or ``cafile``; None when npm is not installed or does not answer."""
    npm = shutil.which("npm")
    if npm is None:
        return None
    try:
        out = subprocess.run(
            [npm, "config", "get", "ca", "cafile"],
            env=os.environ if env is None else env,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_npm_ca(out.stdout) if out.returncode == 0 else None


def apt_conf(proxy: str, bundle: str) -> str:
    """apt.conf lines: plain-HTTP mirrors through the proxy (cacheable as is), HTTPS ones trusting the bundle."""
    return (
        "// written by `fwdproxy env`; use with APT_CONFIG=<this file> or copy into /etc/apt/apt.conf.d/\n"
        f'Acquire::http::Proxy "{proxy}";\n'
        f'Acquire::https::Proxy "{proxy}";\n'
        f'Acquire::https::CaInfo "{bundle}";\n'
    )


def render(pairs: Sequence[tuple[str, str]], fmt: Format) -> str:
    """The lines for the chosen format."""
    match fmt:
        case Format.SH:
            return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in pairs)
        case Format.GITHUB:
            for k, v in pairs:
                if "\n" in v:
                    raise ValueError(f"{k}: a value with a newline cannot go into $GITHUB_ENV as NAME=value")
            return "".join(f"{k}={v}\n" for k, v in pairs)
        case _:
            assert_never(fmt)


def write_files(confdir: Path, ca: Path, proxy: str) -> tuple[Path, Path]:
    """The CA bundle (system store + fwdproxy CA) and the apt.conf, in the confdir; their paths."""
    system = trust.system_ca_bundle()
    if system is None:
        print(
            "fwdproxy env: no system CA bundle found; the bundle holds only the fwdproxy CA", file=sys.stderr
        )
    bundle = trust.write_bundle([s for s in (system, str(ca)) if s], confdir / BUNDLE_NAME)
    conf = confdir / APT_CONF_NAME
    text = apt_conf(proxy, str(bundle))
    if not conf.is_file() or conf.read_text(encoding="utf-8") != text:
        conf.write_text(text, encoding="utf-8")
    return bundle, conf


def _same_proxy(url: str, running: runtime.Running) -> bool:
    given = url.rstrip("/").lower()
    return given == running.proxy_url.lower() or (
        running.host in ("127.0.0.1", "::1") and given == f"http://localhost:{running.port}"
    )


def choose(
    proxy: str | None, confdir: str | None, found: Sequence[runtime.Running]
) -> tuple[runtime.Running | None, str]:
    """The running proxy that fits what was given (either may be None), or None and why not."""
    fits = [
        r
        for r in found
        if (proxy is None or _same_proxy(proxy, r))
        and (confdir is None or os.path.expanduser(confdir) == os.path.expanduser(r.confdir))
    ]
    if fits:
        return fits[0], ""
    if not found:
        return None, "no running fwdproxy found"
    named = " and ".join(
        f"{flag} {value}" for flag, value in (("--proxy", proxy), ("--confdir", confdir)) if value
    )
    return None, f"no running fwdproxy matches {named} (running: {', '.join(r.proxy_url for r in found)})"


def cmd_env(ns: argparse.Namespace) -> int:
    if ns.proxy is not None and not ns.proxy.startswith(("http://", "https://")):
        print(f"fwdproxy env: --proxy {ns.proxy!r} is not a URL; try e.g. {DEFAULT_PROXY}", file=sys.stderr)
        return 2
    running, why = choose(ns.proxy, ns.confdir, runtime.find())
    if running is not None:
        print(f"fwdproxy env: using {runtime.describe(running, time.time())}", file=sys.stderr)
        proxy, confdir, ca = ns.proxy or running.proxy_url, Path(running.confdir), Path(running.ca)
    elif ns.proxy is not None and ns.confdir is not None:
        # Both named: a proxy this user did not start here (another machine, a container). Its CA must
        # already be in the confdir: never make one, or every client would trust a CA the proxy does not use.
        proxy, confdir = ns.proxy, Path(os.path.expanduser(ns.confdir))
        ca = confdir / CA_NAME
    else:
        print(
            f"fwdproxy env: {why} (looked in {runtime.user_dir()}); start one with `fwdproxy run` "
            "in another terminal and run this again, or name it: fwdproxy env --proxy URL --confdir DIR",
            file=sys.stderr,
        )
        return 1
    proxy = proxy.rstrip("/")
    if not ca.is_file():
        print(
            f"fwdproxy env: {ca} does not exist: --confdir {confdir} is not the proxy's confdir "
            "(fwdproxy makes its CA there at first start)",
            file=sys.stderr,
        )
        return 1
    try:
        bundle, conf = write_files(confdir, ca, proxy)
        sys.stdout.write(
            render(
                variables(proxy, ns.no_proxy, str(bundle), str(ca), str(conf), npm_has_ca() is not False),
                Format(ns.format),
            )
        )
    except (OSError, ValueError) as e:
        print(f"fwdproxy env: {e}", file=sys.stderr)
        return 2
    return 0


def add_parser(sub: Any) -> None:
    """Register ``env`` on the ``fwdproxy`` subparsers."""
    p = sub.add_parser(
        "env",
        help="print the exports that point common clients at the proxy and its CA",
        description='Print shell exports for pip, npm, node, curl, git, cargo, go and apt: eval "$(fwdproxy env)". '
        "With no --proxy/--confdir it uses the running fwdproxy (found by its runtime file); it never makes a CA.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--proxy", help="the proxy's URL (default: the running fwdproxy's, e.g. http://127.0.0.1:8080)"
    )
    p.add_argument(
        "--format", choices=[f.value for f in Format], default=Format.SH.value, help="sh (default) or github"
    )
    p.add_argument("--confdir", help="the proxy's confdir, where its CA is (default: the running fwdproxy's)")
    p.add_argument(
        "--no-proxy", default=DEFAULT_NO_PROXY, help=f"hosts reached directly (default: {DEFAULT_NO_PROXY})"
    )
    p.set_defaults(func=cmd_env)
