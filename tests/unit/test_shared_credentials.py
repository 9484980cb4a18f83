"""The shared tier's credentials and TLS: from the URL, a file or the environment; rediss:// with a CA."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import trustme

from fwdproxy.store.shared import SharedTier
from fwdproxy.store.shared_client import PASSWORD_ENV, password_from
from fwdproxy.store.shared_layout import parse_url
from tests.support_redis import RedisServer, free_port


def test_the_url_password_wins(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    url = password_from(parse_url("redis://:in-url@r:1/0"), str(tmp_path / "pw"), {PASSWORD_ENV: "env"})
    assert url.password == "in-url"


def test_then_the_file_then_the_environment(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\nignored\n")
    assert password_from(parse_url("redis://r:1/0"), str(tmp_path / "pw"), {}).password == "from-file"
    assert password_from(parse_url("redis://r:1/0"), None, {PASSWORD_ENV: "env"}).password == "env"
    assert password_from(parse_url("redis://r:1/0"), None, {}).password is None


def test_an_unreadable_password_file_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--shared-cache-password-file .*missing"):
        password_from(parse_url("redis://r:1/0"), str(tmp_path / "missing"), {})


def test_a_password_protected_server(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", "--requirepass", "s3cret")
    try:

        async def errors(password: str) -> int:
            url = password_from(parse_url(server.url), None, {PASSWORD_ENV: password})
            tier = SharedTier(url, timeout=0.5, object_max=1)
            try:
                await tier.listing("GET http://a/")
            except Exception:  # noqa: BLE001
                pass
            await tier.close()
            assert "s3cret" not in tier.stats.last_error and "wrong" not in tier.stats.last_error
            return tier.stats.errors

        assert asyncio.run(errors("s3cret")) == 0
        assert asyncio.run(errors("wrong")) == 1
    finally:
        server.kill()


def test_rediss_with_a_private_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls_port = free_port()
    server = RedisServer(
        tmp_path / "redis",
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(tmp_path / "cert.pem"),
        "--tls-key-file", str(tmp_path / "key.pem"),
        "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    try:

        async def errors(ca_file: str | None) -> int:
            tier = SharedTier(
                parse_url(f"rediss://127.0.0.1:{tls_port}/0"), timeout=2.0, object_max=1, ca=ca_file
            )
            try:
                await tier.listing("GET http://a/")
            except Exception:  # noqa: BLE001 - Unavailable when the certificate is not trusted
                pass
            await tier.close()
            return tier.stats.errors

        assert asyncio.run(errors(str(tmp_path / "ca.pem"))) == 0
        assert asyncio.run(errors(None)) == 1  # the system store does not know this CA
    finally:
        server.kill()
