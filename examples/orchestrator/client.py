"""Seed 003's client side: create a task, look at it, watch the workers take its subtasks
(over redwork's WebSocket, instead of tailing the workers' logs), then look at it again.

    python examples/orchestrator/client.py --url http://127.0.0.1:8000 \\
        "Build a user authentication system" --priority 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import websockets

FINAL = ("completed", "failed", "cancelled", "skipped", "purged")


def show(call: str, response: httpx.Response) -> dict[str, Any]:
    answer: dict[str, Any] = response.json()
    print(f"{call} -> {response.status_code} {json.dumps(answer)}")
    return answer


async def watch(
    url: str, task_id: str, labels: dict[str, str], ready: Callable[[], Awaitable[None]]
) -> None:
    """Print each job of the task (`labels`: job id -> what it does) as a worker starts
    and ends it, until all have ended."""
    socket_url = url.replace("http", "ws", 1) + "/api/ws?jobs=" + ",".join(labels)
    ended: set[str] = set()
    async with websockets.connect(socket_url) as socket:
        await ready()
        async for raw in socket:
            update = json.loads(raw)
            if update["type"] != "job":
                continue
            label, state = labels[update["id"]], update["state"]
            if update["event"] == "active":
                print(f"Processing: {label} (Task: {task_id})")
            elif update["event"] == "completed":
                worker = (update["job"]["result"] or {}).get("worker_id", update["job"]["worker"])
                print(f"[{worker}] Completed: {label}")
            elif state in FINAL and update["event"] != "snapshot":
                print(f"{state}: {label} ({update['job'].get('error')})")
            if state in FINAL:
                ended.add(update["id"])
                if ended == set(labels):
                    return


async def run_task(
    url: str,
    description: str,
    priority: int,
    before_updates: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Create the task and follow it to its end; returns the last GET /tasks/{id}.
    `before_updates` runs once the WebSocket is open (run.py starts the workers there,
    so that every subtask's start shows)."""

    async def nothing() -> None:
        return None

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        body = {"description": description, "priority": priority}
        created = show(f"POST /tasks {json.dumps(body)}", await http.post("/tasks", json=body))
        task_id = created["task_id"]
        task = show(f"GET /tasks/{task_id}", await http.get(f"/tasks/{task_id}"))
        labels = {s["id"]: s["description"] for s in task["subtasks"]}
        labels[f"{task_id}-summary"] = "Summarize the results"
        await watch(url, task_id, labels, before_updates or nothing)
        return show(f"GET /tasks/{task_id}", await http.get(f"/tasks/{task_id}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("description", nargs="?", default="Build a user authentication system")
    parser.add_argument("--priority", type=int, default=1)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    asyncio.run(run_task(args.url, args.description, args.priority))


if __name__ == "__main__":
    main()
