"""The CA's private key files are kept private to their owner."""

from __future__ import annotations

import stat
from pathlib import Path

from fwdproxy.trust import CA_KEY_FILES, secure_ca_keys


def test_open_key_files_are_made_private_and_reported(tmp_path: Path) -> None:
    for name, mode in zip(CA_KEY_FILES, (0o644, 0o600), strict=True):
        (tmp_path / name).write_text("key")
        (tmp_path / name).chmod(mode)
    (tmp_path / "mitmproxy-ca-cert.pem").write_text("cert")
    (tmp_path / "mitmproxy-ca-cert.pem").chmod(0o644)
    assert secure_ca_keys(tmp_path) == [tmp_path / "mitmproxy-ca.pem"]
    assert all(stat.S_IMODE((tmp_path / n).stat().st_mode) == 0o600 for n in CA_KEY_FILES)
    assert (
        stat.S_IMODE((tmp_path / "mitmproxy-ca-cert.pem").stat().st_mode) == 0o644
    )  # the certificate is public
    assert secure_ca_keys(tmp_path) == []


def test_a_confdir_without_a_ca_is_fine(tmp_path: Path) -> None:
    assert secure_ca_keys(tmp_path / "nothing-here") == []
