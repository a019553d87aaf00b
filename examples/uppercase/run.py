"""Seed 004, end to end: `python examples/uppercase/run.py`.

Starts `redwork serve app:api` (uses REDWORK_REDIS_URL, or a private embedded Valkey
server), submits "hello world", checks its status, opens a WebSocket for its updates,
then starts a worker: the client sees queued, running, done with "HELLO WORLD"."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from client import follow  # noqa: E402

from redwork.server import free_port, given_or_private, wait_listening  # noqa: E402
from redwork.supervisor import worker_command  # noqa: E402


def main() -> int:
    with given_or_private(os.environ.get("REDWORK_REDIS_URL"), "uppercase-") as url:
        port = free_port()
        env = {
            **os.environ,
            "REDWORK_REDIS_URL": url,
            "REDWORK_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        serve = [sys.executable, "-m", "redwork", "serve", "app:api", "--port", str(port)]
        api = subprocess.Popen(serve, env=env, cwd=HERE)
        workers: list[subprocess.Popen[bytes]] = []

        async def start_worker() -> None:
            workers.append(subprocess.Popen(worker_command("app:app"), env=env, cwd=HERE))

        try:
            wait_listening(port, api)
            last = asyncio.run(follow(f"http://127.0.0.1:{port}", "hello world", start_worker))
        finally:
            for process in [*workers, api]:
                process.terminate()
                process.wait(timeout=30)
        return 0 if last.get("job", {}).get("result") == "HELLO WORLD" else 1


if __name__ == "__main__":
    sys.exit(main())
