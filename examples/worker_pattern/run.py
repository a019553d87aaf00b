"""Seed 001, end to end: `python examples/worker_pattern/run.py --iterations 100 --workers 4`.

Starts W `redwork worker` processes (one job at a time each, as the seed's workers; uses
REDWORK_REDIS_URL, or a private embedded Valkey server), enqueues N sleep jobs of 10-60 ms
and reports, per worker, the jobs it ran and the time it slept, and the run's wall time
against the ideal. Then what the seed's notes ask for: a chain A -> B -> C whose B fails
once and is retried, the same chain whose B fails for good (C never runs), a job over its
timeout, and the failed store where both end up. Exits with 0 only if each iteration ran
exactly once and the chains and the timeout ended as expected."""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from redwork import JobFailed, JobState, Settings, WorkflowHandle, chain
from redwork.job import JobRecord
from redwork.registry import WORKERS_CHANNEL
from redwork.server import given_or_private
from redwork.supervisor import worker_command

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from app import QUEUE, app, sleep, slow, step  # noqa: E402


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def our_workers(known: set[str]) -> set[str]:
    """Live workers of this example's queue that were not there before."""
    return {w.id for w in app.workers() if QUEUE in w.queues and w.id not in known}


def wait_for_workers(count: int, known: set[str], supervisor: subprocess.Popen[bytes]) -> None:
    """Block until `count` new workers serve the queue. Each announces itself when it has
    started, so the jobs are enqueued when all can take them, as the seed's goroutines
    can: otherwise the first process up would run most of them."""
    pubsub = app.client.redis().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(WORKERS_CHANNEL)
    deadline = time.monotonic() + 60
    try:
        while len(our_workers(known)) < count:
            if supervisor.poll() is not None:
                raise RuntimeError(f"the workers exited with {supervisor.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} workers did not start within 60 s")
            pubsub.get_message(timeout=1.0)  # a worker started, or a second passed
    finally:
        pubsub.close()


def run_sleeps(iterations: int, slots: int, seed: int | None) -> bool:
    """The seed's run: N sleep jobs, then the time each worker slept. True if every
    iteration completed exactly once."""
    rng = random.Random(seed)
    delays = [rng.randint(10, 60) for _ in range(iterations)]
    total = sum(delays)
    handles = app.enqueue_many(sleep.prepare(i, ms) for i, ms in enumerate(delays))
    print(f"# enqueued {iterations} sleep jobs of 10-60 ms ({total} ms in all)")
    # Each wait blocks on the job's own channel until it ends: no polling.
    timeout = 60 + total / 1000
    records = [app.client.wait(QUEUE, h.id, timeout) for h in handles]

    slept: dict[str, list[int]] = defaultdict(list)
    for record in records:
        if record.state is JobState.COMPLETED and record.worker is not None:
            slept[record.worker].append(record.result_value()["slept_ms"])
    width = max(len(w) for w in [*slept, "worker"])
    print(f"{'worker':<{width}}  {'jobs':>5}  {'slept':>9}")
    for worker, times in sorted(slept.items()):
        print(f"{worker:<{width}}  {len(times):>5}  {sum(times):>6} ms")
    done = sum(len(times) for times in slept.values())
    print(f"{'all':<{width}}  {done:>5}  {sum(map(sum, slept.values())):>6} ms")

    ran = sorted(r.result_value()["iteration"] for r in records if r.state is JobState.COMPLETED)
    once = ran == list(range(iterations)) and all(r.attempt == 1 for r in records)
    if once:
        print(f"iterations: all {iterations} completed, each exactly once (on its first attempt)")
    else:
        print(f"iterations: {len(ran)} of {iterations} completed; attempts: {attempts(records)}")
    wall = max(r.finished_at or 0 for r in records) - min(r.started_at or 0 for r in records)
    ideal = total / slots
    print(
        f"wall time {wall} ms from the first start to the last finish; ideal {ideal:.0f} ms "
        f"({total} ms / {slots} slots): {100 * ideal / max(wall, 1):.1f}% efficient"
    )
    return once


def attempts(records: list[JobRecord]) -> dict[int, int]:
    """How many jobs took each number of attempts."""
    counts: dict[int, int] = defaultdict(int)
    for record in records:
        counts[record.attempt] += 1
    return dict(sorted(counts.items()))


