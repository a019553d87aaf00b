"""Scheduling: delayed jobs (countdown, eta), priorities (strict, first in first out
within one, retry_priority) and unique jobs (reject, replace), with the scripts driven
directly, with in-process workers and with worker processes, on the real test server."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis

from redwork import JobCancelled, JobFailed, JobState, Redwork, Settings, Worker
from redwork.queue import Completion, Failure, Queue, run
from tests import tasks
from tests.conftest import (
    ApiProcess,
    WorkerProcess,
    blocked_fetchers,
    count_events,
    stop_worker,
    until,
    wait_for_event,
)

Q = Queue("default")
LOG = "test:sched:log"
"""The Redis list tasks.sched_mark appends `<label>:<attempt>` to as each run starts."""
LONG_WAIT = 30.0
"""A block_timeout no test waits out: a worker that starts a delayed job on time was
woken by the enqueue and by the job's due time, not by its periodic check-in."""


# -- helpers ----------------------------------------------------------------------------


async def event(r: redis.Redis, name: str, job_id: str | None = None, **kw: Any) -> dict[str, str]:
    """wait_for_event without blocking the loop an in-process worker runs on."""
    return await asyncio.to_thread(wait_for_event, r, "default", name, job_id, **kw)


@contextlib.asynccontextmanager
async def idle_worker(app: Redwork, r: redis.Redis, **overrides: Any) -> AsyncIterator[Worker]:
    """An in-process worker that waits up to LONG_WAIT for work, yielded once it is idle
    (blocked on the server), so that only a wake-up can make it start a job in time."""
    worker = Worker(app, app.settings.replace(block_timeout=LONG_WAIT, **overrides))
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.to_thread(until, lambda: blocked_fetchers(r) > 0, 20.0, "an idle worker")
        yield worker
    finally:
        stopped = await stop_worker(worker, task)
        await app.client.aclose()
        assert stopped, "Worker.run() did not return after stop()"


def timeline(r: redis.Redis, job_id: str) -> list[str]:
    return [e for e, _, _ in run(r, Q.timeline(job_id))]


def started_labels(r: redis.Redis) -> list[str]:
    return [x.decode() for x in r.lrange(LOG, 0, -1)]


def job_hashes(r: redis.Redis) -> int:
    return sum(1 for _ in r.scan_iter(match=Q.prefix + "job:*", count=1000))


def fetch_one(r: redis.Redis) -> Any:
    """Lease at most one job directly (no worker); its delivery or None."""
    deliveries = run(r, Q.fetch(1, 60_000, "test-fetcher", 1 << 20)).deliveries
    assert len(deliveries) <= 1
    return deliveries[0] if deliveries else None


def priority_order(priorities: list[int]) -> list[int]:
    """Indexes in the order jobs must start: priority descending, then enqueue order."""
    return sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))


def mixed_priorities(n: int = 50, seed: int = 6) -> list[int]:
    rng = random.Random(seed)
    priorities = [rng.randrange(10) for _ in range(n)]
    # The seed gives every level and several jobs on most: FIFO within a level is tested.
    assert set(priorities) == set(range(10))
    assert sum(priorities.count(p) >= 3 for p in range(10)) >= 8
    return priorities


# -- delayed jobs -----------------------------------------------------------------------


@pytest.mark.cluster
async def test_a_countdown_job_is_delayed_and_an_idle_worker_starts_it_when_due(
    app: Redwork, r: redis.Redis
) -> None:
    async with idle_worker(app, r):
        handle = await tasks.add.options(countdown=1).aenqueue(1, 2)
        info = await handle.ainfo()
        assert info.state is JobState.DELAYED
        assert info.enqueued_at is not None and info.due_at == info.enqueued_at + 1000
        assert info.as_dict()["due_at"] == info.due_at
        assert r.zscore(Q.delayed, handle.id) == info.due_at
        counts = run(r, Q.counts())
        assert (counts.waiting, counts.delayed) == (0, 1)
        await event(r, "active", handle.id, timeout=10)
        assert await handle.aresult(timeout=10) == 3
    info = handle.info()
    assert info.started_at is not None and info.due_at is not None
    assert info.started_at >= info.due_at  # never early: both are the server's clock
    assert info.started_at - info.due_at <= 2000  # woken for its due time, not LONG_WAIT
    assert timeline(r, handle.id) == ["delayed", "promoted", "active", "completed"]
    assert r.zcard(Q.delayed) == 0


