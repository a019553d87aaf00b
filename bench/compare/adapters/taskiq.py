"""taskiq adapter, with taskiq-redis (see bench/compare/common.py for the command line).

Broker: RedisStreamBroker, the one taskiq-redis's README leads with and the only one of
its three that acknowledges a job after running it (ListQueueBroker pops it, so a crash
loses it; PubSubBroker broadcasts), the at-least-once delivery the other systems give.
Its one change from the defaults: consumer_id "0", so the consumer group, wherever it is
created first, also delivers the jobs that were enqueued before it (with the default "$" a
stream filled before any worker or producer started would be skipped). No result backend:
the benchmark reads no results. JSON is taskiq's default serializer.

Worker: in this process, what each child of `taskiq worker --workers 1` runs (a Receiver
listening until an event, then broker.shutdown()), without the supervising parent; with
`--max-async-tasks` = concurrency and `--max-prefetch` = concurrency, the pairing of
streaq's published taskiq benchmark (and streaq's own default prefetch); acks stay at
taskiq's default, when_saved, i.e. after the job ran. The one difference from the CLI's
`start_listen`: SIGTERM goes through loop.add_signal_handler. The CLI sets its stop event
from a plain signal.signal handler, and with this broker an idle worker then never stops
(taskiq 0.13.0, taskiq-redis 1.2.4: `taskiq worker` ignored SIGTERM for 15 s, 3 tries out
of 3), while the same Receiver stopped by a loop-aware handler returns at once.

Bulk enqueue: taskiq has no batch API; `.kiq()` (one XADD each) is gathered in chunks
over the broker's connection pool, after `broker.startup()` as taskiq's docs require.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from taskiq import AsyncTaskiqDecoratedTask
from taskiq.receiver import Receiver
from taskiq_redis import RedisStreamBroker

from bench.compare.common import ASYNC_TASKS, QUEUE, RECORDER, main, pace, sleep_ms

CHUNK = 500
"""`.kiq()` calls gathered at once (the pool lends 50 connections, taskiq-redis's default)."""


def _broker(url: str) -> tuple[RedisStreamBroker, dict[str, AsyncTaskiqDecoratedTask[Any, Any]]]:
    broker = RedisStreamBroker(url, queue_name=QUEUE, consumer_id="0")
    tasks = {fn.__name__: broker.register_task(fn, task_name=fn.__name__) for fn in ASYNC_TASKS}
    return broker, tasks


async def _work(url: str, concurrency: int) -> None:
    broker, _ = _broker(url)
    broker.is_worker_process = True
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        with ThreadPoolExecutor() as executor:
            receiver = Receiver(
                broker=broker,
                executor=executor,
                max_async_tasks=concurrency,
                max_prefetch=concurrency,
            )
            await receiver.listen(stop)
    finally:
        await broker.shutdown()


def worker(args: argparse.Namespace) -> None:
    RECORDER.start(args.url)
    asyncio.run(_work(args.url, args.concurrency))


async def _bulk(url: str, name: str, calls: list[tuple[Any, ...]]) -> None:
    broker, tasks = _broker(url)
    await broker.startup()
    try:
        for start in range(0, len(calls), CHUNK):
            await asyncio.gather(*(tasks[name].kiq(*call) for call in calls[start : start + CHUNK]))
    finally:
        await broker.shutdown()


def enqueue(args: argparse.Namespace) -> None:
    if args.workload == "noop":
        asyncio.run(_bulk(args.url, "noop", [()] * args.count))
    elif args.workload == "sleep":
        asyncio.run(_bulk(args.url, "sleep", [(ms,) for ms in sleep_ms(args.count, args.seed)]))
    else:
        # pace() is synchronous: drive one loop by hand so each job is stored before the next.
        loop = asyncio.new_event_loop()
        broker, tasks = _broker(args.url)
        try:
            loop.run_until_complete(broker.startup())
            pace(
                args.count,
                args.rate,
                lambda _i, sent_at: loop.run_until_complete(tasks["latency"].kiq(sent_at)),
            )
            loop.run_until_complete(broker.shutdown())
        finally:
            loop.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(worker, enqueue)
