"""The test tasks' app, run by a worker with a bug injected: one of its roles raises once
a job is running (`redwork worker tests.broken_worker:app`, see test_worker.py)."""

from __future__ import annotations

import asyncio

from redwork.worker import Worker
from tests.tasks import app

__all__ = ["app"]


async def _failing_watch(self: Worker) -> None:
    while not self._running:
        await asyncio.sleep(0.01)
    raise RuntimeError("injected fault in a worker role")


Worker._watch_loop = _failing_watch  # type: ignore[method-assign]
