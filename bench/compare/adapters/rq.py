"""RQ adapter (see bench/compare/common.py for the command line).

Worker: RQ runs one job at a time per worker process, so `--concurrency C` starts C worker
processes: with C > 1 through RQ's WorkerPool (what `rq worker-pool -n C` runs: it forks
C workers, each also offering to run the scheduler, and on SIGTERM stops them warmly);
with C = 1 the worker runs in this process, as `rq worker` would. Each worker is a
SimpleWorker: the default Worker forks a child for every job (isolation, at a cost of
milliseconds per job); RQ's performance notes point at that fork as the cost to avoid,
and SimpleWorker runs the job in the worker process itself (the job functions are imported
once, before the first job). JSONSerializer instead of RQ's default pickle. result_ttl=0:
the benchmark reads no results, so none are kept (RQ deletes the job once it succeeds).

Bulk enqueue: `Queue.enqueue_many([Queue.prepare_data(...) ...])`, RQ's bulk API (one
pipeline per call), in calls of CHUNK jobs; latency jobs go one `Queue.enqueue` each.
Jobs name their function by its import path, which the worker imports.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

from bench.compare.common import QUEUE, RECORDER, main, pace, sleep_ms

MODULE = "bench.compare.adapters.rq"
CHUNK = 1_000
"""Jobs per enqueue_many call: one pipeline each, so that a 20,000-job enqueue is not
one 20,000-job transaction held in memory on both sides."""


def noop() -> None:
    RECORDER.done()


def sleep(ms: float) -> None:
    time.sleep(ms / 1000)
    RECORDER.done()


def latency(sent_at: float) -> None:
    RECORDER.latency(sent_at)
    RECORDER.done()


class BenchWorker(SimpleWorker):
    """A SimpleWorker that starts the recorder in its own process (the recorder's thread
    would not survive WorkerPool's fork)."""

    recorder_url = ""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        RECORDER.start(self.recorder_url)
        return super().work(*args, **kwargs)


def worker(args: argparse.Namespace) -> None:
    BenchWorker.recorder_url = args.url
    connection = Redis.from_url(args.url)
    if args.concurrency == 1:
        queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer)
        one = BenchWorker([queue], connection=connection, serializer=JSONSerializer)
        one.work(logging_level="WARNING")
        return
    pool = WorkerPool(
        [QUEUE],
        connection=connection,
        num_workers=args.concurrency,
        worker_class=BenchWorker,
        serializer=JSONSerializer,
    )
    pool.start(logging_level="WARNING")


def enqueue(args: argparse.Namespace) -> None:
    queue = Queue(QUEUE, connection=Redis.from_url(args.url), serializer=JSONSerializer)
    if args.workload == "latency":
        pace(
            args.count,
            args.rate,
            lambda _i, sent_at: queue.enqueue(f"{MODULE}.latency", sent_at, result_ttl=0),
        )
        return
    if args.workload == "sleep":
        calls = [(f"{MODULE}.sleep", [ms]) for ms in sleep_ms(args.count, args.seed)]
    else:
        calls = [(f"{MODULE}.noop", [])] * args.count
    for start in range(0, len(calls), CHUNK):
        queue.enqueue_many(
            [
                Queue.prepare_data(func, args=func_args, result_ttl=0)
                for func, func_args in calls[start : start + CHUNK]
            ]
        )


if __name__ == "__main__":
    main(worker, enqueue)
