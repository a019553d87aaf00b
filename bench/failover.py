"""What a failover costs: the primary is SIGKILLed while a producer enqueues and two
workers run jobs, on a Sentinel set and on a cluster, with default acknowledgement and
with durable acknowledgement (ack_replicas=1). Measures, per round: acknowledged
enqueues, those lost (acknowledged, then gone and never run), jobs run more than once
(a completion lost, or a lease that ran out in the window), and how long the producer
and the workers were held up.

    .venv/bin/python bench/failover.py                  # 3 rounds of each, ~4 minutes
    .venv/bin/python bench/failover.py --rounds 1 --shapes sentinel --json

It asserts nothing: it prints figures (docs/deployment.md quotes them)."""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from redwork import Settings  # noqa: E402
from redwork.connection import sync_client  # noqa: E402
from redwork.queue import Queue  # noqa: E402
from redwork.server import LocalCluster, LocalSentinel, ServerProcess  # noqa: E402
from redwork.settings import to_env  # noqa: E402
from tests.chaos import tasks  # noqa: E402
from tests.chaos.harness import WorkerProc  # noqa: E402

RUN_SECONDS = 8.0
KILL_AT = 3.0
SETTLE_SECONDS = 60.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Set:
    """A Sentinel set or a cluster, with what a round needs of it."""

    def __init__(self, shape: str, workdir: Path) -> None:
        self.shape = shape
        self.nodes: LocalSentinel | LocalCluster = (
            LocalSentinel(workdir, fsync="everysec")
            if shape == "sentinel"
            else LocalCluster(workdir, fsync="everysec")
        )
        self.nodes.start()

    @property
    def url(self) -> str:
        return self.nodes.url

    def primary(self) -> ServerProcess:
        if isinstance(self.nodes, LocalSentinel):
            return self.nodes.primary()
        return self.nodes.primary_of(Queue("default").wait)

    def promoted(self, old: ServerProcess) -> bool:
        try:
            return self.primary() is not old
        except Exception:
            return False

    def switch_watch(self) -> Any:
        """A subscription to a sentinel's announcements of new primaries (None on a
        cluster), to tell a round with one failover from one with more."""
        if not isinstance(self.nodes, LocalSentinel):
            return None
        watcher = redis.Redis(port=self.nodes.sentinels[0].port).pubsub()
        watcher.subscribe("+switch-master")
        return watcher

    def failovers(self, watcher: Any) -> int | None:
        if watcher is None:
            return None
        count = 0
        while (message := watcher.get_message(timeout=0.1)) is not None:
            count += message["type"] == "message"
        watcher.close()
        return count

    def stop(self) -> None:
        self.nodes.stop()


def one_round(shape: str, durable: bool, workdir: Path) -> dict[str, Any]:
    nodes = Set(shape, workdir / "servers")
    ledger = workdir / "ledger"
    ledger.mkdir()
    settings = Settings.load(
        env={}, redis_url=nodes.url, lease=2.0, block_timeout=0.5, grace=2.0,
        reconnect_for=60.0, ack_replicas=1 if durable else 0,
    )  # fmt: skip
    tasks.app.configure(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDWORK_")}
    env.update(to_env(settings.replace(processes=1)))
    env.update({tasks.LEDGER_ENV: str(ledger), "PYTHONPATH": str(ROOT)})
    workers = [
        WorkerProc("tests.chaos.tasks:app", env, workdir / f"worker{i}.log") for i in range(2)
    ]
    acknowledged: list[str] = []
    calls: list[tuple[float, float]] = []  # (start, seconds) of each enqueue call
    old = nodes.primary()
    switches = nodes.switch_watch()
    killed_at = 0.0
    try:
        start = time.monotonic()
        while (now := time.monotonic()) - start < RUN_SECONDS:
            if not killed_at and now - start >= KILL_AT:
                old.sigkill()
                killed_at = time.monotonic()
                threading.Thread(target=rejoin, args=(nodes, old), daemon=True).start()
            handle = tasks.plain.enqueue()
            calls.append((now, time.monotonic() - now))
            acknowledged.append(handle.id)
        settled = settle()
    finally:
        for worker in workers:
            worker.stop()
        tasks.app.client.close()
    runs = collections.Counter(e["job"] for e in tasks.Ledger(ledger).entries() if "job" in e)
    client = sync_client(nodes.url, settings)
    queue = Queue("default")
    with client.pipeline(transaction=False) as pipe:
        for job_id in acknowledged:
            pipe.exists(queue.job_key(job_id))
        present = pipe.execute()
    client.close()
    failovers = nodes.failovers(switches)
    nodes.stop()
    gone = [j for j, here in zip(acknowledged, present, strict=True) if not here]
    held = [seconds for at, seconds in calls if at >= killed_at - 1]
    return {
        "shape": shape,
        "durable": durable,
        "acknowledged": len(acknowledged),
        "lost": sum(1 for j in gone if runs[j] == 0),
        "record_lost_after_run": sum(1 for j in gone if runs[j] > 0),
        "ran_twice": sum(1 for j in acknowledged if runs[j] > 1),
        "settled": settled,
        "failovers": failovers,
        "longest_enqueue_s": round(max(held, default=0.0), 2),
    }


def rejoin(nodes: Set, old: ServerProcess) -> None:
    """Bring the killed primary back once a replica took over: it rejoins as a replica
    (durable acknowledgement needs one). Polled: promotion has no event a process that
    is not a sentinel subscriber could wait on."""
    deadline = time.monotonic() + 30
    while not nodes.promoted(old) and time.monotonic() < deadline:
        time.sleep(0.1)
    old.start()


def settle() -> bool:
    """Wait until nothing of the queue is waiting, delayed or running."""
    queue = Queue("default")
    deadline = time.monotonic() + SETTLE_SECONDS
    counts = None
    while time.monotonic() < deadline:
        try:
            counts = tasks.app.client.run(queue.counts())
            if counts.waiting + counts.active + counts.delayed + counts.held == 0:
                return True
        except redis.RedisError:
            pass
        time.sleep(0.2)  # counts have no event to wait on
    log(f"not settled after {SETTLE_SECONDS}s: {counts}")
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default="sentinel,cluster")
    parser.add_argument("--acks", default="default,durable", help="default, durable or both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    modes = [mode == "durable" for mode in args.acks.split(",")]
    results = []
    for shape in args.shapes.split(","):
        for durable in modes:
            for index in range(args.rounds):
                with tempfile.TemporaryDirectory(prefix="redwork-failover-") as tmp:
                    result = one_round(shape, durable, Path(tmp))
                log(f"{shape} durable={durable} round {index + 1}: {result}")
                results.append(result)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("| shape | acks | rounds | acknowledged | lost | record lost after its run "
          "| ran twice | longest enqueue (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        for durable in modes:
            rows = [r for r in results if r["shape"] == shape and r["durable"] == durable]

            def total(field: str, rows: list[dict[str, Any]] = rows) -> int:
                return sum(int(r[field]) for r in rows)

            longest = statistics.median(r["longest_enqueue_s"] for r in rows)
            print(
                f"| {shape} | {'replicas=1' if durable else 'default'} | {len(rows)} "
                f"| {total('acknowledged')} | {total('lost')} "
                f"| {total('record_lost_after_run')} | {total('ran_twice')} | {longest} |"
            )
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
