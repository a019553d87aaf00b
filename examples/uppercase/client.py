"""Seed 004's client: submit text, check its status once, then follow the job over a
WebSocket until it is done.

    python examples/uppercase/client.py --url http://127.0.0.1:8000 "hello world"
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import websockets
from app import STATUS


async def follow(
    url: str, text: str, before_updates: Callable[[], Awaitable[None]] | None = None
) -> dict[str, Any]:
    """Returns the job's last update. `before_updates` runs once the WebSocket is open
    (run.py starts the worker there, so that every status shows)."""
    async with httpx.AsyncClient(base_url=url) as http:
        submitted = (await http.post("/submit", json={"input": text})).json()
        print("POST /submit ->", json.dumps(submitted))
        job_id = submitted["id"]
        print(
            "GET /status ->", json.dumps((await http.get("/status", params={"id": job_id})).json())
        )
    socket_url = url.replace("http", "ws", 1) + f"/api/jobs/{job_id}/ws"
    last: dict[str, Any] = {}
    async with websockets.connect(socket_url) as socket:
        if before_updates is not None:
            await before_updates()
        async for raw in socket:  # the server closes the socket after the final state
            update = json.loads(raw)
            if update["type"] != "job":
                continue
            last = update
            shown = {"status": STATUS[update["state"]]}
            if update["state"] == "completed":
                shown["result"] = update["job"]["result"]
            print("websocket ->", json.dumps(shown))
    async with httpx.AsyncClient(base_url=url) as http:
        print(
            "GET /status ->", json.dumps((await http.get("/status", params={"id": job_id})).json())
        )
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("text", nargs="?", default="hello world")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    asyncio.run(follow(args.url, args.text))


if __name__ == "__main__":
    main()
