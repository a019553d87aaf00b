"""Tasks the benchmark's worker processes run (`redwork worker bench.tasks:app`).

Settings come from the REDWORK_* variables bench/run.py sets for each worker process;
the producer side reconfigures `app` with `app.configure(...)`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redwork import Redwork

app = Redwork("bench")
# The state tasks spread their writes over this many keys (bench/run.py uses it too).
STATE_KEYS = 1_000


@app.task(name="bench.noop")
async def noop() -> None:
    """No work at all: what is measured is the queue's own cost per job."""


@app.task(name="bench.latency")
async def latency(sent_at: float) -> float:
    """Seconds from just before the producer's enqueue call to the start of this run
    (producer and worker share this machine's clock)."""
    return time.time() - sent_at


@app.task(name="bench.sleep")
async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


@app.task(name="bench.state_saves")
async def state_saves(first: int, count: int) -> None:
    """`count` saves to keys first, first + 1, ... (mod 1,000), one after the other. Made
    from inside the job, each is fenced by its lease: one state_write script call, which
    checks the job's token before it writes."""
    store = app.state("bench")
    for i in range(count):
        await store.asave(f"k{(first + i) % STATE_KEYS}", i)


@app.task(name="bench.state_staged")
async def state_staged(key: str, value: int) -> None:
    """One staged write: no round trip here, it travels with the job's completion and is
    applied by the complete script in the same atomic step."""
    app.state("bench").staged().save(key, value)


@app.task(name="bench.step")
async def step(previous: Any = None) -> None:
    """A no-op for workflows (bench/workflow.py): a chain's step is given the previous
    step's result (None) as its first argument, the first step nothing. The baselines
    without a workflow run it too, so that every job carries the same document."""


@app.task(name="bench.gather")
async def gather(results: list[Any]) -> int:
    """A chord's callback: given the results of its members, in member order. Returns
    how many it was given, which the benchmark checks."""
    return len(results)
