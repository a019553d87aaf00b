"""Celery with the Redis broker (kombu's Redis transport) and no result backend.

Run as `python -m bench.compare.adapters.celery worker|enqueue ...` (see common.py). The
module's own name does not shadow the real package: under `-m`, sys.path[0] is the working
directory (/work/main), not this folder, and `import celery` is an absolute import.
"""

from __future__ import annotations

import argparse
import time
import warnings

from celery import Celery
from celery.exceptions import SecurityWarning

from bench.compare import common
from bench.compare.common import QUEUE, RECORDER

# Celery warns whenever a worker runs as root (as benches do on this machine); the risk it
# names is pickle from the broker, and this app accepts JSON only.
warnings.filterwarnings("ignore", category=SecurityWarning)

app = Celery("bench", set_as_current=True)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    # No result backend: nothing reads results, and each one would cost a write per job.
    task_ignore_result=True,
    task_default_queue=QUEUE,
    # "Optimizing" guide, Prefetch Limits: for many short tasks where throughput or round
    # trip latency matters the multiplier should be large, "say 64, or 128"; the worker
    # then holds up to 128 x concurrency reserved messages. Measured here: 128 drains
    # noop jobs faster than the default 4 and than 1.
    worker_prefetch_multiplier=128,
    # Early acknowledgement, Celery's default; the guide pairs late acks with a multiplier
    # of 1 for long tasks. kombu's Redis transport still keeps each reserved message in
    # its unacked hash until the ack (MULTI/ZADD/HSET/EXEC, then MULTI/ZREM/HDEL/EXEC: ~9
    # commands per job with the BRPOP). Its `ack_emulation=False` would save those but
    # lose jobs on a crash, so it stays on like the other systems' guarantees.
    task_acks_late=False,
    # Remote control (`celery inspect`/`control`) keeps a broadcast consumer on the broker
    # that the benchmark never uses.
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop() -> None:
    RECORDER.done()


@app.task(name="bench.sleep")
def sleep(ms: float) -> None:
    time.sleep(ms / 1000)
    RECORDER.done()


@app.task(name="bench.latency")
def latency(sent_at: float) -> None:
    RECORDER.latency(sent_at)
    RECORDER.done()


def worker(args: argparse.Namespace) -> None:
    app.conf.broker_url = args.url
    # One OS process, as the spec asks, so the pool is one that runs jobs in this process:
    # `solo` (the docs: "executes tasks sequentially in the main thread") for concurrency
    # 1, the fastest noop drain here (no hand-off to another thread or process), and
    # `threads` for more. prefork, the docs' default "for CPU-bound tasks and most use
    # cases", forks `concurrency` children and ships every job over a pipe: slower for
    # short jobs here (about 1,100/s at -c 1 against 1,600-1,800/s with solo) and more
    # than one process. gevent/eventlet, the docs' pick for many I/O-bound tasks, would
    # need monkey patching and an extra C extension for a concurrency of 20 that plain
    # threads handle.
    pool = "solo" if args.concurrency == 1 else "threads"
    RECORDER.start(args.url)  # both pools run the jobs in this process
    app.worker_main(
        [
            "--quiet",  # no banner
            "worker",
            f"--pool={pool}",
            f"--concurrency={args.concurrency}",
            f"--queues={QUEUE}",
            "--loglevel=WARNING",
            # Cluster chatter (task events, the start-up sync, heartbeats) that a worker
            # with events off and no peers to talk to does not need.
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def enqueue(args: argparse.Namespace) -> None:
    app.conf.broker_url = args.url
    # Celery has no pipelined bulk send (one LPUSH per apply_async); group(...).apply_async()
    # is the same loop plus building a GroupResult and measured slower, so: a loop on one
    # producer (one connection), as the docs' "Connections" section shows.
    with app.producer_or_acquire() as producer:
        if args.workload == "latency":
            common.pace(
                args.count,
                args.rate,
                lambda _i, sent_at: latency.apply_async((sent_at,), producer=producer),
            )
        elif args.workload == "sleep":
            for ms in common.sleep_ms(args.count, args.seed):
                sleep.apply_async((ms,), producer=producer)
        else:
            for _ in range(args.count):
                noop.apply_async(producer=producer)


if __name__ == "__main__":
    common.main(worker, enqueue)
