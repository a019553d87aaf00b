"""Seed 002's listener: hears a "finished" message for each job, from redwork's live
updates (the WebSocket of `redwork serve`, which holds one Redis subscription to every
queue's events and fans them out to its clients).

    python examples/work_server/listener.py --url http://127.0.0.1:8000 [--count 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable

import websockets

QUEUE = "work_server"
WORDS = {
    "completed": "finished",
    "failed": "failed for good",
    "recovered": "recovered (its worker was lost; it runs again)",
}
"""The events the listener prints (docs/protocol.md, Events), and how."""
ENDED = ("completed", "failed")


async def listen(
    url: str,
    queue: str = QUEUE,
    count: int | None = None,
    ready: Callable[[], Awaitable[None]] | None = None,
    on_finished: Callable[[str], Awaitable[None]] | None = None,
) -> list[str]:
    """Print a line for each job of `queue` that finishes (or fails for good, or is
    recovered from a lost worker) until `count` jobs have ended; returns the ids of the
    jobs that ended, in the order heard. `ready` runs once the subscription is in force;
    `on_finished` after each finished job's line."""
    ended: list[str] = []
    # /api/ws without ?jobs= is the firehose: every event of every queue, each naming
    # the jobs of one transition (a worker reports finished jobs in batches).
    async with websockets.connect(url.replace("http", "ws", 1) + "/api/ws") as socket:
        if ready is not None:
            await ready()
        async for raw in socket:
            message = json.loads(raw)
            kind = message.get("event")
            if message["type"] != "event" or message["queue"] != queue or kind not in WORDS:
                continue
            for job_id, attempt in zip(message["jobs"], message["attempts"], strict=True):
                print(f"listener: {WORDS[kind]}: {job_id} (attempt {attempt})")
                if kind in ENDED:
                    ended.append(job_id)
                if kind == "completed" and on_finished is not None:
                    await on_finished(job_id)
            if count is not None and len(ended) >= count:
                break
    return ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="`redwork serve`'s URL")
    parser.add_argument("--queue", default=QUEUE)
    parser.add_argument("--count", type=int, help="stop after this many jobs have ended")
    args = parser.parse_args()
    asyncio.run(listen(args.url, args.queue, args.count))


if __name__ == "__main__":
    main()
