"""The registry of live workers: a worker announces itself when it starts, refreshes its
entry with every heartbeat and says when it stops; an entry whose worker died silently
expires. `redwork info` (and later the API) reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import orjson

from redwork.connection import AsyncRedis, SyncRedis
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

    def __init__(self, client: AsyncRedis, info: Mapping[str, str | int], ttl: int) -> None:
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
            # Listed before it is announced: whoever hears "started" finds it.
            pipe.zadd(WORKERS_KEY, {self.id: now_ms()})
            await pipe.execute()
        # Apart: a cluster pipeline refuses PUBLISH (it has no key to route by).
        await self.client.publish(WORKERS_CHANNEL, orjson.dumps({"event": "started", **self.info}))

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
            await pipe.execute()
        stopped = {"event": "stopped", "id": self.id, **counters}
        await self.client.publish(WORKERS_CHANNEL, orjson.dumps(stopped))


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker as its last heartbeat described it (the counters lag by up to a
    heartbeat interval, lease / 3)."""

    id: str
    host: str | None
    pid: int | None
    queues: list[str]
    concurrency: int | None
    running: int
    """Jobs it was running."""
    done: int
    """Jobs it completed since it started."""
    failed: int
    """Jobs that failed for good under it."""
    started_at: int | None
    last_seen: int
    """Its last heartbeat (its clock, Unix ms)."""

    @classmethod
    def of(cls, worker_id: str, seen: float, fields: Mapping[str, str]) -> WorkerInfo:
        def number(name: str) -> int | None:
            value = fields.get(name)
            return int(value) if value and value.lstrip("-").isdigit() else None

        return cls(
            id=worker_id,
            host=fields.get("host"),
            pid=number("pid"),
            queues=[q for q in fields.get("queues", "").split(",") if q],
            concurrency=number("concurrency"),
            running=number("running") or 0,
            done=number("done") or 0,
            failed=number("failed") or 0,
            started_at=number("started_at"),
            last_seen=number("last_seen") or int(seen),
        )


def live_workers(client: SyncRedis) -> list[WorkerInfo]:
    """Every worker whose entry has not expired."""
    entries = cast(list[tuple[bytes, float]], client.zrange(WORKERS_KEY, 0, -1, withscores=True))
    with client.pipeline(transaction=False) as pipe:
        for raw_id, _ in entries:
            pipe.hgetall(worker_key(raw_id.decode()))
        return _described(entries, pipe.execute())


async def alive_workers(client: AsyncRedis) -> list[WorkerInfo]:
    """The async twin of live_workers()."""
    entries = cast(
        list[tuple[bytes, float]], await client.zrange(WORKERS_KEY, 0, -1, withscores=True)
    )
    async with client.pipeline(transaction=False) as pipe:
        for raw_id, _ in entries:
            pipe.hgetall(worker_key(raw_id.decode()))
        return _described(entries, await pipe.execute())


def _described(
    entries: list[tuple[bytes, float]], hashes: list[dict[bytes, bytes]]
) -> list[WorkerInfo]:
    return [
        WorkerInfo.of(raw_id.decode(), seen, {k.decode(): v.decode() for k, v in raw.items()})
        for (raw_id, seen), raw in zip(entries, hashes, strict=True)
        if raw  # expired since the index was read
    ]
