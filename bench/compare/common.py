"""What every system's adapter shares (bench/compare/adapters/<system>.py). It runs in
that system's own virtual environment, so it needs nothing but the standard library
and redis-py.

An adapter is a module run as `python -m bench.compare.adapters.<system> <command>`:

    worker  --url URL --workload noop|sleep|latency --concurrency C
        run one worker process of the system (until SIGTERM), configured as its
        documentation recommends for the workload, with `concurrency` jobs at once;
    enqueue --url URL --workload noop|sleep|latency --count N [--rate R] [--seed S]
        enqueue the workload's jobs as the system's documentation recommends for bulk
        (or, for `latency`, one at a time at R jobs/s); prints {"seconds": ...,
        "started_at": ...} (the enqueue's duration, and time.time() as it began).

Tasks report through `Recorder` (process-global): `done()` after every job, and
`latency(sent_at)` as a latency job starts. A daemon thread sends the counts every
FLUSH_EVERY seconds (one INCRBY with a ZADD of the latest end's time, one RPUSH), so
that measuring costs the systems next to nothing per job, and the same for all.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

DONE_KEY = "bench:done"
LATENCY_KEY = "bench:latency"
LAST_DONE_KEY = "bench:last-done"
"""ZSET with one member whose score is the wall-clock time of the latest job end seen."""
QUEUE = "bench"
"""The queue (or its equivalent) every adapter uses."""
FLUSH_EVERY = 0.01
WORKLOADS = ("noop", "sleep", "latency")


def sleep_ms(count: int, seed: int) -> list[float]:
    """The sleep workload's durations: 10-60 ms, the same for every system."""
    rng = random.Random(seed)
    return [rng.uniform(10.0, 60.0) for _ in range(count)]


def ideal_seconds(durations_ms: list[float], concurrency: int) -> float:
    """How long `concurrency` slots take to run the jobs, in enqueue order, when each job
    starts the moment a slot frees: a queue with no overhead. (Total time over
    concurrency is lower, but only a scheduler that reorders jobs by length gets near it.)"""
    slots = [0.0] * concurrency
    for ms in durations_ms:
        heapq.heappush(slots, heapq.heappop(slots) + ms)
    return max(slots) / 1000


class Recorder:
    """Counts finished jobs and collects start latencies in a worker process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = 0
        self._last_done = 0.0
        self._latencies: list[float] = []
        self._client: redis.Redis | None = None
        self._started = False

    def start(self, url: str) -> None:
        """Call once in the worker process before its first job."""
        with self._lock:
            if self._started:
                return
            self._client = redis.Redis.from_url(url)
            self._started = True
        threading.Thread(target=self._flush_loop, name="bench-recorder", daemon=True).start()

    def done(self) -> None:
        # The clock is read here, not at the flush: the runner times the last job's end
        # as it happened, not up to a flush period plus a poll later.
        at = time.time()
        with self._lock:
            self._done += 1
            self._last_done = at

    def latency(self, sent_at: float) -> None:
        """Seconds from the producer's enqueue call to the start of the run (one clock)."""
        elapsed = time.time() - sent_at
        with self._lock:
            self._latencies.append(elapsed)

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            done, self._done = self._done, 0
            last_done = self._last_done
            latencies, self._latencies = self._latencies, []
        if self._client is None or not (done or latencies):
            return
        pipe = self._client.pipeline(transaction=False)
        if latencies:
            pipe.rpush(LATENCY_KEY, *latencies)
        if done:
            pipe.incrby(DONE_KEY, done)
            pipe.zadd(LAST_DONE_KEY, {"last": last_done}, gt=True)
        pipe.execute()


RECORDER = Recorder()


# The three tasks, as plain coroutine functions for adapters whose system registers
# functions as they are (others wrap the same bodies in their own signatures).
async def noop() -> None:
    RECORDER.done()


async def sleep(ms: float) -> None:
    await asyncio.sleep(ms / 1000)
    RECORDER.done()


async def latency(sent_at: float) -> None:
    RECORDER.latency(sent_at)
    RECORDER.done()


ASYNC_TASKS = (noop, sleep, latency)


def pace(count: int, rate: float, send: Callable[[int, float], Any]) -> None:
    """Call send(i, sent_at) `count` times at `rate` per second, on an absolute schedule
    (a late call does not push the later ones back)."""
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(i, time.time())


def main(
    worker: Callable[[argparse.Namespace], None],
    enqueue: Callable[[argparse.Namespace], None],
) -> None:
    """The adapter's command line: `worker` runs a worker process (returning when it
    stops); `enqueue` enqueues the workload and returns once every job is stored."""
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("worker", "enqueue"):
        command = commands.add_parser(name)
        command.add_argument("--url", required=True)
        command.add_argument("--workload", choices=WORKLOADS, required=True)
    commands.choices["worker"].add_argument("--concurrency", type=int, required=True)
    commands.choices["enqueue"].add_argument("--count", type=int, required=True)
    commands.choices["enqueue"].add_argument("--rate", type=float, default=500.0)
    commands.choices["enqueue"].add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.command == "worker":
        worker(args)
        return
    started_at, started = time.time(), time.perf_counter()
    enqueue(args)
    print(json.dumps({"seconds": time.perf_counter() - started, "started_at": started_at}))
