"""How the shared tier reaches Redis: redis-py clients, what counts as a failure, and the credentials."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError

from fwdproxy.store.shared_layout import SharedUrl

CHUNK_TIMEOUT = 5.0
"""Seconds one batch of chunks may take (at least; 10 × --shared-timeout when that is longer): 4 MiB over a
1 Gbit/s link take 35 ms, so this only catches a server that stopped answering."""
REFUSALS = (OutOfMemoryError, ReadOnlyError)
FAILURES = (RedisError, OSError, TimeoutError)


class Unavailable(Exception):
    """The operation did not reach a usable answer (breaker open, timeout, connection or server error)."""


class Missing(Exception):
    """A chunk of a body is gone (evicted under its metadata)."""


class Corrupt(Exception):
    """A chunk does not match its digest."""


def policies(found: object) -> set[str]:
    """maxmemory-policy values in a CONFIG GET answer (a Cluster nests one answer per node)."""
    out: set[str] = set()
    if isinstance(found, dict):
        for name, value in found.items():
            if isinstance(value, dict):
                out |= policies(value)
            elif (name.decode() if isinstance(name, bytes) else str(name)) == "maxmemory-policy":
                out.add(value.decode() if isinstance(value, bytes) else str(value))
    return out


def client_for(url: SharedUrl, *, ca: str | None, connect_timeout: float) -> Any:
    """A redis-py asyncio client; retries off: the breaker decides what happens after a failure."""
    common: dict[str, Any] = {
        "username": url.username,
        "password": url.password,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": CHUNK_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    if url.tls:
        common |= {"ssl": True, "ssl_ca_certs": ca}
    if url.cluster:
        nodes = [ClusterNode(host, port) for host, port in url.nodes]
        return RedisCluster(startup_nodes=nodes, **common)
    host, port = url.nodes[0]
    return aioredis.Redis(host=host, port=port, db=url.db, **common)


def plain_client(url: SharedUrl, node: tuple[str, int], *, ca: str | None, connect_timeout: float) -> Any:
    """A client of one server: pub/sub in a Cluster goes to any node (PUBLISH reaches every node)."""
    single = SharedUrl((node,), False, url.tls, 0 if url.cluster else url.db, url.username, url.password)
    return client_for(single, ca=ca, connect_timeout=connect_timeout)


PASSWORD_ENV = "FWDPROXY_SHARED_CACHE_PASSWORD"
"""Where the password comes from when neither the URL nor --shared-cache-password-file gives one."""


def password_from(url: SharedUrl, password_file: str | None, env: dict[str, str]) -> SharedUrl:
    """The URL with its password: its own, else the file's first line, else the environment's.

    Raises:
        ValueError: the file cannot be read.
    """
    if url.password is not None:
        return url
    secret = None
    if password_file:
        try:
            with open(os.path.expanduser(password_file), encoding="utf-8") as f:
                secret = f.readline().rstrip("\r\n")
        except OSError as e:
            raise ValueError(f"--shared-cache-password-file {password_file}: {e.strerror}") from None
    elif env.get(PASSWORD_ENV):
        secret = env[PASSWORD_ENV]
    return dataclasses.replace(url, password=secret) if secret else url