@pytest.mark.parametrize("kind", ["datetime", "unix seconds"])
async def test_an_eta_sets_the_due_time(app: Redwork, r: redis.Redis, kind: str) -> None:
    at = time.time() + 1.0
    eta: datetime | float = datetime.fromtimestamp(at, UTC) if kind == "datetime" else at
    async with idle_worker(app, r):
        handle = await tasks.add.options(eta=eta).aenqueue(2, 2)
        info = await handle.ainfo()
        assert info.state is JobState.DELAYED
        assert info.due_at is not None
        # Turned into a delay on this machine's clock, counted on the server's (the
        # same clock here): due no earlier than the eta, and not much later.
        assert at * 1000 - 1 <= info.due_at <= at * 1000 + 1000
        assert await handle.aresult(timeout=10) == 4
    info = handle.info()
    assert info.started_at is not None
    assert info.due_at <= info.started_at <= info.due_at + 2000


@pytest.mark.parametrize("eta", ["datetime", "unix seconds", "countdown 0"])
async def test_an_eta_in_the_past_runs_at_once(app: Redwork, r: redis.Redis, eta: str) -> None:
    past = time.time() - 3600
    options: dict[str, Any] = {
        "datetime": {"eta": datetime.fromtimestamp(past, UTC)},
        "unix seconds": {"eta": past},
        "countdown 0": {"countdown": 0},
    }[eta]
    async with idle_worker(app, r):
        handle = await tasks.add.options(**options).aenqueue(1, 1)
        assert await handle.aresult(timeout=5) == 2  # well before LONG_WAIT
    info = handle.info()
    assert info.due_at is None or info.due_at <= info.enqueued_at


def test_countdown_with_eta_or_not_a_number_is_refused(app: Redwork, r: redis.Redis) -> None:
    with pytest.raises(ValueError, match="countdown or eta"):
        tasks.add.options(countdown=1, eta=time.time() + 5).enqueue(1, 1)
    with pytest.raises(ValueError, match="countdown or eta"):
        tasks.add.options(countdown=0, eta=datetime.now(UTC)).prepare(1, 1)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            tasks.add.options(countdown=bad).enqueue(1, 1)
    assert job_hashes(r) == 0 and r.zcard(Q.delayed) == 0


async def test_a_cancelled_delayed_job_never_starts(app: Redwork, r: redis.Redis) -> None:
    async with idle_worker(app, r):
        doomed = await tasks.add.options(countdown=1.0).aenqueue(1, 1)
        witness = await tasks.add.options(countdown=1.5).aenqueue(2, 2)
        assert await doomed.acancel() == "cancelled"
        assert r.zrange(Q.delayed, 0, -1) == [witness.id.encode()]
        # The witness, due after it, has run: the worker went past the doomed job's due time.
        assert await witness.aresult(timeout=10) == 4
        with pytest.raises(JobCancelled):
            await doomed.aresult(timeout=1)
    info, seen = doomed.info(), witness.info()
    assert (info.state, info.started_at, info.attempt) == (JobState.CANCELLED, None, 0)
    assert seen.started_at is not None and info.due_at is not None
    assert seen.started_at >= info.due_at
    assert timeline(r, doomed.id) == ["delayed", "cancelled"]
    assert count_events(r, "default", "active") == 1
    assert run(r, Q.counts()).stats["cancelled"] == 1


