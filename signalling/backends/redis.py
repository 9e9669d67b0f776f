"""The scale-out backend: shared state in Redis, routing between nodes over pub/sub.

It embeds the memory backend for the sockets this node holds and overrides everything shared.
Keys live under one prefix (tests use a fresh one each): ``loc:<user>`` (node and connection,
expiring unless touched by pings, so a crashed node's users do not stay "connected"),
``stash:<user>``, ``presence`` (a hash), ``session:<id>``, ``sessions:active`` (a set),
``user_session:<user>``, ``dropped:<user>``, ``queue:<expert>`` (a list), ``revoked`` (a sorted set of
token ids by expiry), ``lock:<key>``, and ``meter:<session>`` (the metering lease: node and fencing
token) with ``meter_token:<session>`` (its counter); each node listens on the channel
``node:<node id>`` and on ``broadcast``, which carries what every node must hear (a revoked token).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator

import redis.asyncio as aioredis

from ..core.redis_timeouts import TIMEOUTS
from ..core.tasks import cancel_and_wait
from .base import EnvelopeHandler, LocalSender, Location
from .memory import MAX_STASHED, MemoryBackend

log = logging.getLogger(__name__)

# Delete or refresh a key only while it still holds our value.
_DELETE_IF = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_EXPIRE_IF = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end return 0"
# The metering lease (KEYS[1] = "<node>\n<token>") and its token counter (KEYS[2]). ARGV: this node,
# the holder it may replace ("" when the lease must be free), the floor for a new token. Returns
# the token held, or -1 when another holder is in the way.
_METER_LEASE = """
local current = redis.call('GET', KEYS[1])
if current then
    local sep = string.find(current, '\\n', 1, true)
    local holder = string.sub(current, 1, sep - 1)
    if holder == ARGV[1] then return tonumber(string.sub(current, sep + 1)) end
    if holder ~= ARGV[2] then return -1 end
