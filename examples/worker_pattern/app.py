"""Seed 001 with redwork: sleep jobs of 10-60 ms shared by worker processes, and what
the seed's notes ask for: a sequential chain that stops where a step fails, retries
with exponential backoff, a failed store to look at later, and a timeout.

    redwork worker app:app -p 4 -c 1 -q worker_pattern   # 4 processes, one job at a time each
"""

from __future__ import annotations

import asyncio

from redwork import Redwork, current_job

QUEUE = "worker_pattern"
"""A queue of its own: on a shared server, these workers take no other app's jobs."""

app = Redwork("worker_pattern")


@app.task(name="sleep", queue=QUEUE)
async def sleep(iteration: int, ms: int) -> dict[str, int]:
    """The seed's work item: sleep `ms` milliseconds."""
    await asyncio.sleep(ms / 1000)
    return {"iteration": iteration, "slept_ms": ms}


# Up to 2 retries, after about 0.1 s then 0.2 s (exponential backoff with jitter); a
# retry runs ahead of fresh jobs (retry_priority), as the seed's notes suggest.
@app.task(name="step", queue=QUEUE, retries=2, backoff=0.1, retry_priority=9)
def step(previous: str | None = None, *, name: str, failures: int = 0) -> str:
    """One step of a chain: it is given the previous step's result and adds its name.
    Its first `failures` attempts raise, as a step whose dependency is down would."""
    attempt = current_job().attempt
    if attempt <= failures:
        raise RuntimeError(f"step {name} failed on attempt {attempt}")
    return f"{previous} -> {name}" if previous else name


@app.task(name="slow", queue=QUEUE, timeout=0.2)
async def slow(seconds: float) -> None:
    """Runs past its timeout: redwork cancels it and records the run as failed."""
    await asyncio.sleep(seconds)
