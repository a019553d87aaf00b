"""Tasks that the tests' worker processes run (`redwork worker tests.tasks:app`).

Settings come from REDWORK_* variables set by the test that starts the worker."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from typing import Any

from redwork import Redwork, current_job

app = Redwork("tests")


@app.task(name="add")
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="sync_add")
def sync_add(x: int, y: int) -> int:
    return x + y


@app.task(name="sleep")
async def sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return current_job().worker_id


@app.task(name="sync_sleep")
def sync_sleep(seconds: float) -> str:
    time.sleep(seconds)
    return current_job().worker_id


@app.task(name="boom", retries=2, backoff=0.01)
async def boom(message: str = "boom") -> None:
    raise ValueError(message)


@app.task(name="unserialisable")
async def unserialisable() -> object:
    return object()


@app.task(name="raise_base")
async def raise_base(kind: str) -> None:
    if kind == "exit":
        raise SystemExit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt
    raise asyncio.CancelledError


@app.task(name="record")
async def record(ledger: str, key: str, seconds: float = 0.0) -> str:
    """A side effect: one attempt row per run, one effect row per key (INSERT OR IGNORE),
    in a SQLite ledger shared by every worker process."""
    job = current_job()
    with sqlite3.connect(ledger, timeout=30) as db:
        db.execute(
            "INSERT INTO attempts (key, job, attempt, worker, pid) VALUES (?, ?, ?, ?, ?)",
            (key, job.id, job.attempt, job.worker_id, os.getpid()),
        )
    if seconds:
        await asyncio.sleep(seconds)
    with sqlite3.connect(ledger, timeout=30) as db:
        db.execute("INSERT OR IGNORE INTO effects (key, worker) VALUES (?, ?)", (key, job.worker_id))
    return job.worker_id


def make_ledger(path: str) -> str:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE attempts (key TEXT, job TEXT, attempt INT, worker TEXT, pid INT)")
        db.execute("CREATE TABLE effects (key TEXT PRIMARY KEY, worker TEXT)")
    return path


def ledger_rows(path: str, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute(f"SELECT * FROM {table}"))
