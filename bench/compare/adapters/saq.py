"""SAQ adapter (see bench/compare/common.py for the command line).

Worker: one asyncio process running what `saq.worker.start` (the `saq` CLI) runs:
connect, `Worker.start()`, disconnect; `concurrency` = the contract's concurrency, each slot
blocking on BLMOVE, so no polling to tune. Everything else is SAQ's default (JSON;
dequeue_timeout 0 = block until a job comes). Jobs keep SAQ's default ttl (a finished job
stays 600 s with its result): ttl=-1 would delete it instead, at the same command count, but
it races SAQ's own sweep, which then logs "Job ... doesn't exist" errors (SAQ 0.26.4).

Bulk enqueue: SAQ has no batch enqueue (`Queue.batch()` only aborts the jobs of a failed
block), so `queue.enqueue` (one EVALSHA each) is gathered in chunks. The queue's own
`max_concurrent_ops` semaphore (default 20) bounds the connections, as SAQ intends.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from saq import Queue, Worker

from bench.compare.common import QUEUE, RECORDER, main, pace, sleep_ms

CHUNK = 500
"""Enqueue calls gathered at once (SAQ's semaphore lets 20 of them talk to Redis)."""


async def noop(ctx: dict[str, Any]) -> None:
    RECORDER.done()


async def sleep(ctx: dict[str, Any], *, ms: float) -> None:
    await asyncio.sleep(ms / 1000)
    RECORDER.done()


async def latency(ctx: dict[str, Any], *, sent_at: float) -> None:
    RECORDER.latency(sent_at)
    RECORDER.done()


def _queue(url: str) -> Queue:
    return Queue.from_url(url, name=QUEUE)


async def _work(url: str, concurrency: int) -> None:
    queue = _queue(url)
    # Worker.start() handles SIGTERM itself: it cancels the running jobs and returns.
    worker = Worker(queue, functions=[noop, sleep, latency], concurrency=concurrency)
    try:
        await queue.connect()
        await worker.start()
    finally:
        await queue.disconnect()


def worker(args: argparse.Namespace) -> None:
    RECORDER.start(args.url)
    asyncio.run(_work(args.url, args.concurrency))


async def _bulk(url: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    queue = _queue(url)
    try:
        await queue.connect()
        for start in range(0, len(calls), CHUNK):
            await asyncio.gather(
                *(
                    queue.enqueue(function, **kwargs)
                    for function, kwargs in calls[start : start + CHUNK]
                )
            )
    finally:
        await queue.disconnect()


def enqueue(args: argparse.Namespace) -> None:
    if args.workload == "noop":
        asyncio.run(_bulk(args.url, [("noop", {})] * args.count))
    elif args.workload == "sleep":
        durations = sleep_ms(args.count, args.seed)
        asyncio.run(_bulk(args.url, [("sleep", {"ms": ms}) for ms in durations]))
    else:
        # pace() is synchronous: drive one loop by hand so each job is stored before the next.
        loop = asyncio.new_event_loop()
        queue = _queue(args.url)
        try:
            loop.run_until_complete(queue.connect())
            pace(
                args.count,
                args.rate,
                lambda _i, sent_at: loop.run_until_complete(
                    queue.enqueue("latency", sent_at=sent_at)
                ),
            )
            loop.run_until_complete(queue.disconnect())
        finally:
            loop.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(worker, enqueue)
