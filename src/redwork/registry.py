"""The registry of live workers: a worker announces itself when it starts, refreshes its
entry with every heartbeat and says when it stops; an entry whose worker died silently
expires. `redwork info` (and later the API) reads it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import orjson
import redis
import redis.asyncio

from redwork.job import now_ms
from redwork.queue import KEY_ROOT, QUEUES_KEY

WORKERS_KEY = f"{KEY_ROOT}:workers"
"""ZSET: worker id -> last heartbeat (worker clock, ms)."""
WORKERS_CHANNEL = f"{KEY_ROOT}:workers"
"""Pub/sub channel of {"event": "started" | "stopped", ...} messages."""


def worker_key(worker_id: str) -> str:
    """HASH of one worker's description and counters."""
    return f"{KEY_ROOT}:worker:{worker_id}"


class Registration:
    """One worker's entry in the registry."""

    def __init__(
        self, client: redis.asyncio.Redis, info: Mapping[str, str | int], ttl: int
    ) -> None:
        self.client = client
        self.id = str(info["id"])
        self.info = dict(info)
        self.ttl = ttl
        self.key = worker_key(self.id)

    async def register(self, queues: tuple[str, ...]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.sadd(QUEUES_KEY, *queues)
            pipe.hset(self.key, mapping=self.info)  # type: ignore[arg-type]
            pipe.expire(self.key, self.ttl)
            pipe.publish(WORKERS_CHANNEL, orjson.dumps({"event": "started", **self.info}))
            await pipe.execute()

    async def refresh(self, counters: Mapping[str, int]) -> None:
        now = now_ms()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(WORKERS_KEY, {self.id: now})
            fields: dict[Any, Any] = {**counters, "last_seen": now}
            pipe.hset(self.key, mapping=fields)
            pipe.expire(self.key, self.ttl)
            # Workers that died without deregistering drop out of the index too.
            pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 1000 * self.ttl)
            await pipe.execute()

    async def deregister(self, counters: Mapping[str, int]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zrem(WORKERS_KEY, self.id)
            pipe.delete(self.key)
            stopped = {"event": "stopped", "id": self.id, **counters}
            pipe.publish(WORKERS_CHANNEL, orjson.dumps(stopped))
            await pipe.execute()


def live_workers(client: redis.Redis) -> list[tuple[str, float, dict[str, str]]]:
    """(id, last heartbeat in ms, description) of every worker whose entry has not
    expired."""
    live = []
    entries = cast(list[tuple[bytes, float]], client.zrange(WORKERS_KEY, 0, -1, withscores=True))
    for raw_id, seen in entries:
        worker_id = raw_id.decode()
        raw = cast(dict[bytes, bytes], client.hgetall(worker_key(worker_id)))
        if raw:
            live.append((worker_id, seen, {k.decode(): v.decode() for k, v in raw.items()}))
    return live
