"""Tasks that the tests' worker processes run (`redwork worker tests.tasks:app`).

Settings come from REDWORK_* variables set by the test that starts the worker."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from typing import Any

from redwork import JobFailed, LeaseLost, Redwork, current_job

app = Redwork("tests")
# The stores jobs of queue `default` write, fenced or staged, keep their entries in that
# queue's slot, as a Redis Cluster needs (see docs/deployment.md).
STATE_PREFIX = "{default}"


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
        db.execute(
            "INSERT OR IGNORE INTO effects (key, worker) VALUES (?, ?)", (key, job.worker_id)
        )
    return job.worker_id


def make_ledger(path: str) -> str:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE attempts (key TEXT, job TEXT, attempt INT, worker TEXT, pid INT)")
        db.execute("CREATE TABLE effects (key TEXT PRIMARY KEY, worker TEXT)")
    return path


def ledger_rows(path: str, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute(f"SELECT * FROM {table}"))


@app.task(name="flaky", retries=2, backoff=0.01)
async def flaky(succeed_on: int = 3) -> int:
    """Fails until its attempt number reaches `succeed_on`, then returns the attempt."""
    attempt = current_job().attempt
    if attempt < succeed_on:
        raise RuntimeError(f"attempt {attempt} fails")
    return attempt


@app.task(name="job_info")
async def job_info() -> dict[str, Any]:
    job = current_job()
    return {"id": job.id, "queue": job.queue, "attempt": job.attempt, "max": job.max_attempts}


@app.task(name="sync_job_info")
def sync_job_info() -> dict[str, Any]:
    job = current_job()
    return {"id": job.id, "queue": job.queue, "attempt": job.attempt, "max": job.max_attempts}


@app.task(name="sync_sleep_mark")
def sync_sleep_mark(seconds: float, path: str) -> None:
    """Sleeps in its thread, then writes the wall-clock ms at which it returns to `path`."""
    time.sleep(seconds)
    with open(path, "w") as f:
        f.write(str(time.time_ns() // 1_000_000))


@app.task(name="sync_raise_base")
def sync_raise_base(kind: str) -> None:
    if kind == "exit":
        raise SystemExit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt
    raise asyncio.CancelledError


_pushes: set[asyncio.Future[Any]] = set()


@app.task(name="announce_sleep")
async def announce_sleep(seconds: float) -> str:
    """Sleep; the attempt number is RPUSHed to `test:started:<job id>` (which a test
    BLPOPs) only once the sleep has begun, so a test that sees it knows the task is
    asleep, not merely leased or still announcing. Returns the worker id."""
    job = current_job()
    client = await app.client.aredis()
    push = asyncio.ensure_future(client.rpush(f"test:started:{job.id}", job.attempt))
    _pushes.add(push)
    push.add_done_callback(_pushes.discard)
    await asyncio.sleep(seconds)  # its timer is set before the push is even sent
    return job.worker_id


@app.task(name="sync_announce_sleep")
def sync_announce_sleep(seconds: float) -> str:
    """Thread twin of announce_sleep: RPUSH to `test:started:<job id>`, sleep, then RPUSH
    to `test:ended:<job id>` as the thread returns (a test BLPOPs both)."""
    job = current_job()
    client = app.client.redis()
    client.rpush(f"test:started:{job.id}", job.attempt)
    time.sleep(seconds)
    client.rpush(f"test:ended:{job.id}", job.attempt)
    return job.worker_id


@app.task(name="poison")
def poison() -> None:
    """Kills the worker process running it, every time (a poison pill)."""
    os._exit(1)


@app.task(name="block_loop")
async def block_loop(seconds: float) -> str:
    """Blocks the worker's event loop on the first attempt (the mistake of calling
    time.sleep in a coroutine); later attempts return at once."""
    job = current_job()
    if job.attempt == 1:
        time.sleep(seconds)
    return job.worker_id


@app.task(name="append_message")
def append_message(message_id: str, message: str, step_seconds: float = 0.0) -> int:
    """Seed 000's worker: append `message` to the stored message one character per step,
    saving each step (fenced by this job's lease). Returns the last version."""
    store = app.state("redis-state", key_prefix=STATE_PREFIX)
    item = store.get(message_id)
    assert item is not None, f"no message {message_id}"
    value, etag = item.value, item.etag
    for character in message:
        value = {**value, "message": value["message"] + character}
        etag = store.save(message_id, value, etag=etag)
        time.sleep(step_seconds)
    return etag


@app.task(name="apply_event", retries=5, backoff=0.01)
async def apply_event(key: str, event: str, seconds: float = 0.0) -> None:
    """Append `event` to the list stored under `key`; the write is staged and commits
    with the job's completion."""
    state = app.state("events", key_prefix=STATE_PREFIX).staged()
    item = await state.aget(key)
    events = item.value["events"] if item else []
    await asyncio.sleep(seconds)
    state.save(key, {"events": [*events, event]}, etag=item.etag if item else None)


@app.task(name="stage_in_store")
def stage_in_store(key_prefix: str, key: str) -> str:
    """Stage a write to `key` of a store with that key prefix (committed with the job)."""
    app.state("staging", key_prefix=key_prefix).staged().save(key, current_job().id)
    return "staged"


@app.task(name="fenced_steps")
def fenced_steps(key: str, steps: int, step_seconds: float) -> int:
    """Save {step, worker} under `key` `steps` times, sleeping after each save; every
    save is fenced by the job's lease. Each save is announced on test:saved:<job id>, a
    refused one on test:refused:<job id>."""
    job = current_job()
    store, client = app.state("steps", key_prefix=STATE_PREFIX), app.client.redis()
    version = 0
    for step in range(steps):
        try:
            version = store.save(key, {"step": step, "worker": job.worker_id})
        except LeaseLost:
            client.rpush(f"test:refused:{job.id}", job.worker_id)  # a test BLPOPs it
            raise
        client.rpush(f"test:saved:{job.id}", job.worker_id)
        time.sleep(step_seconds)
    return version


@app.task(name="keyed_run")
async def keyed_run(key: str, seq: int, seconds: float) -> None:
    """RPUSH `start <seq>` then `end <seq>` to test:runs:<key>, `seconds` apart: runs of
    one key that overlap, or start out of order, show in the list."""
    client = await app.client.aredis()
    await client.rpush(f"test:runs:{key}", f"start {seq}")
    await asyncio.sleep(seconds)
    await client.rpush(f"test:runs:{key}", f"end {seq}")


@app.task(name="echo")
async def echo(value: Any) -> Any:
    return value


@app.task(name="progress_steps")
async def progress_steps(steps: int) -> int:
    for done in range(1, steps + 1):
        await app.areport_progress({"done": done, "of": steps})
    return steps


@app.task(name="sync_progress")
def sync_progress(value: Any) -> None:
    app.report_progress(value)


@app.task(name="total")
async def total(values: list[int], plus: int = 0) -> int:
    return sum(values) + plus


@app.task(name="outcomes")
async def outcomes(results: list[Any]) -> list[str]:
    """What a collecting callback was given: each result, or the failed job's id."""
    return [f"failed:{r.job_id}" if isinstance(r, JobFailed) else repr(r) for r in results]


@app.task(name="needs_file")
async def needs_file(value: Any, path: str) -> Any:
    """Fails until `path` exists (a failure a person fixes, then retries the job)."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    return value


@app.task(name="dag_node")
async def dag_node(node: str, deps: list[str], seconds: float) -> int:
    """A node of tests/test_workflow_chaos.py's random graph. Each run is counted in the
    hash test:dag:runs; a dependency whose effect is not applied at version 1 yet is
    RPUSHed to test:dag:violations. Its own effect, the state entry `node` (with the
    dependencies' versions it saw), is staged with etag 0 (must not exist yet), so it
    commits once, with the job's completion. Returns the attempt."""
    job = current_job()
    client = await app.client.aredis()
    await client.hincrby("test:dag:runs", node, 1)
    seen = await app.state("dag", key_prefix=STATE_PREFIX).aget_many(deps)
    versions = {dep: None if item is None else item.etag for dep, item in seen.items()}
    for dep, version in versions.items():
        if version != 1:
            await client.rpush("test:dag:violations", f"{node} ran with {dep} at {version}")
    await asyncio.sleep(seconds)
    app.state("dag", key_prefix=STATE_PREFIX).staged().save(
        node, {"saw": versions, "attempt": job.attempt}, etag=0
    )
    return job.attempt


@app.task(name="client_url")
async def client_url() -> str:
    """The server the app's own client (state stores, progress) talks to."""
    return app.client.url


# -- tests/test_abort.py ----------------------------------------------------------------
# Every run of these tasks INCRs test:starts:<job id> (a count that stays) and RPUSHes
# its attempt to test:started:<job id> (which a test BLPOPs); how the run ended is
# RPUSHed to test:ended:<job id> on the way out. The count is written before the
# announcement, one after the other: on a cluster the keys are in different slots, and a
# pipeline sends them to their nodes at once, so a test woken by the announcement could
# cancel the run before the count was written.


@app.task(name="abortable_sleep")
async def abortable_sleep(seconds: float) -> str:
    """Announce the run, sleep; test:ended:<id> gets 'cancelled' if the sleep was
    cancelled (CancelledError), else 'returned'."""
    job = current_job()
    client = await app.client.aredis()
    how = "returned"
    try:
        await client.incr(f"test:starts:{job.id}")
        await client.rpush(f"test:started:{job.id}", job.attempt)
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        how = "cancelled"
        raise
    finally:
        await client.rpush(f"test:ended:{job.id}", how)
    return how


@app.task(name="sync_abortable")
def sync_abortable(mode: str, seconds: float = 20.0) -> str:
    """A plain function that runs for up to `seconds`, announced as above. mode 'raise':
    calls current_job().raise_if_cancelled() every 20 ms; 'flag': raises RuntimeError
    once current_job().cancel_requested; 'finish': returns normally once it is set;
    'deaf': never looks, sleeps `seconds`. test:ended:<id> gets '<how> <cancel_requested
    at the end>', how being the exception's name, 'finished', 'slept' or 'timed_out'."""
    job = current_job()
    client = app.client.redis()
    client.incr(f"test:starts:{job.id}")
    client.rpush(f"test:started:{job.id}", job.attempt)
    how = "timed_out"
    try:
        if mode == "deaf":
            time.sleep(seconds)
            how = "slept"
            return how
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if mode == "raise":
                job.raise_if_cancelled()
            elif mode == "flag" and job.cancel_requested:
                raise RuntimeError("stopping: cancel requested")
            elif mode == "finish" and job.cancel_requested:
                how = "finished"
                return how
            time.sleep(0.02)
        return how
    except Exception as exc:
        how = type(exc).__name__
        raise
    finally:
        client.rpush(f"test:ended:{job.id}", f"{how} {job.cancel_requested}")


@app.task(name="progress_fraction")
async def progress_fraction(fraction: float, message: str) -> str:
    current_job().progress(fraction, message)
    return "reported"


@app.task(name="sync_progress_fraction")
def sync_progress_fraction(fraction: float, message: str) -> str:
    current_job().progress(fraction, message)
    return "reported"


@app.task(name="fail_as_aborted")
async def fail_as_aborted() -> str:
    """Announced as above. The first attempt blocks the worker's event loop (a sync
    BLPOP of test:go:<id>, pushed by the test after it cancels the job), then raises at
    once: the run fails before its worker can have seen the abort. Later attempts
    return at once."""
    job = current_job()
    client = await app.client.aredis()
    await client.incr(f"test:starts:{job.id}")
    await client.rpush(f"test:started:{job.id}", job.attempt)
    if job.attempt == 1:
        app.client.redis().blpop([f"test:go:{job.id}"], timeout=30)
        raise RuntimeError("failed as the abort arrived")
    return f"attempt {job.attempt}"


# -- tests/test_scheduling.py ------------------------------------------------------------


@app.task(name="sched_mark")
async def sched_mark(log: str, label: str, seconds: float = 0.0, fail_first: bool = False) -> int:
    """RPUSH `<label>:<attempt>` to the Redis list `log` as the run starts (a test reads
    the order in which runs started, and how many there were), then sleep `seconds`; the
    first attempt then raises if `fail_first`. Returns the attempt."""
    job = current_job()
    client = await app.client.aredis()
    await client.rpush(log, f"{label}:{job.attempt}")
    await asyncio.sleep(seconds)
    if fail_first and job.attempt == 1:
        raise RuntimeError(f"{label} fails its first attempt")
    return job.attempt


# -- tests/test_limits.py and tests/test_periodic.py -------------------------------------

# Atomically, for each pair of keys: INCR the first (how many run now) and raise the
# second (the most seen at once) to it.
_PROBE_ENTER = """
for i = 1, #KEYS, 2 do
  local n = redis.call('INCR', KEYS[i])
  if n > tonumber(redis.call('GET', KEYS[i + 1]) or '0') then redis.call('SET', KEYS[i + 1], n) end
end
"""


def probe_keys(counter: str) -> tuple[str, str]:
    """(runs now, most at once) of a limit_probe counter; all in one cluster slot, for
    the script that counts them."""
    return f"test:{{limits}}:now:{counter}", f"test:{{limits}}:peak:{counter}"


@app.task(name="limit_probe")
async def limit_probe(
    counters: list[str], seconds: float = 0.0, later_seconds: float | None = None
) -> str:
    """Counted in each of `counters` while it runs (see probe_keys; the peak is updated
    atomically with the count); the attempt is RPUSHed to test:started:<job id> (which a
    test BLPOPs) once counted. Sleeps `seconds`, or `later_seconds` on attempts after the
    first if given. Returns the worker id."""
    job = current_job()
    client = await app.client.aredis()
    keys = [key for counter in counters for key in probe_keys(counter)]
    if keys:
        await client.eval(_PROBE_ENTER, len(keys), *keys)
    await client.rpush(f"test:started:{job.id}", job.attempt)
    try:
        pause = seconds
        if later_seconds is not None and job.attempt > 1:
            pause = later_seconds
        await asyncio.sleep(pause)
    finally:
        for counter in counters:
            await client.decr(probe_keys(counter)[0])
    return job.worker_id


@app.task(name="limit_noop")
async def limit_noop() -> None:
    """Does nothing: a rate-limited job's start time is its record's started_at."""


@app.task(name="periodic_mark")
async def periodic_mark(log: str = "test:periodic:runs") -> str:
    """RPUSH the job's id to the Redis list `log` (a test BLPOPs it). Returns the id."""
    job = current_job()
    client = await app.client.aredis()
    await client.rpush(log, job.id)
    return job.id
