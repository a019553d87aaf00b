"""The reporter: outcomes leave its buffer only once the server has them."""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio

from redwork.job import Envelope
from redwork.queue import Completion, NewJob, Queue, run
from redwork.reporter import Reporter
from redwork.server import ServerProcess
from tests.conftest import DAY_MS

Q = Queue("default")


def leased(r: redis.Redis, *ids: str) -> list:  # type: ignore[type-arg]
    docs = [NewJob(i, Envelope(id=i, task="t", queue=Q.name).encode(1 << 20)) for i in ids]
    run(r, Q.enqueue(docs, DAY_MS))
    return run(r, Q.fetch(len(ids), 60_000, "w", 1 << 20)).deliveries


async def test_outcomes_that_arrive_during_the_last_flush_are_sent_before_closing(
    server: ServerProcess, redis_url: str, r: redis.Redis
) -> None:
    first, second = leased(r, "first", "second")
    client = redis.asyncio.Redis.from_url(redis_url)
    reporter = Reporter([Q], result_ttl=60, give_up_after=30)
    running = asyncio.create_task(reporter.run(client, asyncio.Event()))
    server.pause()  # the flush of `first` stays in flight until the server resumes
    try:
        reporter.completed(Q.name, Completion(first.id, first.token, b"1"))
        while reporter._pending.is_set():  # until the reporter has taken it to send
            await asyncio.sleep(0)
        reporter.completed(Q.name, Completion(second.id, second.token, b"2"))
        reporter.close()
    finally:
        server.resume()
    await asyncio.wait_for(running, 10)
    await client.aclose()
    assert [run(r, Q.job(i)).state.value for i in ("first", "second")] == ["completed"] * 2
