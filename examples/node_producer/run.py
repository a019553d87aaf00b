"""A Node.js producer and Python workers, end to end: `python examples/node_producer/run.py`.

Uses the server in REDWORK_REDIS_URL, or a private embedded Valkey server; starts one
`redwork worker tasks:app` process on queue node-demo, runs `node producer.js` (after
`npm ci`, the first time), then stops the worker. Arguments are the producer's (its
--queue and --scripts are set here); without any, it runs five `square` jobs and one
`greet` with keyword arguments. Exits with the producer's status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import redwork.scripts
from redwork.server import given_or_private
from redwork.supervisor import worker_command

HERE = Path(__file__).resolve().parent
QUEUE = "node-demo"
DEMO = [
    "--task", "square", "--count", "5",
    "--job", json.dumps({"task": "greet", "args": ["Ada"], "kwargs": {"greeting": "Hi"}}),
]  # fmt: skip
# The scripts of the redwork the workers run: enqueue.lua must be the one their state
# machine expects, and this Python imports that very package.
SCRIPTS = Path(redwork.scripts.__file__).parent


def install_node_modules() -> None:
    """`npm ci` from package-lock.json, unless an install has finished before (npm
    writes node_modules/.package-lock.json last)."""
    if (HERE / "node_modules" / ".package-lock.json").is_file():
        return
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)


def main() -> int:
    if shutil.which("node") is None or shutil.which("npm") is None:
        print("run.py: needs node (20 or later) and npm; on Debian: apt-get install nodejs npm")
        return 2
    install_node_modules()
    producer = ["node", "producer.js", *(sys.argv[1:] or DEMO)]
    producer += ["--queue", QUEUE, "--scripts", str(SCRIPTS)]
    with given_or_private(os.environ.get("REDWORK_REDIS_URL"), "node-producer-") as url:
        env = {
            **os.environ,
            "REDWORK_REDIS_URL": url,
            "REDWORK_QUEUES": QUEUE,
            "REDWORK_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        worker = subprocess.Popen(worker_command("tasks:app"), env=env, cwd=HERE)
        try:
            return subprocess.run(producer, env=env, cwd=HERE, check=False).returncode
        finally:
            worker.terminate()
            worker.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
