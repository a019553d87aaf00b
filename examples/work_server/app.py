"""Seed 002 with redwork: a work server that stores sleep jobs, workers that take them
(cores - 1 processes), and a listener that hears each job finish.

    redwork serve app:api                  # the HTTP API; the listener follows its live updates
    redwork worker app:app -q work_server  # cores - 1 worker processes, 10 jobs at a time each

Each job is a hash in Redis (`redwork job show ID` prints one); its id goes onto the
queue. A worker leases the job rather than popping it: if the worker dies, the job comes
back when the lease runs out, and runs again elsewhere.
"""

from __future__ import annotations

import asyncio

from redwork import Redwork
from redwork.api import create_api

QUEUE = "work_server"
"""A queue of its own: on a shared server, these workers take no other app's jobs."""

app = Redwork("work_server")


# A run that takes longer than 10 s is cancelled and counts as failed; a failed run is
# retried twice, after about 1 s then 2 s.
@app.task(name="work", queue=QUEUE, timeout=10, retries=2)
async def work(number: int, ms: int) -> dict[str, int]:
    """The seed's work task: sleep `ms` milliseconds. The result is stored in the job's
    hash, for the seed's missing "writing back the result"."""
    await asyncio.sleep(ms / 1000)
    return {"task": number, "slept_ms": ms}


api = create_api(app)
