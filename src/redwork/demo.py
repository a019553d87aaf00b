"""`redwork demo`: the worker pattern of the seeds, end to end on a private server:
N sleep jobs of 10-60 ms, W worker processes, a live progress bar, then time slept
per worker and the run's wall time against the ideal."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable

import orjson
from redis.client import PubSub
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from redwork.app import Redwork
from redwork.context import current_job
from redwork.job import JobRecord, JobState
from redwork.registry import WORKERS_CHANNEL
from redwork.settings import Settings, to_env
from redwork.supervisor import worker_command

QUEUE = "demo"
app = Redwork("demo", queues=(QUEUE,))


@app.task(queue=QUEUE, name="demo.sleep")
async def sleep(ms: int) -> dict[str, object]:
    """The seeds' work item: sleep, and say who slept."""
    await asyncio.sleep(ms / 1000)
    return {"worker": current_job().worker_id, "slept_ms": ms}


def run_demo(
    settings: Settings,
    iterations: int,
    workers: int,
    concurrency: int,
    seed: int | None,
    console: Console,
) -> None:
    from redwork.server import given_or_private

    with given_or_private(settings.redis_url, "redwork-demo-") as url:
        if not settings.redis_url:
            console.print(f"embedded Valkey server at {url}")
        _run(settings.replace(redis_url=url), iterations, workers, concurrency, seed, console)


def _run(
    settings: Settings,
    iterations: int,
    workers: int,
    concurrency: int,
    seed: int | None,
    console: Console,
) -> None:
    demo = Redwork("demo", settings=settings.replace(queues=(QUEUE,)))
    client = demo.client
    rng = random.Random(seed)
    delays = [rng.randint(10, 60) for _ in range(iterations)]
    pubsub = client.redis().pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]
    pubsub.subscribe(client.queue(QUEUE).events, WORKERS_CHANNEL)
    worker_settings = settings.replace(
        concurrency=concurrency, processes=workers, queues=(QUEUE,), grace=5.0
    )
    env = {**os.environ, **to_env(worker_settings), "REDWORK_LOG_LEVEL": "WARNING"}
    command = worker_command("redwork.demo:app", processes=workers)
    console.print(f"starting {workers} worker processes x {concurrency} slots")
    started = time.perf_counter()
    supervisor = subprocess.Popen(command, env=env)
    try:
        _wait_for_messages(pubsub, "started", workers, lambda n: None)
        handles = demo.enqueue_many(sleep.prepare(ms) for ms in delays)
        console.print(f"enqueued {iterations} sleep jobs (10-60 ms, {sum(delays)} ms in all)")
        with Progress(console=console) as progress:
            bar = progress.add_task("jobs", total=iterations)
            _wait_for_messages(
                pubsub,
                "completed",
                iterations,
                lambda n: progress.update(bar, completed=n),
            )
        elapsed = time.perf_counter() - started
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            supervisor.kill()  # its children die with it (parent-death signal)
            supervisor.wait()
        pubsub.close()
    records = [client.job(QUEUE, h.id) for h in handles]
    _report(records, workers * concurrency, sum(delays), elapsed, console)


def _wait_for_messages(
    pubsub: PubSub, event: str, count: int, on_progress: Callable[[int], None]
) -> None:
    """Block on the subscription until `count` jobs (or workers) had `event`; a failed
    job counts as done too."""
    seen, quiet_since = 0, time.monotonic()
    while seen < count:
        message = pubsub.get_message(timeout=1.0)
        if message is None:  # a timeout, or a subscription's confirmation
            if time.monotonic() - quiet_since > 30:
                raise RuntimeError("nothing happened for 30 s; are the workers running?")
            continue
        quiet_since = time.monotonic()
        body = orjson.loads(message["data"])
        if body["event"] in (event, "failed"):
            seen += len(body.get("jobs", [None]))
            on_progress(seen)


def _report(
    records: list[JobRecord], slots: int, total_ms: int, elapsed: float, console: Console
) -> None:
    per_worker: dict[str, list[int]] = defaultdict(list)
    for record in records:
        if record.state is JobState.COMPLETED:
            result = record.result_value()
            per_worker[result["worker"]].append(result["slept_ms"])
    table = Table(title="per worker")
    for column in ("worker", "jobs done", "time slept"):
        table.add_column(column, justify="right")
    for index, (_, slept) in enumerate(sorted(per_worker.items()), start=1):
        table.add_row(f"worker {index}", str(len(slept)), f"{sum(slept)} ms")
    console.print(table)
    first_start = min(r.started_at or 0 for r in records)
    last_end = max(r.finished_at or 0 for r in records)
    wall_ms = last_end - first_start
    ideal_ms = total_ms / slots
    failed = sum(1 for r in records if r.state is not JobState.COMPLETED)
    console.print(f"jobs: {len(records) - failed} completed, {failed} failed")
    console.print(
        f"run wall time (first start to last finish): {wall_ms} ms; ideal "
        f"(total sleep / {slots} slots): {ideal_ms:.0f} ms; efficiency "
        f"{100 * ideal_ms / max(wall_ms, 1):.1f}%"
    )
    console.print(f"including worker start-up: {elapsed * 1000:.0f} ms")
