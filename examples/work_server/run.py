"""Seed 002, end to end: `python examples/work_server/run.py [--jobs 100]`.

Starts `redwork serve app:api` (uses REDWORK_REDIS_URL, or a private embedded Valkey
server) and the listener (a WebSocket on its live updates), stores N sleep jobs of
100-500 ms with one enqueue_many call, shows the first as stored, then starts cores - 1
worker processes. The listener prints a "finished" line as each job ends; then the first
job again (`redwork job show`: its result, its worker), and how many jobs each worker ran.
With --kill-a-worker, the worker that finished the first job is killed (SIGKILL) at once:
the jobs it was running come back when their lease runs out, and run again.
Exits with 0 only if the listener heard each job finish exactly once."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import httpx

from redwork import JobHandle, JobState, Settings
from redwork.server import free_port, given_or_private, wait_listening
from redwork.settings import default_processes
from redwork.supervisor import worker_command

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from app import QUEUE, app, work  # noqa: E402
from listener import listen  # noqa: E402

KILL_LEASE = 2.0
"""Seconds a job stays leased without a heartbeat, with --kill-a-worker (default 30):
how long the jobs of the killed worker wait before they are taken back."""


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def show_job(url: str, job_id: str) -> dict[str, object]:
    """`redwork job show ID`: the job's hash, as JSON."""
    shown = subprocess.run(
        [sys.executable, "-m", "redwork", "job", "show", job_id, "-q", QUEUE],
        env={**os.environ, "REDWORK_REDIS_URL": url},
        capture_output=True,
        text=True,
        check=True,
    )
    print(f"$ redwork job show {job_id} -q {QUEUE}\n{shown.stdout.rstrip()}")
    job: dict[str, object] = json.loads(shown.stdout)
    return job


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=at_least_one, default=100, help="sleep jobs to run")
    parser.add_argument(
        "--workers",
        type=at_least_one,
        default=default_processes(),
        help=f"worker processes (default: cores - 1, here {default_processes()})",
    )
    parser.add_argument("--concurrency", type=at_least_one, default=10, help="jobs per worker")
    parser.add_argument("--seed", type=int, help="seed of the random sleep times")
    parser.add_argument(
        "--kill-a-worker",
        action="store_true",
        help=f"SIGKILL a worker mid-run (with a lease of {KILL_LEASE:g} s; 2 workers at least)",
    )
    args = parser.parse_args()
    if args.kill_a_worker:
        # One to kill, and one to take its jobs back while the supervisor restarts it.
        args.workers = max(2, args.workers)
    rng = random.Random(args.seed)
    batch = uuid.uuid4().hex[:8]
    # Ids of our own, to read the listener's lines by; enqueueing an id twice adds one job.
    jobs = [
        work.options(job_id=f"{batch}-{i}").prepare(i, rng.randint(100, 500))
        for i in range(args.jobs)
    ]
    with given_or_private(os.environ.get("REDWORK_REDIS_URL"), "work-server-") as url:
        app.configure(Settings.load(redis_url=url))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "REDWORK_REDIS_URL": url,
            "REDWORK_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        serve = [sys.executable, "-m", "redwork", "serve", "app:api", "--port", str(port)]
        api = subprocess.Popen(serve, env=env, cwd=HERE)
        workers: list[subprocess.Popen[bytes]] = []
        options = ["--concurrency", str(args.concurrency), "--queues", QUEUE]
        if args.kill_a_worker:
            options += ["--lease", f"{KILL_LEASE:g}"]
        handles: list[JobHandle] = []
        killed: list[str] = []

        async def enqueue_then_start_workers() -> None:
            handles.extend(await asyncio.to_thread(app.enqueue_many, jobs))
            print(f"# stored {len(handles)} jobs, a hash each, with one app.enqueue_many call")
            first = await asyncio.to_thread(handles[0].info)
            call = f"{jobs[0].task}{tuple(jobs[0].args)}"
            print(
                f"app.job({first.id!r}, queue={QUEUE!r}).info(): {first.state.value}, task {call}"
            )
            processes = (
                "1 worker process" if args.workers == 1 else f"{args.workers} worker processes"
            )
            print(
                f"# {processes}, {args.concurrency} jobs at a time each: "
                f"redwork worker app:app -p {args.workers} {' '.join(options)}"
            )
            command = [*worker_command("app:app", args.workers), *options]
            workers.append(subprocess.Popen(command, env=env, cwd=HERE))

        async def kill_its_worker(job_id: str) -> None:
            """The first time a job finishes: SIGKILL the worker that ran it, mid-run."""
            if killed or not args.kill_a_worker:
                return
            record = await asyncio.to_thread(app.job(job_id, QUEUE).info)
            async with httpx.AsyncClient(base_url=base) as http:
                live = (await http.get("/api/workers")).json()
            pid = next(w["pid"] for w in live if w["id"] == record.worker)
            os.kill(pid, signal.SIGKILL)
            killed.append(str(record.worker))
            print(
                f"# kill -9 {pid}: the worker {record.worker}, with the jobs it is running; "
                f"they come back once their {KILL_LEASE:g} s lease runs out"
            )

        try:
            wait_listening(port, api)
            # Generous: ten times the longest sleep per job and slot, plus a minute to start.
            deadline = 60 + 5 * args.jobs / (args.workers * args.concurrency)
            listening = listen(base, QUEUE, args.jobs, enqueue_then_start_workers, kill_its_worker)
            ended = asyncio.run(asyncio.wait_for(listening, deadline))
            shown = show_job(url, handles[0].id)
            records = [h.info() for h in handles]
        finally:
            for process in [*workers, api]:
                process.terminate()
                process.wait(timeout=60)
            app.client.close()
        ran = Counter(r.worker for r in records if r.state is JobState.COMPLETED)
        print("# jobs per worker (each job's hash names the worker that ran it)")
        for worker, count in sorted(ran.items(), key=lambda item: str(item[0])):
            print(f"{worker}: {count}{' (killed)' if worker in killed else ''}")
        print(f"all: {sum(ran.values())}")
        once = sorted(ended) == sorted(h.id for h in handles)
        print(f"finished messages: {len(ended)} for {len(handles)} jobs, one each: {once}")
        good = once and sum(ran.values()) == args.jobs and shown["state"] == "completed"
        return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
