"""The ``fwdproxy`` command: run the proxy, show its CA, print versions."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from fwdproxy import __version__, cachecmd, config, envcmd, logs, loops

CA_HELP = """\
How to trust the CA (replace PATH with what `fwdproxy ca` prints):
  curl      curl --cacert PATH -x http://127.0.0.1:8080 https://example.org/
  pip       pip --cert PATH --proxy http://127.0.0.1:8080 install …   (or PIP_CERT=PATH)
  requests  REQUESTS_CA_BUNDLE=PATH   (a bundle: see `fwdproxy env` for one that keeps the system CAs)
  node/npm  NODE_EXTRA_CA_CERTS=PATH   (npm: unless its npmrc sets cafile; then see `fwdproxy env`)
  Debian/Ubuntu system store:
            sudo cp PATH /usr/local/share/ca-certificates/fwdproxy.crt && sudo update-ca-certificates
  Fedora/RHEL: sudo cp PATH /etc/pki/ca-trust/source/anchors/ && sudo update-ca-trust
  macOS:    sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain PATH
  Windows:  certutil -addstore root PATH
"""


def ca_path(confdir: str) -> Path:
    """The CA certificate mitmproxy (and so fwdproxy) signs with, created when missing."""
    from mitmproxy import certs

    path = Path(os.path.expanduser(confdir))
    certs.CertStore.from_store(path, "mitmproxy", 2048)
    return path / "mitmproxy-ca-cert.pem"


def cmd_run(ns: argparse.Namespace) -> int:
    try:
        settings = config.settings_from_args(ns)
        loops.chosen(settings.event_loop)  # uvloop asked for and missing: say so before starting anything
    except ValueError as e:
        print(f"fwdproxy: {e}", file=sys.stderr)
        return 2
    logs.setup(settings.quiet, settings.verbose)
    try:
        Path(os.path.expanduser(settings.cache_dir)).mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        print(f"fwdproxy: --cache-dir {settings.cache_dir}: cannot create it: {e.strerror}", file=sys.stderr)
        return 2
    if settings.workers > 1:  # a supervisor of that many proxy processes on one port
        from fwdproxy import workers

        return asyncio.run(workers.supervise(settings, settings.workers))  # the supervisor only waits
    from fwdproxy import engine

    return loops.run(engine.serve(settings), settings.event_loop)


def cmd_ca(ns: argparse.Namespace) -> int:
    path = ca_path(ns.confdir)
    if ns.pem:
        sys.stdout.write(path.read_text())
    else:
        print(path)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fwdproxy", description="A forward HTTP/HTTPS caching proxy.")
    p.add_argument("--version", action="store_true", help="print fwdproxy's and mitmproxy's versions")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the proxy", description="Run the proxy in the foreground.")
    config.add_arguments(run)
    run.set_defaults(func=cmd_run)
    ca = sub.add_parser(
        "ca",
        help="print the CA certificate's path",
        description="Print the path of the CA certificate that signs intercepted HTTPS (created if missing).",
        epilog=CA_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ca.add_argument("--confdir", default="~/.mitmproxy", help="mitmproxy's confdir (default: ~/.mitmproxy)")
    ca.add_argument("--pem", action="store_true", help="write the certificate (PEM) to stdout instead")
    ca.set_defaults(func=cmd_ca)
    cachecmd.add_parser(sub)
    envcmd.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    ns = p.parse_args(argv)
    if ns.version:
        from mitmproxy import version

        print(f"fwdproxy {__version__}\nmitmproxy {version.VERSION}")
        return 0
    if not getattr(ns, "func", None):
        p.print_help()
        return 2
    result: int = ns.func(ns)
    return result


if __name__ == "__main__":
    sys.exit(main())
