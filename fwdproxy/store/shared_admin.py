"""The shared tier from the command line (`fwdproxy cache stats --shared`, `cache purge`): a blocking client.

The proxy talks to Redis with redis-py's asyncio client (shared.py); a one-shot command has no event loop to
share, so it uses the blocking one, with the same layout and the same invalidation messages.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from fwdproxy.store import shared_layout as layout
from fwdproxy.store.shared_layout import SharedUrl

TIMEOUT = 5.0
"""Seconds a command waits for the server: a person is watching, not a client request."""


def connect(url: SharedUrl, *, ca: str | None = None) -> Any:
    """A blocking client of the server or Cluster; raises redis.RedisError when it cannot be reached."""
    common: dict[str, Any] = {
        "username": url.username,
        "password": url.password,
        "socket_timeout": TIMEOUT,
        "socket_connect_timeout": TIMEOUT,
    }
    if url.tls:
        common |= {"ssl": True, "ssl_ca_certs": ca}
    if url.cluster:
        nodes = [ClusterNode(h, p) for h, p in url.nodes]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, **common)
    host, port = url.nodes[0]
    client = redis.Redis(host=host, port=port, db=url.db, **common)
    client.ping()
    return client


def _info(client: Any, section: str) -> list[dict[str, Any]]:
    """INFO of the one server, or of every node of a Cluster (a dict per node)."""
    if isinstance(client, RedisCluster):
        found = client.info(section, target_nodes=RedisCluster.PRIMARIES)
    else:
        found = client.info(section)
    if isinstance(found, dict) and found and all(isinstance(v, dict) for v in found.values()):
        return list(found.values())  # a Cluster answers {node: info}
    return [found]


def summary(client: Any) -> dict[str, Any]:
    """What `cache stats --shared` prints: our entries, bodies and bytes, and the server's memory and policy."""
    entries = primaries = chunks = 0
    for name in client.scan_iter(match=layout.PREFIX + "m:*", count=1000):
        primaries += 1
        entries += int(client.hlen(name))
    for _ in client.scan_iter(match=layout.PREFIX + "c:*", count=1000):
        chunks += 1
    memory = _info(client, "memory")
    policies = sorted({str(m.get("maxmemory_policy", "")) for m in memory})
    return {
        "urls": primaries,
        "entries": entries,
        "chunks": chunks,
        "used_memory": sum(int(m.get("used_memory", 0)) for m in memory),
        "maxmemory": sum(int(m.get("maxmemory", 0)) for m in memory),
        "maxmemory_policy": ",".join(policies),
        "nodes": len(memory),
    }


def purge(client: Any, primaries: list[str]) -> int:
    """Remove these primary keys from the shared tier and tell every node; how many were there."""
    removed = 0
    node = uuid.uuid4().hex
    for primary in primaries:
        removed += int(client.delete(layout.meta_key(primary)))
        client.publish(layout.CHANNEL, json.dumps({"n": node, "p": primary, "k": ""}, ensure_ascii=True))
    return removed


def purge_matching(client: Any, matches: Callable[[str], bool], primary_of_url: Callable[[str], str]) -> int:
    """Remove every shared entry whose URL ``matches`` (a host glob, or all), telling every node."""
    doomed: set[str] = set()
    for name in client.scan_iter(match=layout.PREFIX + "m:*", count=1000):
        for value in client.hgetall(name).values():
            entry = layout.decode_meta(value) if isinstance(value, bytes) else None
            if entry is not None and matches(entry.meta.url):
                doomed.add(primary_of_url(entry.meta.url))
    return purge(client, sorted(doomed))