@pytest.mark.cluster
async def test_a_delayed_keyed_job_does_not_hold_its_key_and_joins_its_line_when_due(
    app: Redwork, r: redis.Redis, worker: Worker
) -> None:
    # A is enqueued first but delayed; B (same key, enqueued after it) starts at once and
    # is still running when A falls due: A then waits behind B, in its key's line.
    a = await tasks.keyed_run.options(key="k", countdown=0.5).aenqueue("k", 0, 0)
    b = await tasks.keyed_run.options(key="k").aenqueue("k", 1, 2.0)
    assert r.hget(Q.prefix + "keys", "k") == b.id.encode()  # the delayed A is not its head
    promoted = await event(r, "promoted", a.id, timeout=10)
    assert await b.aresult(timeout=10) is None
    assert await a.aresult(timeout=10) is None
    runs = [x.decode() for x in r.lrange("test:runs:k", 0, -1)]
    assert runs == ["start 1", "end 1", "start 0", "end 0"]  # B (seq 1), then A (seq 0)
    ai, bi = a.info(), b.info()
    assert ai.due_at is not None and ai.started_at is not None and bi.finished_at is not None
    assert int(promoted["at"]) < bi.finished_at  # A was due while B ran...
    assert ai.started_at >= bi.finished_at  # ...and started only once B had ended
    assert ai.started_at >= ai.due_at
    assert run(r, Q.counts()).held == 0 and r.hgetall(Q.prefix + "keys") == {}


