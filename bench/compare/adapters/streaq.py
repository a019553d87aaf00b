"""streaq adapter (see bench/compare/common.py for the command line).

Worker: one process running `Worker.run_sync()`, what the `streaq` CLI runs for each of
its workers; `concurrency` = the contract's concurrency, prefetch at streaq's default
(as many again as concurrency), reads blocking on XREADGROUP, so no polling to tune;
streaq handles SIGTERM itself (grace_period 0: running jobs are cancelled at once).
Departures from the defaults: JSON instead of streaq's default pickle (the contract wants
no pickle where the system allows JSON); every task ttl=0, which stores no result (the
benchmark reads none); silent=True, streaq's switch for its per-task log lines.

Bulk enqueue: `Worker.enqueue_many`, streaq's batch API (one pipeline per call), in chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any

from streaq import Worker
from streaq.task import AsyncRegisteredTask

from bench.compare.common import ASYNC_TASKS, QUEUE, RECORDER, main, pace, sleep_ms

CHUNK = 1000
"""Tasks per enqueue_many pipeline."""


def _worker(
    url: str, concurrency: int = 1
) -> tuple[Worker[Any], dict[str, AsyncRegisteredTask[Any, None]]]:
    worker = Worker(
        redis_url=url,
        concurrency=concurrency,
        queue_name=QUEUE,
        serializer=json.dumps,
        deserializer=json.loads,
    )
    tasks = {fn.__name__: worker.task(ttl=0, silent=True)(fn) for fn in ASYNC_TASKS}
    return worker, tasks


def worker(args: argparse.Namespace) -> None:
    RECORDER.start(args.url)
    worker, _ = _worker(args.url, args.concurrency)
    worker.run_sync()


async def _bulk(url: str, name: str, calls: list[tuple[Any, ...]]) -> None:
    worker, tasks = _worker(url)
    async with worker:
        for start in range(0, len(calls), CHUNK):
            await worker.enqueue_many(
                [tasks[name].enqueue(*call) for call in calls[start : start + CHUNK]]
            )


async def _paced(url: str, count: int, rate: float) -> None:
    worker, tasks = _worker(url)
    loop = asyncio.get_running_loop()

    async def store(sent_at: float) -> None:
        await tasks["latency"].enqueue(sent_at)

    def send(_i: int, sent_at: float) -> None:
        # Blocks pace()'s thread until the job is stored.
        asyncio.run_coroutine_threadsafe(store(sent_at), loop).result()

    # streaq's client lives inside `async with worker`, entered and left in one task, so
    # the synchronous pace() runs in a thread and hands each enqueue to this running loop
    # (keeping the loop stopped between sends, as the other async adapters do, measured a
    # little slower for streaq: p50 2-3 ms against 1.6-1.7 ms).
    async with worker:
        await asyncio.to_thread(pace, count, rate, send)


def enqueue(args: argparse.Namespace) -> None:
    if args.workload == "noop":
        asyncio.run(_bulk(args.url, "noop", [()] * args.count))
    elif args.workload == "sleep":
        asyncio.run(_bulk(args.url, "sleep", [(ms,) for ms in sleep_ms(args.count, args.seed)]))
    else:
        asyncio.run(_paced(args.url, args.count, args.rate))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(worker, enqueue)
