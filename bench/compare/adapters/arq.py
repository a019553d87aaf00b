"""arq adapter (see bench/compare/common.py for the command line).

Worker: one asyncio process, `max_jobs` = concurrency, started through arq's own
`run_worker` (what the `arq` CLI calls). arq documents no throughput recipe; its one
throughput knob is `poll_delay`. arq only polls (most of the others block on Redis and
react at once), and a poll stops starting jobs once the `max_jobs` slots are full: a slot
freed after that waits for the next poll. At the default 0.5 s that caps a worker whatever
the jobs cost (hand test: about 200 noop/s, 7 % sleep efficiency, p50 latency 1.6 s at
500 jobs/s). A 10 ms poll is the nearest arq gets to a blocking read, at 100 cheap polls
per idle second. queue_read_limit stays at its default: a poll stops at the first busy
slot anyway. Two more departures from the defaults, as for every system: JSON instead of
arq's default pickle (the contract wants no pickle where the system allows JSON), and
keep_result=0 since the benchmark reads no results.

Bulk enqueue: arq has no batch API; `enqueue_job` (one WATCH/MULTI/EXEC per job) is
gathered in chunks over one pool, as streaq's published benchmark of arq does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import run_worker

from bench.compare.common import QUEUE, RECORDER, main, pace, sleep_ms

CHUNK = 500
"""Jobs in flight at once while bulk-enqueueing (one pooled connection each)."""


def _dumps(data: Any) -> bytes:
    return json.dumps(data).encode()


async def noop(ctx: dict[str, Any]) -> None:
    RECORDER.done()


async def sleep(ctx: dict[str, Any], ms: float) -> None:
    await asyncio.sleep(ms / 1000)
    RECORDER.done()


async def latency(ctx: dict[str, Any], sent_at: float) -> None:
    RECORDER.latency(sent_at)
    RECORDER.done()


class WorkerSettings:
    functions = (noop, sleep, latency)
    queue_name = QUEUE
    keep_result = 0
    poll_delay = 0.01
    job_serializer = _dumps
    job_deserializer = json.loads


def worker(args: argparse.Namespace) -> None:
    RECORDER.start(args.url)
    # arq's own signal handlers cancel the running jobs and the poll loop on SIGTERM; its
    # close() then re-raises the cancellation of a job it caught mid-finish (arq 0.28.0),
    # which is that same requested stop, not a failure.
    with contextlib.suppress(asyncio.CancelledError):
        run_worker(
            WorkerSettings,
            redis_settings=RedisSettings.from_dsn(args.url),
            max_jobs=args.concurrency,
        )


async def _pool(url: str) -> ArqRedis:
    return await create_pool(
        RedisSettings.from_dsn(url), job_serializer=_dumps, default_queue_name=QUEUE
    )


async def _bulk(url: str, calls: list[tuple[Any, ...]]) -> None:
    pool = await _pool(url)
    try:
        for start in range(0, len(calls), CHUNK):
            await asyncio.gather(
                *(pool.enqueue_job(*call) for call in calls[start : start + CHUNK])
            )
    finally:
        await pool.aclose()


def enqueue(args: argparse.Namespace) -> None:
    if args.workload == "noop":
        asyncio.run(_bulk(args.url, [("noop",)] * args.count))
    elif args.workload == "sleep":
        asyncio.run(_bulk(args.url, [("sleep", ms) for ms in sleep_ms(args.count, args.seed)]))
    else:
        # pace() is synchronous: drive one loop by hand so each job is stored before the next.
        loop = asyncio.new_event_loop()
        try:
            pool = loop.run_until_complete(_pool(args.url))
            pace(
                args.count,
                args.rate,
                lambda _i, sent_at: loop.run_until_complete(pool.enqueue_job("latency", sent_at)),
            )
            loop.run_until_complete(pool.aclose())
        finally:
            loop.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(worker, enqueue)
