"""Seed 003, end to end: `python examples/orchestrator/run.py`.

Starts `redwork serve app:api` (uses REDWORK_REDIS_URL, or a private embedded Valkey
server), creates the task "Build a user authentication system" with POST /tasks, looks
at it with GET /tasks/{id}, opens a WebSocket for its jobs, then starts three worker
processes of one job at a time each (the seed's worker-1..3): they take the four
subtasks in parallel, and the summary runs once all four are done. Then it reads the
`result:<subtask id>` keys as the seed's `redis-cli` does, and shows a 404 and a 422.
Exits with 0 only if the task succeeded and every result is stored with its 24 h TTL."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import httpx
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from client import run_task, show  # noqa: E402

from redwork.server import free_port, given_or_private, wait_listening  # noqa: E402
from redwork.supervisor import worker_command  # noqa: E402


def show_results(url: str, task: dict[str, Any]) -> bool:
    """What the seed's step 4.3 does with redis-cli; True if every result is stored."""
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        pattern = f"result:{task['task_id']}-*"
        keys = sorted(r.scan_iter(match=pattern))
        print(f"SCAN {pattern} -> {json.dumps(keys)}")
        good = len(keys) == len(task["subtasks"]) > 0
        for subtask in task["subtasks"]:
            key = f"result:{subtask['id']}"
            value = cast("str | None", r.get(key))  # decode_responses: str, not bytes
            ttl: int = r.ttl(key)
            print(f"GET {key} -> {value}")
            good = good and value is not None and 0 < ttl <= 86_400
            good = good and json.loads(value or "{}").get("status") == "completed"
        print(f"TTL result:{task['subtasks'][0]['id']} -> {r.ttl(keys[0]) if keys else -2}")
        return good
    finally:
        r.close()


def show_errors(base: str) -> None:
    with httpx.Client(base_url=base) as http:
        show("GET /tasks/no-such-task", http.get("/tasks/no-such-task"))
        show('POST /tasks {"priority": "high"}', http.post("/tasks", json={"priority": "high"}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("description", nargs="?", default="Build a user authentication system")
    parser.add_argument("--priority", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3, help="worker processes")
    parser.add_argument("--work", type=float, default=1.0, help="seconds each subtask takes")
    args = parser.parse_args()
    with given_or_private(os.environ.get("REDWORK_REDIS_URL"), "orchestrator-") as url:
        port = free_port()
        env = {
            **os.environ,
            "REDWORK_REDIS_URL": url,
            "REDWORK_LOG_LEVEL": "WARNING",
            "REDWORK_CONCURRENCY": "1",  # one job at a time per worker, as the seed's
            "ORCHESTRATOR_WORK_SECONDS": str(args.work),
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        serve = [sys.executable, "-m", "redwork", "serve", "app:api", "--port", str(port)]
        api = subprocess.Popen(serve, env=env, cwd=HERE)
        workers: list[subprocess.Popen[bytes]] = []

        async def start_workers() -> None:
            command = worker_command("app:app", args.workers)
            workers.append(subprocess.Popen(command, env=env, cwd=HERE))

        base = f"http://127.0.0.1:{port}"
        try:
            wait_listening(port, api)
            task = asyncio.run(run_task(base, args.description, args.priority, start_workers))
            stored = show_results(url, task)
            show_errors(base)
        finally:
            for process in [*workers, api]:
                process.terminate()
                process.wait(timeout=30)
        return 0 if task["status"] == "succeeded" and stored else 1


if __name__ == "__main__":
    sys.exit(main())