def test_many_delayed_jobs_due_together_run_once_each_and_none_early(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    n = 2000
    for _ in range(2):
        spawn_worker(block_timeout=LONG_WAIT)
    handles = app.enqueue_many(
        tasks.sched_mark.options(countdown=1).prepare(LOG, str(i)) for i in range(n)
    )
    assert len({h.id for h in handles}) == n
    assert count_events(r, "default", "delayed") == n

    def completed() -> int:
        return run(r, Q.counts()).stats.get("completed", 0)

    until(lambda: completed() >= n, timeout=40, what=f"{n} delayed jobs completed")
    assert completed() == n
    labels = started_labels(r)
    assert len(labels) == n  # no job ran twice...
    assert sorted(labels) == sorted(f"{i}:1" for i in range(n))  # ...each ran once
    assert count_events(r, "default", "active") == n
    pipe = r.pipeline(transaction=False)
    for h in handles:
        pipe.hmget(Q.job_key(h.id), "due_at", "started_at", "state")
    for due_at, started_at, state in pipe.execute():
        assert state == b"completed"
        assert int(started_at) >= int(due_at)  # none early
    counts = run(r, Q.counts())
    assert (counts.waiting, counts.delayed, counts.active) == (0, 0, 0)


# -- priorities -------------------------------------------------------------------------


def test_fetch_takes_the_highest_priority_first_and_fifo_within_one(
    app: Redwork, r: redis.Redis
) -> None:
    priorities = mixed_priorities()
    # Half in one batch (one script call), half one by one.
    handles = app.enqueue_many(
        tasks.add.options(priority=p).prepare(i, 0) for i, p in enumerate(priorities[:25])
    )
    handles += [
        tasks.add.options(priority=p).enqueue(i, 0) for i, p in enumerate(priorities[25:], start=25)
    ]
    ids = [h.id for h in handles]
    assert run(r, Q.counts()).waiting == 50
    assert r.llen(Q.wait) == priorities.count(0)
    for p in range(1, 10):
        assert r.llen(f"{Q.wait}:{p}") == priorities.count(p), p
    assert {int(m) for m in r.zrange(Q.levels, 0, -1)} == set(range(1, 10))
    for job_id, p in zip(ids, priorities, strict=True):
        assert app.job(job_id).info().priority == p

    fetched = []
    while (delivery := fetch_one(r)) is not None:
        fetched.append(delivery.id)
        assert run(r, Q.counts()).waiting == 50 - len(fetched)
    assert fetched == [ids[i] for i in priority_order(priorities)]
    assert r.zcard(Q.levels) == 0


@pytest.mark.cluster
def test_a_worker_starts_jobs_by_priority(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    priorities = mixed_priorities()
    app.enqueue_many(
        tasks.sched_mark.options(priority=p).prepare(LOG, str(i)) for i, p in enumerate(priorities)
    )
    spawn_worker(concurrency=1)
    until(lambda: r.llen(LOG) >= 50, what="50 jobs started")
    assert started_labels(r) == [f"{i}:1" for i in priority_order(priorities)]


@pytest.mark.parametrize("retry_priority", [9, None])
def test_a_retry_runs_at_its_retry_priority(
    app: Redwork,
    r: redis.Redis,
    spawn_worker: Callable[..., WorkerProcess],
    retry_priority: int | None,
) -> None:
    flaky = tasks.sched_mark.options(retries=1, backoff=0.001, retry_priority=retry_priority)
    first = flaky.enqueue(LOG, "F", 0, True)
    backlog = app.enqueue_many(tasks.sched_mark.prepare(LOG, f"b{i}", 0.05) for i in range(30))
    spawn_worker(concurrency=1)
    assert first.result(timeout=30) == 2
    for handle in backlog:
        assert handle.result(timeout=30) == 1
    started = started_labels(r)
    assert len(started) == 32 and started[0] == "F:1"
    if retry_priority is None:
        # A retry at priority 0 goes behind the jobs already waiting at it.
        assert started[-1] == "F:2"
        assert first.info().priority == 0
    else:
        # Its slot is freed before its failure is recorded: the one backlog job fetched
        # meanwhile may start before the retry, no more (a generous bound: 2).
        assert started.index("F:2") <= 3, started[:5]
        assert first.info().priority == retry_priority


@pytest.mark.parametrize("bad", [10, -1, "x", True, 1.5])
def test_an_invalid_priority_is_refused(
    app: Redwork, r: redis.Redis, settings: Settings, bad: Any
) -> None:
    with pytest.raises(ValueError):
        tasks.add.options(priority=bad).enqueue(1, 1)
    with pytest.raises(ValueError):
        tasks.add.options(retry_priority=bad).prepare(1, 1)
    other = Redwork("other", settings=settings)
    with pytest.raises(ValueError):
        other.task(name="p", priority=bad)(lambda: None)
    with pytest.raises(ValueError):
        other.task(name="rp", retry_priority=bad)(lambda: None)
    assert other.tasks == {}
    assert job_hashes(r) == 0


def test_counts_waiting_includes_every_level(app: Redwork, r: redis.Redis) -> None:
    for p in (0, 0, 0, 4, 4, 9):
        tasks.add.options(priority=p).enqueue(p, 0)
    tasks.add.options(priority=9, countdown=60).enqueue(0, 0)  # delayed, not waiting
    counts = run(r, Q.counts())
    assert (counts.waiting, counts.delayed) == (6, 1)
    assert fetch_one(r) is not None  # the priority-9 job
    counts = run(r, Q.counts())
    assert (counts.waiting, counts.active) == (5, 1)
    assert r.zrange(Q.levels, 0, -1) == [b"4"]  # the emptied level is dropped by fetch


def test_a_delayed_job_joins_its_own_level_when_due(app: Redwork, r: redis.Redis) -> None:
    # countdown 0: delayed, due at once; the next fetch promotes both, then leases by level.
    low = tasks.add.options(countdown=0).enqueue(0, 0)
    high = tasks.add.options(countdown=0, priority=8).enqueue(8, 0)
    plain = tasks.add.options(priority=3).enqueue(3, 0)
    assert run(r, Q.counts()).delayed == 2
    order = []
    while (delivery := fetch_one(r)) is not None:
        order.append(delivery.id)
    assert order == [high.id, plain.id, low.id]


def test_a_priority_job_whose_worker_died_goes_back_to_the_front_of_its_level(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    victim = tasks.announce_sleep.options(priority=5).enqueue(30)
    proc = spawn_worker(concurrency=1)
    assert r.blpop([f"test:started:{victim.id}"], timeout=30) is not None
    # Its worker is full (one slot): these wait while it runs.
    same = [tasks.add.options(priority=5).enqueue(i, 0).id for i in range(2)]
    low = tasks.add.enqueue(0, 0).id
    top = tasks.add.options(priority=9).enqueue(9, 0).id
    proc.kill()
    proc.wait()
    until(lambda: run(r, Q.recover(max_losses=3)) != (0, 0), what="the lease expired")
    assert victim.status() is JobState.WAITING and victim.info().losses == 1
    order = []
    while (delivery := fetch_one(r)) is not None:
        order.append(delivery.id)
    assert order == [top, victim.id, *same, low]


# -- unique jobs ------------------------------------------------------------------------


@pytest.mark.cluster
def test_unique_reject_keeps_the_first_job_and_names_it(app: Redwork, r: redis.Redis) -> None:
    first = tasks.add.options(unique_key="u").enqueue(1, 2)
    again = tasks.add.options(unique_key="u").enqueue(3, 4)
    batch = app.enqueue_many(
        [
            tasks.add.options(unique_key="u").prepare(5, 6),
            tasks.add.options(unique_key="v").prepare(7, 8),
            tasks.add.options(unique_key="v").prepare(9, 9),
        ]
    )
    assert again.id == first.id == batch[0].id
    assert batch[2].id == batch[1].id != first.id
    assert job_hashes(r) == 2
    counts = run(r, Q.counts())
    assert (counts.waiting, counts.stats["enqueued"]) == (2, 2)
    assert r.get(Q.prefix + "unique:u") == first.id.encode()
    envelope = first.info().envelope
    assert envelope is not None and envelope.args == [1, 2]  # the first one's arguments
    # A delayed job holds its key too.
    later = tasks.add.options(unique_key="d", countdown=60).enqueue(0, 0)
    assert tasks.add.options(unique_key="d").enqueue(1, 1).id == later.id
    assert run(r, Q.counts()).delayed == 1 and job_hashes(r) == 3


@pytest.mark.parametrize("first_state", ["waiting", "delayed", "held"])
async def test_unique_replace_cancels_a_job_that_has_not_started(
    app: Redwork, r: redis.Redis, first_state: str
) -> None:
    options: dict[str, Any] = {"unique_key": "u"}
    if first_state == "delayed":
        options["countdown"] = 60
    if first_state == "held":  # waiting behind a job of its key
        blocker = await tasks.echo.options(key="k").aenqueue("blocker")
        options["key"] = "k"
    first = await tasks.echo.options(**options).aenqueue("first")
    assert (await first.ainfo()).state in (JobState.WAITING, JobState.DELAYED)
    second = await tasks.echo.options(unique_key="u", unique="replace").aenqueue("second")
    assert second.id != first.id
    assert await first.astatus() is JobState.CANCELLED
    assert r.get(Q.prefix + "unique:u") == second.id.encode()
    counts = run(r, Q.counts())
    assert (counts.delayed, counts.held) == (0, 0)
    assert counts.waiting == (2 if first_state == "held" else 1)
    assert counts.stats["cancelled"] == 1
    async with idle_worker(app, r):
        assert await second.aresult(timeout=10) == "second"
        if first_state == "held":
            assert await blocker.aresult(timeout=10) == "blocker"
    with pytest.raises(JobCancelled):
        await first.aresult(timeout=1)
    assert "active" not in timeline(r, first.id)
    assert timeline(r, first.id)[-1] == "cancelled"


async def test_unique_replace_leaves_a_running_job_and_names_it(
    app: Redwork, r: redis.Redis, worker: Worker
) -> None:
    running = await tasks.announce_sleep.options(unique_key="u").aenqueue(30)
    assert await asyncio.to_thread(r.blpop, [f"test:started:{running.id}"], 10) is not None
    again = await tasks.add.options(unique_key="u", unique="replace").aenqueue(1, 1)
    assert again.id == running.id
    info = await running.ainfo()
    assert (info.state, info.cancel_requested) == (JobState.ACTIVE, False)
    assert job_hashes(r) == 1
    # Cancelling the run releases the key: the next enqueue adds a job, which runs.
    assert await running.acancel() == "cancelling"
    with pytest.raises(JobCancelled):
        await running.aresult(timeout=10)
    fresh = await tasks.add.options(unique_key="u").aenqueue(2, 2)
    assert fresh.id != running.id
    assert await fresh.aresult(timeout=10) == 4


def test_the_unique_key_is_held_until_the_job_ends_for_good(app: Redwork, r: redis.Redis) -> None:
    unique = tasks.add.options(unique_key="u")
    a = unique.enqueue(1, 1)
    lease = fetch_one(r)
    assert lease.id == a.id
    assert unique.enqueue(0, 0).id == a.id  # running
    assert run(r, Q.fail([Failure(a.id, lease.token, "exception", "x", retry_in_ms=60_000)]))
    assert a.status() is JobState.DELAYED
    assert unique.enqueue(0, 0).id == a.id  # waiting for its retry
    assert a.cancel() == "cancelled"
    b = unique.enqueue(2, 2)
    assert b.id != a.id  # released: cancelled
    lease = fetch_one(r)
    assert run(r, Q.complete([Completion(b.id, lease.token, b"4")], 60))
    c = unique.enqueue(3, 3)
    assert c.id != b.id  # released: completed
    lease = fetch_one(r)
    run(r, Q.fail([Failure(c.id, lease.token, "exception", "x")]))
    assert c.status() is JobState.FAILED
    d = unique.enqueue(4, 4)
    assert d.id != c.id  # released: failed for good
    assert r.get(Q.prefix + "unique:u") == d.id.encode()
    assert len({a.id, b.id, c.id, d.id}) == 4


async def test_a_worker_releases_the_unique_key_when_a_job_completes_or_fails(
    app: Redwork, r: redis.Redis, worker: Worker
) -> None:
    done = await tasks.add.options(unique_key="u").aenqueue(1, 2)
    assert await done.aresult(timeout=10) == 3
    failing = await tasks.boom.options(unique_key="u", retries=1, backoff=0.01).aenqueue()
    assert failing.id != done.id
    with pytest.raises(JobFailed):
        await failing.aresult(timeout=10)
    assert (await failing.ainfo()).attempt == 2
    last = await tasks.add.options(unique_key="u").aenqueue(3, 4)
    assert last.id not in (done.id, failing.id)
    assert await last.aresult(timeout=10) == 7
    assert not r.exists(Q.prefix + "unique:u")


def test_a_dead_letter_sent_back_holds_its_unique_key_again(app: Redwork, r: redis.Redis) -> None:
    unique = tasks.add.options(unique_key="u")
    a = unique.enqueue(1, 1)
    lease = fetch_one(r)
    run(r, Q.fail([Failure(a.id, lease.token, "exception", "x")]))
    assert run(r, Q.retry_failed([a.id])) == 1
    assert a.status() is JobState.WAITING
    assert unique.enqueue(2, 2).id == a.id


def test_a_dead_letter_whose_unique_key_is_taken_stays_failed(app: Redwork, r: redis.Redis) -> None:
    unique = tasks.add.options(unique_key="u")
    a = unique.enqueue(1, 1)
    lease = fetch_one(r)
    run(r, Q.fail([Failure(a.id, lease.token, "exception", "x")]))
    b = unique.enqueue(2, 2)  # the key was released: b takes it
    assert b.id != a.id
    assert run(r, Q.retry_failed([a.id])) == 0
    assert a.status() is JobState.FAILED
    assert r.get(Q.prefix + "unique:u") == b.id.encode()


async def test_unique_replace_within_one_batch_runs_only_the_last(
    app: Redwork, r: redis.Redis
) -> None:
    one, two = await app.aenqueue_many(
        tasks.echo.options(unique_key="u", unique="replace").prepare(value)
        for value in ("one", "two")
    )
    assert one.id != two.id
    assert await one.astatus() is JobState.CANCELLED
    async with idle_worker(app, r):
        assert await two.aresult(timeout=10) == "two"  # "one" was ahead of it, if queued
    assert "active" not in timeline(r, one.id)
    assert await one.astatus() is JobState.CANCELLED
    assert run(r, Q.counts()).stats.get("completed") == 1


def produce_concurrently(app: Redwork, policy: str, threads: int = 8, each: int = 50) -> list[str]:
    """`threads` producers enqueue `each` jobs of unique key u at once; the ids returned."""
    app.client.redis()  # one client for every thread, made before they start
    start = threading.Barrier(threads)
    ids: list[str] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            start.wait()
            for i in range(each):
                ids.append(tasks.add.options(unique_key="u", unique=policy).enqueue(i, 0).id)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert not errors, errors
    assert len(ids) == threads * each
    return ids


def test_concurrent_producers_of_one_unique_key_add_one_job(app: Redwork, r: redis.Redis) -> None:
    ids = produce_concurrently(app, "reject")
    assert len(set(ids)) == 1
    assert job_hashes(r) == 1
    counts = run(r, Q.counts())
    assert (counts.waiting, counts.stats["enqueued"]) == (1, 1)
    assert r.get(Q.prefix + "unique:u") == ids[0].encode()


def test_concurrent_replacing_producers_leave_exactly_one_job_waiting(
    app: Redwork, r: redis.Redis
) -> None:
    ids = produce_concurrently(app, "replace")
    assert len(set(ids)) == len(ids)  # each replaced the one before
    counts = run(r, Q.counts())
    assert (counts.waiting, counts.stats["enqueued"], counts.stats["cancelled"]) == (
        1,
        len(ids),
        len(ids) - 1,
    )
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(Q.job_key(job_id), "state")
    states = dict(zip(ids, pipe.execute(), strict=True))
    waiting = [i for i, s in states.items() if s == b"waiting"]
    assert len(waiting) == 1
    assert sorted(set(states.values())) == [b"cancelled", b"waiting"]
    assert r.get(Q.prefix + "unique:u") == waiting[0].encode()
    assert r.lrange(Q.wait, 0, -1) == [waiting[0].encode()]


# -- HTTP submission --------------------------------------------------------------------


def test_http_submission_takes_unique_key_priority_and_when(
    api: ApiProcess, r: redis.Redis
) -> None:
    with httpx.Client(base_url=api.url, timeout=30) as http:
        first = http.post("/api/jobs", json={"task": "add", "args": [1, 2], "unique_key": "u"})
        again = http.post("/api/jobs", json={"task": "add", "args": [3, 4], "unique_key": "u"})
        assert first.status_code == 201, first.text
        assert again.status_code == 200, again.text
        first_id = first.json()["id"]
        assert again.json() == {"id": first_id, "queue": "default", "duplicate": True}

        replaced = http.post(
            "/api/jobs",
            json={"task": "add", "args": [5, 6], "unique_key": "u", "unique": "replace"},
        )
        assert replaced.status_code == 201 and replaced.json()["duplicate"] is False
        assert replaced.json()["id"] != first_id
        assert http.get(f"/api/jobs/{first_id}").json()["state"] == "cancelled"

        created = http.post(
            "/api/jobs",
            json={
                "task": "add",
                "args": [1, 1],
                "priority": 7,
                "retry_priority": 9,
                "countdown": 30,
            },
        )
        assert created.status_code == 201, created.text
        view = http.get(f"/api/jobs/{created.json()['id']}").json()
        assert (view["state"], view["priority"]) == ("delayed", 7)
        assert view["due_at"] == view["enqueued_at"] + 30_000

        at = datetime.now(UTC) + timedelta(seconds=60)
        timed = http.post("/api/jobs", json={"task": "add", "args": [1, 1], "eta": at.isoformat()})
        assert timed.status_code == 201, timed.text
        view = http.get(f"/api/jobs/{timed.json()['id']}").json()
        assert view["state"] == "delayed"
        assert at.timestamp() * 1000 - 1 <= view["due_at"] <= at.timestamp() * 1000 + 5000

        stored = job_hashes(r)
        for bad in (
            {"priority": 10},
            {"priority": -1},
            {"retry_priority": 10},
            {"priority": "high"},
            {"countdown": 5, "eta": at.isoformat()},
            {"countdown": -1},
            {"unique_key": "u", "unique": "sometimes"},
        ):
            refused = http.post("/api/jobs", json={"task": "add", "args": [1, 1], **bad})
            assert refused.status_code == 422, (bad, refused.text)
        assert job_hashes(r) == stored
