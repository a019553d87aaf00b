"""How late a delayed job becomes runnable, and starts, after its due time: on an idle
worker, and on a worker draining a large backlog (issue 6: within 10 ms idle, 100 ms
under full load).

    .venv/bin/python bench/on_time.py            # 30 idle probes, 10 under load
    .venv/bin/python bench/on_time.py --quick

One worker process (`bench.tasks:app`, concurrency 50) on a private server. Idle: each
probe is a no-op job with a countdown of 200-400 ms, enqueued while the worker blocks on
its marker; lateness = started_at - due_at (server clock, ms). Under load: while the
worker drains a backlog of no-op jobs, a pair of probes every 0.8 s, one of priority 0
and one of priority 9 (countdown 300 ms): "promoted" is when a fetch made the job
runnable (its `promoted` event), "started" is when the priority-9 one started (it goes
before the backlog). A priority-0 probe starts only after the backlog ahead of it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/on_time.py`, bench/ would come first on sys.path, and its http.py
# would hide the standard library's.
sys.path[:] = [str(ROOT)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")
]

import argparse  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from bench.run import Bench, Config, Workers, _percentile, log, machine, running_server  # noqa: E402
from bench.tasks import app, noop  # noqa: E402
from redwork import JobHandle  # noqa: E402


def lateness(values: list[int]) -> str:
    ordered = sorted(values)
    p50, p99 = _percentile(ordered, 50), _percentile(ordered, 99)
    return f"p50 {p50} ms, p99 {p99} ms, max {ordered[-1]} ms (n={len(ordered)})"


def promoted_late(b: Bench, handle: JobHandle) -> int:
    """ms from the job's due time to the fetch that made it runnable."""
    due_at = handle.info().due_at
    assert due_at is not None
    for event, _, at in app.client.run(b.queue.timeline(handle.id, 2_000)):
        if event == "promoted":
            return at - due_at
    raise RuntimeError(f"probe {handle.id} was not promoted")


def wait_started(handle: JobHandle, timeout: float = 10.0) -> int:
    """started_at - due_at of a probe, once it has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = handle.info()
        if record.started_at is not None and record.due_at is not None:
            return record.started_at - record.due_at
        time.sleep(0.01)
    raise RuntimeError(f"probe {handle.id} did not start within {timeout}s")


def idle_probes(b: Bench, n: int) -> list[int]:
    rng = random.Random(7)
    late = []
    for _ in range(n):
        handle = noop.options(countdown=rng.uniform(0.2, 0.4)).enqueue()
        handle.result(timeout=10)
        record = handle.info()
        assert record.started_at is not None and record.due_at is not None
        late.append(record.started_at - record.due_at)
    return late


def loaded_probes(b: Bench, backlog: int, pairs: int) -> dict[str, Any]:
    app.enqueue_many(noop.prepare() for _ in range(backlog))
    promoted: list[int] = []
    started: list[int] = []
    waiting: list[int] = []
    for _ in range(pairs):
        plain = noop.options(countdown=0.3).enqueue()
        urgent = noop.options(countdown=0.3, priority=9).enqueue()
        time.sleep(0.8)
        waiting.append(int(app.client.run(b.queue.counts()).waiting))
        promoted += [promoted_late(b, plain), promoted_late(b, urgent)]
        started.append(wait_started(urgent))
    return {"promoted": promoted, "started": started, "waiting": waiting}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 idle probes, 3 under load")
    args = parser.parse_args(argv)
    idle_n, pairs, backlog = (10, 3, 40_000) if args.quick else (30, 10, 150_000)
    with running_server() as (server, tmp):
        b = Bench(server, tmp, Config.make(args.quick, (50,), 0))
        try:
            b.reset()
            info = machine(b)
            with Workers(b, 1, 50) as workers:
                b.wait_idle(workers)
                log(f"{idle_n} idle probes")
                idle = idle_probes(b, idle_n)
                log(f"{pairs} probe pairs while draining {backlog:,} jobs")
                loaded = loaded_probes(b, backlog, pairs)
        finally:
            b.close()
    print(f"machine: {info}")
    print(f"idle worker, started - due:            {lateness(idle)}")
    print(f"under load, promoted - due:            {lateness(loaded['promoted'])}")
    print(f"under load, priority 9 started - due:  {lateness(loaded['started'])}")
    print(f"backlog still waiting at each probe:   {loaded['waiting']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
