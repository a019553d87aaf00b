"""The chaos run's tasks. Each run of a task appends a line to the side-effect ledger
(files outside the server, which the faults may kill): job, token and attempt, so the
runner can tell a job that ran twice from a delivery that ran twice. Keyed jobs and
workflow nodes also apply an effect through redwork's fenced, staged state writes, which
must commit exactly once whatever the faults did."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from redwork import Redwork, current_job

app = Redwork("chaos")
LEDGER_ENV = "CHAOS_LEDGER"
COUNTERS = "chaos-counters"
"""State store of the keyed jobs: key -> how many of its jobs have taken effect."""
NODES = "chaos-nodes"
"""State store of the workflow nodes: node id -> 1 once its effect has committed."""


class Ledger:
    """The side-effect ledger: a directory outside the server, in which each process
    appends lines to a file of its own (`O_APPEND`, one `write` per line). No lock is
    shared, so a worker stopped by SIGSTOP mid-write cannot block the others, and what a
    SIGKILLed process wrote is already the kernel's."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._fd: int | None = None

    def _append(self, entry: dict[str, object]) -> None:
        if self._fd is None:
            path = self.directory / f"{os.getpid()}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._fd, orjson.dumps(entry) + b"\n")

    def record_run(self, saw: int | None = None) -> None:
        job = current_job()
        self._append({"job": job.id, "token": job.token, "attempt": job.attempt, "saw": saw})

    def record_violation(self, what: str) -> None:
        self._append({"job": current_job().id, "violation": what})

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every line of every process (a last line cut short by a kill is skipped)."""
        for path in sorted(self.directory.glob("*.jsonl")):
            for line in path.read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):
                    yield orjson.loads(line)


_ledger: Ledger | None = None


def ledger() -> Ledger:
    global _ledger
    if _ledger is None:
        _ledger = Ledger(os.environ[LEDGER_ENV])
    return _ledger


async def _work() -> None:
    # Long enough that a fault always finds jobs running (about 15 at 150 jobs/s).
    await asyncio.sleep(random.uniform(0.02, 0.2))


@app.task(name="chaos.plain")
async def plain() -> None:
    ledger().record_run()
    await _work()


@app.task(name="chaos.keyed")
async def keyed(key: str) -> int:
    """One of a key's jobs: adds 1 to the key's counter with the version it read as etag,
    staged to commit with the completion. Per-key ordering means no other job of the key
    runs meanwhile; fencing means a run that lost its lease commits nothing."""
    store = app.state(COUNTERS)
    item = await store.aget(key)
    count, version = (0, 0) if item is None else (int(item.value), item.etag)
    ledger().record_run(saw=count)
    await _work()
    store.staged().save(key, count + 1, etag=version)
    return count + 1


@app.task(name="chaos.node")
async def node(*inputs: object, deps: list[str]) -> None:
    """A workflow node: each dependency's effect must have committed before it runs; its
    own effect is staged with etag 0 (the entry must not exist), so it commits once."""
    store = app.state(NODES)
    seen = await store.aget_many(deps)
    for dep, item in seen.items():
        if item is None:
            ledger().record_violation(f"ran before its dependency {dep} took effect")
    ledger().record_run()
    await _work()
    store.staged().save(current_job().id, 1, etag=0)


@app.task(name="chaos.probe")
async def probe() -> None:
    """Enqueued by the runner after each fault: its completion shows service is back."""