end
local floor = tonumber(ARGV[3])
if tonumber(redis.call('GET', KEYS[2]) or '0') < floor then redis.call('SET', KEYS[2], floor) end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '\\n' .. token)
return token
"""


class RedisBackend(MemoryBackend):
    def __init__(
        self,
        node_id: str,
        url: str,
        prefix: str = "expertcall",
        stash_ttl: float = 30.0,
        location_ttl: int = 90,
        ended_session_ttl: int = 24 * 3600,
        lock_ttl: float = 10.0,
        max_connections: int = 64,
    ) -> None:
        super().__init__(node_id, stash_ttl=stash_ttl)
        # A blocking pool: a burst of requests waits for a connection instead of failing with
        # "Too many connections" (each handler holds one only for a command or two).
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=10, decode_responses=True, **TIMEOUTS
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self.prefix = prefix
        self.location_ttl = location_ttl
        self.ended_session_ttl = ended_session_ttl
        self.lock_ttl = lock_ttl
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def start(self, on_envelope: EnvelopeHandler) -> None:
        self._handler = on_envelope
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._key("node", self.node_id), self._key("broadcast"))
        self._listener = asyncio.create_task(self._listen(), name=f"redis-listener-{self.node_id}")

    async def close(self) -> None:
        """Stop listening and release the connections, whether or not ``start`` ran (or
        finished): the pool exists from the constructor on; safe to call twice."""
        try:
            if self._listener is not None:
                await cancel_and_wait(self._listener)
                self._listener = None
            if self._pubsub is not None:
                await self._pubsub.aclose()
                self._pubsub = None
        finally:
            await self.redis.aclose(close_connection_pool=True)

    async def _listen(self) -> None:
        while True:
            try:
                async for item in self._pubsub.listen():
                    if item.get("type") != "message":
                        continue
                    try:
                        await self.receive_envelope(json.loads(item["data"]))
                    except Exception:
                        # One bad envelope must not stop this node from hearing the others.
                        log.exception("failed to handle an envelope on node %s", self.node_id)
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                # redis-py resubscribes when the connection comes back; keep listening.
                log.warning("node %s lost its Redis subscription (%s); retrying", self.node_id, exc)
                await asyncio.sleep(1.0)

    # --- routing ------------------------------------------------------------------------------

    async def claim(self, user_id: str, conn_id: str, send: LocalSender) -> Location | None:
        self._claim_local(user_id, conn_id, send)
        previous = await self.redis.set(
            self._key("loc", user_id), f"{self.node_id}\n{conn_id}", ex=self.location_ttl, get=True
        )
        return _location(_text(previous))

    async def release(self, user_id: str, conn_id: str) -> bool:
        self._release_local(user_id, conn_id)
        deleted = await self.redis.eval(_DELETE_IF, 1, self._key("loc", user_id), f"{self.node_id}\n{conn_id}")
        return bool(deleted)

    async def touch(self, user_id: str, conn_id: str) -> None:
        await self.redis.eval(
            _EXPIRE_IF, 1, self._key("loc", user_id), f"{self.node_id}\n{conn_id}", self.location_ttl
        )

    async def locate(self, user_id: str) -> Location | None:
        return _location(_text(await self.redis.get(self._key("loc", user_id))))

    async def node_alive(self, node_id: str) -> bool:
        counts = await self.redis.pubsub_numsub(self._key("node", node_id))
        return bool(counts and counts[0][1])

    async def note_dropped(self, user_id: str, conn_id: str) -> None:
        await self.redis.set(self._key("dropped", user_id), conn_id, px=max(1, int(self.stash_ttl * 1000)))

    async def take_dropped(self, user_id: str) -> str | None:
        return _text(await self.redis.getdel(self._key("dropped", user_id)))

    async def send_to_node(self, node_id: str, envelope: dict[str, Any]) -> None:
        receivers = await self.redis.publish(self._key("node", node_id), json.dumps(envelope))
        if not receivers and envelope.get("op") == "deliver":
            await self.stash(envelope["user_id"], envelope["message"])

    async def stash(self, user_id: str, message: dict[str, Any]) -> None:
        key = self._key("stash", user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps(message))
            pipe.ltrim(key, -MAX_STASHED, -1)
            pipe.pexpire(key, max(1, int(self.stash_ttl * 1000)))
            await pipe.execute()

    async def drain(self, user_id: str) -> list[dict[str, Any]]:
        key = self._key("stash", user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            raw, _ = await pipe.execute()
        return [json.loads(item) for item in raw]

    # --- presence -----------------------------------------------------------------------------

    async def set_status(self, user_id: str, status: str | None) -> None:
        if status is None:
            await self.redis.hdel(self._key("presence"), user_id)
        else:
            await self.redis.hset(self._key("presence"), user_id, status)

    async def get_status(self, user_id: str) -> str | None:
        return _text(await self.redis.hget(self._key("presence"), user_id))

    # --- sessions -----------------------------------------------------------------------------

    async def save_session(self, record: dict[str, Any], active: bool) -> None:
        key = self._key("session", record["id"])
        async with self.redis.pipeline(transaction=True) as pipe:
            if active:
                pipe.set(key, json.dumps(record))
                pipe.sadd(self._key("sessions", "active"), record["id"])
            else:
                pipe.set(key, json.dumps(record), ex=self.ended_session_ttl)
                pipe.srem(self._key("sessions", "active"), record["id"])
            await pipe.execute()

    async def load_session(self, session_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self._key("session", session_id))
        return None if raw is None else json.loads(raw)

    async def active_session_ids(self) -> list[str]:
        return sorted(str(_text(m)) for m in await self.redis.smembers(self._key("sessions", "active")))

    async def set_user_session(self, user_id: str, session_id: str | None) -> None:
        if session_id is None:
            await self.redis.delete(self._key("user_session", user_id))
        else:
            await self.redis.set(self._key("user_session", user_id), session_id)

    async def user_session(self, user_id: str) -> str | None:
        return _text(await self.redis.get(self._key("user_session", user_id)))

    # --- queues -------------------------------------------------------------------------------

    async def queue_push(self, expert_id: str, session_id: str) -> None:
        key = self._key("queue", expert_id)
        if await self.redis.lpos(key, session_id) is None:
            await self.redis.rpush(key, session_id)

    async def queue_remove(self, expert_id: str, session_id: str) -> bool:
        return bool(await self.redis.lrem(self._key("queue", expert_id), 0, session_id))

    async def queue(self, expert_id: str) -> list[str]:
        return [str(_text(m)) for m in await self.redis.lrange(self._key("queue", expert_id), 0, -1)]

    # --- metering leases ------------------------------------------------------------------------

    async def meter_lease(self, session_id: str, floor: int = 0) -> int | None:
        holder = await self.meter_lease_holder(session_id)
        replaceable = ""
        if holder is not None and holder != self.node_id:
            if await self.node_alive(holder):
                return None
            replaceable = holder  # its node is gone: take it over (unless another node just did)
        token = await self.redis.eval(
            _METER_LEASE, 2, self._key("meter", session_id), self._key("meter_token", session_id),
            self.node_id, replaceable, floor,
        )
        return None if int(token) < 0 else int(token)

    async def meter_lease_holder(self, session_id: str) -> str | None:
        raw = _text(await self.redis.get(self._key("meter", session_id)))
        return None if not raw else raw.partition("\n")[0]

    async def release_meter_lease(self, session_id: str) -> None:
        key = self._key("meter", session_id)
        raw = _text(await self.redis.get(key))
        if raw and raw.partition("\n")[0] == self.node_id:
            await self.redis.eval(_DELETE_IF, 1, key, raw)
            # The counter outlives the lease a while: a late write of the old token stays refusable.
            await self.redis.expire(self._key("meter_token", session_id), self.ended_session_ttl)

    # --- revoked tokens -----------------------------------------------------------------------

    async def revoke_token(self, jti: str, expires_at: int) -> None:
        key = self._key("revoked")
        envelope = {"op": "revoked", "jti": jti, "expires_at": expires_at}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {jti: expires_at}, gt=True)  # adds a new one too; never shortens one
            pipe.zremrangebyscore(key, "-inf", time.time())
            pipe.publish(self._key("broadcast"), json.dumps(envelope))
            await pipe.execute()

    async def revoked_tokens(self) -> dict[str, int]:
        found = await self.redis.zrangebyscore(self._key("revoked"), f"({time.time()}", "+inf", withscores=True)
        return {str(_text(pair[0])): int(pair[1]) for pair in found}

    # --- coordination -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        name, token = self._key("lock", key), uuid.uuid4().hex
        delay = 0.002
        while not await self.redis.set(name, token, nx=True, px=int(self.lock_ttl * 1000)):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            await self.redis.eval(_DELETE_IF, 1, name, token)


def _text(value: object) -> str | None:
    """A reply as text (the client decodes responses; the stubs cannot know that)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _location(raw: str | None) -> Location | None:
    if not raw:
        return None
    node_id, _, conn_id = raw.partition("\n")
    return Location(node_id, conn_id)
