"""Which certificate authorities we trust for origins, and CA bundles that combine several files."""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from pathlib import Path

# Where distributions keep the system bundle, for Pythons built without a default path.
_WELL_KNOWN_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL, CentOS
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # macOS, FreeBSD, OpenBSD
)


def system_ca_bundle() -> str | None:
    """The operating system's CA bundle (where corporate and TLS-inspecting CAs are installed), if any."""
    paths = ssl.get_default_verify_paths()
    candidates = [os.environ.get(paths.openssl_cafile_env or ""), paths.cafile, *_WELL_KNOWN_BUNDLES]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.path.getsize(candidate) > 0:
            return candidate
    return None


def write_bundle(sources: Sequence[str], dest: Path) -> Path:
    """Concatenate PEM files into ``dest`` (rewritten only when its content changed)."""
    parts = []
    for src in sources:
        try:
            text = Path(src).read_text(encoding="ascii", errors="replace")
        except OSError as e:
            raise ValueError(f"cannot read CA file {src}: {e.strerror}") from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError(f"{src} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")
        parts.append(text.rstrip() + "\n")
    content = "".join(parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists() or dest.read_text(encoding="ascii", errors="replace") != content:
        tmp = dest.with_suffix(".tmp")
        tmp.write_text(content, encoding="ascii")
        os.replace(tmp, dest)
    return dest


def origin_trust(extra_ca: str | None, workdir: Path) -> str | None:
    """The PEM file to verify origins with: the system bundle, plus ``extra_ca`` when given.

    Returns None when there is no system bundle and no extra CA (mitmproxy then falls back to certifi).
    """
    system = system_ca_bundle()
    if not extra_ca:
        return system
    extra = os.path.expanduser(extra_ca)
    if not os.path.isfile(extra):
        raise ValueError(f"--upstream-ca {extra_ca}: no such file")
    return str(write_bundle([s for s in (system, extra) if s], workdir / "fwdproxy-origin-trust.pem"))


CA_KEY_FILES = ("mitmproxy-ca.pem", "mitmproxy-ca.p12")
"""The files in mitmproxy's confdir that hold the CA's private key (the ``-cert`` files are public)."""


def secure_ca_keys(confdir: Path) -> list[Path]:
    """Make the CA key files readable and writable by their owner only; the files that were more open.

    Whoever reads the key can impersonate every site to every client that trusts the CA. mitmproxy creates
    these files with mode 0600, but a confdir copied or unpacked by hand often is not.

    Raises:
        OSError: a key file is too open and cannot be changed (e.g. owned by another user).
    """
    fixed = []
    for name in CA_KEY_FILES:
        path = confdir / name
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & 0o077:
            path.chmod(0o600)
            fixed.append(path)
    return fixed


def open_to_others(directory: Path) -> bool:
    """Whether users other than the owner may list or read `directory` (False when it does not exist).

    The cache directory holds decrypted HTTPS responses; fwdproxy creates it with mode 0700, tightens one
    that everybody may read (made by hand with a usual umask), and warns about one shared on purpose with a
    group (see tighten_if_world_readable).
    """
    try:
        return bool(directory.stat().st_mode & 0o077)
    except OSError:
        return False


def tighten_if_world_readable(directory: Path) -> bool:
    """Make ``directory`` mode 0700 when every user may enter it (a usual umask of 022 or 002 made it so) and
    it is ours; True when it was changed. One open to its group only was shared on purpose: left alone."""
    try:
        st = directory.stat()
        if not st.st_mode & 0o007 or st.st_uid != os.geteuid():
            return False
        os.chmod(directory, 0o700)
    except OSError:
        return False
    return True
