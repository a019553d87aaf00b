"""Tasks the benchmark's worker processes run (`redwork worker bench.tasks:app`).

Settings come from the REDWORK_* variables bench/run.py sets for each worker process;
the producer side reconfigures `app` with `app.configure(...)`."""

from __future__ import annotations

import asyncio
import time

from redwork import Redwork

app = Redwork("bench")


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
