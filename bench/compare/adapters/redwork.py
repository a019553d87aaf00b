"""redwork adapter (see bench/compare/common.py for the command line).

Worker: `redwork worker bench.compare.adapters.redwork:app`, run in this process through
redwork's own CLI and configured by REDWORK_* variables, as the README shows: one process
(REDWORK_PROCESSES=1: the runner starts one adapter per process it wants), async tasks,
`concurrency` job slots. REDWORK_PREFETCH = concurrency: the README recommends prefetch
for short jobs (a freed slot starts the next job without a fetch round trip), and with
one worker per process a prefetched job never waits while another process idles, except
for the last few jobs of a drain. Everything else stays at redwork's defaults (results
kept for a day, scheduler on). On uvloop when it is installed (the runner installs it).

Bulk enqueue: `app.enqueue_many([task.prepare(...) ...])`, which stores the jobs 1,000
per script call, pipelined; latency jobs go one `enqueue` call each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

from bench.compare.common import QUEUE, RECORDER, main, pace, sleep_ms
from redwork import Redwork
from redwork.cli import cli
from redwork.settings import Settings

APP_PATH = "bench.compare.adapters.redwork:app"

app = Redwork("bench-compare")


@app.task(name="compare.noop", queue=QUEUE)
async def noop() -> None:
    RECORDER.done()


@app.task(name="compare.sleep", queue=QUEUE)
async def sleep(ms: float) -> None:
    await asyncio.sleep(ms / 1000)
    RECORDER.done()


@app.task(name="compare.latency", queue=QUEUE)
async def latency(sent_at: float) -> None:
    RECORDER.latency(sent_at)
    RECORDER.done()


def worker(args: argparse.Namespace) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        # The CLI's asyncio.run then makes a uvloop loop.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    RECORDER.start(args.url)
    os.environ.update(
        REDWORK_REDIS_URL=args.url,
        REDWORK_QUEUES=QUEUE,
        REDWORK_PROCESSES="1",
        REDWORK_CONCURRENCY=str(args.concurrency),
        REDWORK_PREFETCH=str(args.concurrency),
        REDWORK_LOG_LEVEL="WARNING",
    )
    # Run as `python -m`, this module is __main__: the CLI imports it again by name and
    # runs that copy's app, whose tasks report to the same RECORDER.
    cli(["worker", APP_PATH], prog_name="redwork")


def enqueue(args: argparse.Namespace) -> None:
    app.configure(Settings.load(redis_url=args.url))
    if args.workload == "latency":
        pace(args.count, args.rate, lambda _i, sent_at: latency.enqueue(sent_at))
    elif args.workload == "sleep":
        app.enqueue_many([sleep.prepare(ms) for ms in sleep_ms(args.count, args.seed)])
    else:
        app.enqueue_many([noop.prepare() for _ in range(args.count)])


if __name__ == "__main__":
    main(worker, enqueue)
