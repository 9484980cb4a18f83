"""Shared fixtures: local origins, a trustme CA for them, and the real proxy on an ephemeral port."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.support import Origin, Proxy, RawOrigin, fwdproxy_argv
from tests.support_redis import (  # noqa: F401  (the shared tier's redis-server fixtures, issue 20)
    private_redis,
    redis,
    redis_cluster,
    redis_cluster_session,
    redis_session,
)


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every proxy a test starts writes its runtime file here, never in the user's own runtime directory
    (where `fwdproxy env` of a real shell, or another test run, would find it)."""
    path = tmp_path_factory.mktemp("xdg-runtime")
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = saved


@pytest.fixture(scope="session")
def origin_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def origin_ca_file(origin_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("origin-ca") / "origin-ca.pem"
    origin_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mitmproxy confdir (so one proxy CA) for the whole run: generating a CA costs time."""
    return tmp_path_factory.mktemp("confdir")


@pytest.fixture(scope="session")
def proxy_ca_file(confdir: Path) -> Path:
    from fwdproxy.cli import ca_path

    return ca_path(str(confdir))


@pytest.fixture
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


@pytest.fixture
def tls_origin(origin_ca: trustme.CA) -> Iterator[Origin]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    o = Origin(tls=ctx)
    yield o
    o.close()


StartProxy = Callable[..., Proxy]


@pytest.fixture
def start_proxy(tmp_path: Path, confdir: Path, origin_ca_file: Path) -> Iterator[StartProxy]:
    """Start ``fwdproxy run`` with temporary dirs, trusting the origins' CA; extra flags pass through."""
    started: list[Proxy] = []

    def start(*args: str, cache_dir: Path | None = None, upstream_ca: bool = True) -> Proxy:
        # --admin-port 0: no status page unless a test asks for one (a fixed port would clash between workers).
        argv = ["run", "--listen-port", "0", "--admin-port", "0", "--confdir", str(confdir)]
        argv += ["--cache-dir", str(cache_dir or tmp_path / "cache")]
        if upstream_ca:
            argv += ["--upstream-ca", str(origin_ca_file)]
        p = Proxy(fwdproxy_argv(*argv, *args), tmp_path)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def raw_origins() -> Iterator[list[RawOrigin]]:
    """Raw-socket origins a test starts (RawOrigin); each is stopped when the test ends."""
    made: list[RawOrigin] = []
    yield made
    for o in made:
        o.stop()
