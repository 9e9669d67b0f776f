"""Where signalling nodes find SFU nodes: a registry in Redis.

Each SFU node announces itself every ``ANNOUNCE_SECONDS``: ``<prefix>:sfu_node:<id>`` holds its
internal endpoint and its last load (JSON), expiring after ``ttl`` seconds unless announced again,
and the sorted set ``<prefix>:sfu_nodes`` scores each id by its last announcement. A node that
stops (or whose machine dies) drops out within ``ttl``; one that shuts down cleanly withdraws at
once. The registry says where nodes are and how loaded they were; whether one is healthy is what
its link says (sfu/remote.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

ANNOUNCE_SECONDS = 1.0
TTL_SECONDS = 5
# How long a registry command waits for Redis (redis-py before 8.0 waits forever unless told):
# a frozen Redis then fails an announcement well within the entry's TTL, and never holds a
# node's shutdown (withdraw, close) for longer than this per command.
REDIS_SECONDS = 2.0


@dataclass(frozen=True)
class NodeEntry:
    node_id: str
    host: str
    port: int
    load: dict[str, Any]
    at: float  # Unix time of the announcement


class NodeRegistry:
    def __init__(self, url: str, prefix: str = "expertcall", ttl: int = TTL_SECONDS) -> None:
        self.redis = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=REDIS_SECONDS,
                                             socket_timeout=REDIS_SECONDS)
        self.prefix = prefix
        self.ttl = ttl

    def _key(self, node_id: str) -> str:
        return f"{self.prefix}:sfu_node:{node_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:sfu_nodes"

    async def announce(self, node_id: str, host: str, port: int, load: dict[str, Any]) -> None:
        now = time.time()
        entry = json.dumps({"host": host, "port": port, "load": load, "at": now})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(node_id), entry, ex=self.ttl)
            pipe.zadd(self._index, {node_id: now})
            await pipe.execute()

    async def withdraw(self, node_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(node_id))
            pipe.zrem(self._index, node_id)
            await pipe.execute()

    async def nodes(self) -> list[NodeEntry]:
        """The nodes that announced themselves within the TTL."""
        await self.redis.zremrangebyscore(self._index, "-inf", time.time() - self.ttl)
        ids = [str(i) for i in await self.redis.zrange(self._index, 0, -1)]
        if not ids:
            return []
        found = []
        for node_id, raw in zip(ids, await self.redis.mget([self._key(i) for i in ids])):
            if raw is None:
                continue
            data = json.loads(raw)
            found.append(NodeEntry(node_id, str(data["host"]), int(data["port"]), dict(data["load"]), float(data["at"])))
        return found

    async def close(self) -> None:
        await self.redis.aclose()