def describe(handle: WorkflowHandle) -> list[str]:
    """Print the chain as the seed writes it, `Job A (completed) -> Job B (failed) -> ...`,
    and how B's attempts went; returns each step's state."""
    nodes = handle.info().nodes  # in submit order: A, B, C
    shown = {"skipped": "not executed: skipped"}
    line = " -> ".join(
        f"Job {name} ({shown.get(n.state.value, n.state.value)})"
        for name, n in zip("ABC", nodes, strict=True)
    )
    # B's events, as GET /api/jobs/{id}/timeline gives them: when each attempt started,
    # and how it ended.
    timeline = app.client.run(app.client.queue(QUEUE).timeline(nodes[1].id))
    started = {attempt: at for event, attempt, at in timeline if event == "active"}
    ended = {
        attempt: {"retry_scheduled": "failed, retry scheduled"}.get(event, event)
        for event, attempt, _ in timeline
        if event in ("retry_scheduled", "completed", "failed")
    }
    first = min(started.values())
    runs = ", ".join(
        f"attempt {attempt} at +{at - first} ms: {ended.get(attempt, '?')}"
        for attempt, at in sorted(started.items())
    )
    print(f"{line}\n  B: {runs}")
    return [n.state.value for n in nodes]


def run_notes() -> bool:
    """What the seed's notes ask for; True if everything ended as expected."""
    print("# the seed's sequential tasks: a chain, each step given the previous one's result")
    good = app.submit(
        chain(step.s(name="A"), step.s(name="B", failures=1), step.s(name="C")),
        name="A -> B -> C, B fails once",
    )
    bad = app.submit(
        chain(step.s(name="A"), step.s(name="B", failures=3), step.s(name="C")),
        name="A -> B -> C, B fails on each attempt",
    )
    late = slow.enqueue(2.0)
    result = good.result(timeout=30)
    print(f"ideal scenario, B retried once: {result!r}")
    good_states = describe(good)
    try:
        bad.result(timeout=30)
        print("failure scenario: the chain succeeded?")
    except JobFailed as failed:
        print(f"failure scenario, B fails 3 times: {failed.error}")
    bad_states = describe(bad)

    print("# a job over its timeout: slow(2.0) with timeout=0.2")
    try:
        late.result(timeout=30)
        timed_out = False
    except JobFailed as failed:
        print(f"job {late.id}: {failed.error}")
        timed_out = failed.error.startswith("timeout:")

    print(f"# the failed store: redwork failed list -q {QUEUE}")
    listing = subprocess.run(
        [sys.executable, "-m", "redwork", "failed", "list", "-q", QUEUE],
        env={**os.environ, "REDWORK_REDIS_URL": app.client.url, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        check=True,
    )
    print(listing.stdout.rstrip())
    return (
        result == "A -> B -> C"
        and good_states == ["completed"] * 3
        and bad_states == ["completed", "failed", "skipped"]
        and timed_out
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=at_least_one, default=100, help="sleep jobs")
    parser.add_argument("--workers", type=at_least_one, default=4, help="worker processes")
    parser.add_argument(
        "--concurrency",
        type=at_least_one,
        default=1,
        help="jobs each worker runs at once (the seed's workers: 1)",
    )
    parser.add_argument("--seed", type=int, help="seed of the random sleep times")
    args = parser.parse_args()
    with given_or_private(os.environ.get("REDWORK_REDIS_URL"), "worker-pattern-") as url:
        app.configure(Settings.load(redis_url=url))
        env = {
            **os.environ,
            "REDWORK_REDIS_URL": url,
            "REDWORK_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        command = [
            *worker_command("app:app", args.workers),
            *("--concurrency", str(args.concurrency), "--queues", QUEUE),
        ]
        processes = "1 worker process" if args.workers == 1 else f"{args.workers} worker processes"
        jobs = "1 job" if args.concurrency == 1 else f"{args.concurrency} jobs"
        print(
            f"# {processes}, {jobs} at a time each: "
            f"redwork worker app:app -p {args.workers} -c {args.concurrency} -q {QUEUE}"
        )
        known = {worker.id for worker in app.workers()}
        supervisor = subprocess.Popen(command, env=env, cwd=HERE)
        try:
            wait_for_workers(args.workers, known, supervisor)
            once = run_sleeps(args.iterations, args.workers * args.concurrency, args.seed)
            notes = run_notes()
        finally:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(timeout=60)
            app.client.close()
        return 0 if once and notes else 1


if __name__ == "__main__":
    sys.exit(main())
