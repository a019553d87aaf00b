"""Seed 000, end to end: `python examples/append_message/run.py`.

Starts two worker processes of the same app (the seed's goapp and goapp2 containers),
prepares the state, publishes
event e-1 to both at the same time, prints the message as it is updated, and checks that
it ends as {"id": "m-1", "message": "hello! gopher"} at version 8. Uses the server in
REDWORK_REDIS_URL, or a private embedded Valkey server."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from redwork import Settings
from redwork.server import given_or_private
from redwork.settings import to_env
from redwork.supervisor import worker_command

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from app import app, publish, store  # noqa: E402

KEY = "goapp||m-1"


def show(r: redis.Redis, last_version: bytes = b"") -> bytes:
    """Print the entry as `redis-cli hgetall` would show it, if its version changed."""
    fields = r.hgetall(KEY)
    version = fields.get(b"version", b"")
    if version != last_version:
        print(f'hgetall "{KEY}": data={fields[b"data"].decode()} version={version.decode()}')
    return version


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step", type=float, default=0.2, help="seconds per appended character")
    parser.add_argument(
        "--event-id",
        default="e-1",
        help="an event id already used on this server within 24 h is a duplicate: nothing runs",
    )
    args = parser.parse_args()
    event = {"event_id": args.event_id, "message_id": "m-1", "message": " gopher"}
    with given_or_private(os.environ.get("REDWORK_REDIS_URL"), "append-message-") as url:
        settings = Settings.load(redis_url=url)
        app.configure(settings)
        env = {
            **os.environ,
            **to_env(settings.replace(processes=1)),
            "APPEND_STEP_SECONDS": str(args.step),
            "REDWORK_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        workers = [subprocess.Popen(worker_command("app:app"), env=env) for _ in range(2)]
        r = redis.Redis.from_url(url)
        try:
            print("# prepare state")
            store.delete("m-1")
            store.save("m-1", {"id": "m-1", "message": "hello!"})
            version = show(r)
            print(f"# publish {args.event_id} to both workers at the same time")
            notify = r.config_get("notify-keyspace-events")["notify-keyspace-events"]
            r.config_set("notify-keyspace-events", "Kh")
            updates = r.pubsub(ignore_subscribe_messages=True)
            updates.subscribe(f"__keyspace@0__:{KEY}")
            with ThreadPoolExecutor(2) as publishers:
                handles = list(publishers.map(lambda _: publish(event), range(2)))
            print(f"jobs: {handles[0].id} and {handles[1].id} (the same job: one event)")
            if handles[0].status().value == "completed":
                print(f"# {args.event_id} was handled before on this server: nothing runs again")
            while handles[0].status().value not in ("completed", "failed"):
                if updates.get_message(timeout=1.0):  # a save (each makes two events)
                    version = show(r, version)
            version = show(r, version)  # the last save, if the loop saw the end first
            final_version = handles[0].result(timeout=30)
            updates.close()
            r.config_set("notify-keyspace-events", notify)
            item = store.get("m-1")
            print(f"# final: {item.value if item else None} at version {final_version}")
            good = item is not None and item.value["message"] == "hello! gopher"
            return 0 if good and final_version == 8 else 1
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=30)
            r.close()


if __name__ == "__main__":
    sys.exit(main())
