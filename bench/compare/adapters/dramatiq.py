"""Dramatiq with its Redis broker (`dramatiq[redis]`), default middleware, JSON encoder.

Run as `python -m bench.compare.adapters.dramatiq worker|enqueue ...` (see common.py). The
module's own name does not shadow the real package: under `-m`, sys.path[0] is the working
directory (/work/main), not this folder, and `import dramatiq` is an absolute import.

`worker` becomes Dramatiq's own command line (its main process), which forks the worker
process; that child imports this module under its package name to find the broker and the
actors, so the URL travels in an environment variable (the command line has no place for
it) and the child declares everything on import.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.compare import common
from bench.compare.common import QUEUE, RECORDER

_URL_ENV = "BENCH_DRAMATIQ_URL"
_MODULE = "bench.compare.adapters.dramatiq"


def _noop() -> None:
    RECORDER.done()


def _sleep(ms: float) -> None:
    time.sleep(ms / 1000)
    RECORDER.done()


def _latency(sent_at: float) -> None:
    RECORDER.latency(sent_at)
    RECORDER.done()


def _declare(url: str) -> dict[str, dramatiq.Actor]:
    """Set the broker up and declare the actors on it, keyed by workload."""
    broker = RedisBroker(url=url)
    dramatiq.set_broker(broker)
    return {
        name: dramatiq.actor(fn, actor_name=name, queue_name=QUEUE, broker=broker)
        for name, fn in (("noop", _noop), ("sleep", _sleep), ("latency", _latency))
    }


def worker(args: argparse.Namespace) -> None:
    # The docs' way to run workers: `dramatiq MODULE --processes P --threads T`, exec'd so
    # that this pid is Dramatiq's main process (the runner's SIGTERM reaches it) and the
    # environment below is read when Dramatiq is first imported. One process (the
    # benchmark starts more itself) with `concurrency` worker threads, the docs' model of
    # concurrency inside a process; `dramatiq-gevent` is offered for thousands of
    # network-bound jobs, not needed for 20.
    #
    # Prefetch: the Redis consumer fetches (one script call for many messages) only while
    # fewer than `dramatiq_queue_prefetch` messages are in the process, and otherwise
    # sleeps 5-10 ms before it looks again. Dramatiq's default window, 2 x threads, thus
    # caps a one-thread worker at about 2 jobs per sleep (~260 noop jobs/s measured here,
    # ~1,700/s with 8 threads). Dramatiq's docs list the variable but give no advice for
    # short jobs; Celery's guide does ("say 64, or 128" per slot), so the same 128 per
    # thread applies here (~4,800/s with one thread), capped like Dramatiq's own default.
    prefetch = min(128 * args.concurrency, 65535)
    env = {**os.environ, _URL_ENV: args.url, "dramatiq_queue_prefetch": str(prefetch)}
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        _MODULE,
        "--processes=1",
        f"--threads={args.concurrency}",
        f"--queues={QUEUE}",
        # Dramatiq logs at INFO on every process start and stop (never per job);
        # --skip-logging leaves the level to the worker process, which sets WARNING.
        "--skip-logging",
        # On SIGTERM running jobs finish and prefetched ones go back to the queue; the
        # runner kills after 10 s, so stop waiting for stragglers well before that.
        "--worker-shutdown-timeout=5000",
    ]
    os.execve(sys.executable, command, env)


def enqueue(args: argparse.Namespace) -> None:
    actors = _declare(args.url)
    # The Redis broker has no batch enqueue: each send is one EVALSHA of its dispatch
    # script, and group(...).run() is the same loop. So `send` in a loop, as Dramatiq's
    # own benchmark does.
    if args.workload == "latency":
        common.pace(args.count, args.rate, lambda _i, sent_at: actors["latency"].send(sent_at))
    elif args.workload == "sleep":
        sleep = actors["sleep"]
        for ms in common.sleep_ms(args.count, args.seed):
            sleep.send(ms)
    else:
        noop = actors["noop"]
        for _ in range(args.count):
            noop.send()


if _URL_ENV in os.environ and __name__ != "__main__":
    # Imported by `dramatiq` in the forked worker process.
    logging.basicConfig(level=logging.WARNING)
    _declare(os.environ[_URL_ENV])
    RECORDER.start(os.environ[_URL_ENV])

if __name__ == "__main__":
    common.main(worker, enqueue)
