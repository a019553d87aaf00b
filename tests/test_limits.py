"""Rate and concurrency limits (per task, per queue, per group), with real worker
processes where the limit must hold across them, and in-process workers for parking,
cancelling and clearing; on the real test server.

How many jobs run at once is measured twice: by the jobs themselves (tasks.limit_probe
counts itself in and out of a Redis counter and keeps its high-water mark, atomically),
and from the server's own record of each job: `started_at` is written by the fetch that
took the job's slot and `finished_at` by the completion that freed it, in server time."""

from __future__ import annotations

import asyncio
import bisect
import signal
from collections.abc import Callable, Sequence

import pytest
import redis

from redwork import JobHandle, JobState, Redwork, Worker
from redwork.job import JobRecord
from redwork.limits import Limit, LimitError, parse_rate
from redwork.queue import Queue, run
from tests import tasks
from tests.conftest import WorkerProcess, blocked_fetchers, job_events, until, wait_for_event

Q = Queue("default")
PROBE_SCOPE = "task:limit_probe"
SpawnWorker = Callable[..., WorkerProcess]


# -- helpers ------------------------------------------------------------------------------


def peak(r: redis.Redis, counter: str) -> int:
    """The most limit_probe runs counted in `counter` at once."""
    return int(r.get(tasks.probe_keys(counter)[1]) or 0)


def running_now(r: redis.Redis, counter: str) -> int:
    return int(r.get(tasks.probe_keys(counter)[0]) or 0)


def most_at_once(records: Sequence[JobRecord]) -> int:
    """The most jobs holding a slot at once, from the server's [started_at, finished_at)
    of each: at a tie a finish counts first (a slot freed and taken in the same ms)."""
    changes: list[tuple[int, int]] = []
    for record in records:
        assert record.started_at is not None and record.finished_at is not None, record
        changes += [(record.started_at, 1), (record.finished_at, -1)]
    most = now = 0
    for _, change in sorted(changes):
        now += change
        most = max(most, now)
    return most


def limited(r: redis.Redis) -> int:
    return run(r, Q.counts()).limited


def stream_events(r: redis.Redis) -> list[dict[str, str]]:
    """Every job event of the default queue, in the order they happened."""
    return [e for _, raw in r.xrange(Q.events, "-", "+") for e in job_events(raw)]


def pid_of(worker_id: str) -> int:
    return int(worker_id.rsplit(":", 2)[1])


async def event(r: redis.Redis, name: str, job_id: str | None = None) -> dict[str, str]:
    """wait_for_event without blocking the loop an in-process worker runs on."""
    return await asyncio.to_thread(wait_for_event, r, "default", name, job_id)


async def started(r: redis.Redis, handle: JobHandle, timeout: float = 15.0) -> int:
    """The attempt limit_probe announces as it starts running."""
    popped = await asyncio.to_thread(r.blpop, [f"test:started:{handle.id}"], timeout)
    assert popped is not None, f"{handle.id} did not start in {timeout}s"
    return int(popped[1])


# -- concurrency across worker processes --------------------------------------------------


@pytest.mark.cluster
def test_a_concurrency_limit_holds_across_four_worker_processes(
    app: Redwork, r: redis.Redis, spawn_worker: SpawnWorker
) -> None:
    app.set_limit("default", PROBE_SCOPE, concurrency=3)
    for _ in range(4):
        spawn_worker(concurrency=10)
    # All four wait for work (40 free slots) when the 100 jobs arrive at once.
    until(lambda: blocked_fetchers(r) >= 4, 30.0, "four idle workers")
    handles = app.enqueue_many(tasks.limit_probe.prepare(["c3"], 0.05) for _ in range(100))

    for h in handles:
        h.result(timeout=60)

    records = [h.info() for h in handles]
    assert all(rec.state is JobState.COMPLETED and rec.attempt == 1 for rec in records)
    # The jobs saw at most 3 of them running at once, and the limit was used in full.
    assert peak(r, "c3") == 3
    assert running_now(r, "c3") == 0
    # So did the server: never more than 3 jobs between the lease and the completion.
    assert most_at_once(records) == 3
    assert limited(r) == 0
    assert r.scard(f"{Q.prefix}running:{PROBE_SCOPE}") == 0


# -- rate across worker processes ---------------------------------------------------------


def test_a_rate_limit_of_50_per_second_holds_within_5_percent_over_10_seconds(
    app: Redwork, r: redis.Redis, spawn_worker: SpawnWorker
) -> None:
    app.set_limit("default", "task:limit_noop", rate="50/s")
    spawn_worker(concurrency=10)
    spawn_worker(concurrency=10)
    until(lambda: blocked_fetchers(r) >= 2, 30.0, "two idle workers")
    handles = app.enqueue_many(tasks.limit_noop.prepare() for _ in range(700))

    # 551 starts take 11 windows of a second: by then the first 10 s are complete.
    until(lambda: int(r.hget(Q.stats, "completed") or 0) >= 551, 30.0, "551 completions")

    pipe = r.pipeline(transaction=False)
    for h in handles:
        pipe.hget(Q.job_key(h.id), "started_at")
    starts = sorted(int(s) for s in pipe.execute() if s is not None)
    first = starts[0]
    in_ten_seconds = bisect.bisect_left(starts, first + 10_000)
    assert 475 <= in_ten_seconds <= 525, in_ten_seconds
    # No window of one second (1000 ms from any start) holds more than 50 starts.
    busiest = max(bisect.bisect_left(starts, s + 1000) - i for i, s in enumerate(starts))
    assert busiest <= 50, busiest


# -- group concurrency --------------------------------------------------------------------


@pytest.mark.cluster
async def test_a_group_limit_counts_each_group_separately(
    app: Redwork, r: redis.Redis, worker: Worker
) -> None:
    app.set_limit("default", "group", concurrency=1)
    envelopes = [
        tasks.limit_probe.options(group=g).prepare(["all", f"group-{g}"], 0.2)
        for g in ("a", "b", "a", "b", "a", "b")
    ]
    handles = await app.aenqueue_many(envelopes)

    for h in handles:
        await h.aresult(timeout=20)

    assert (peak(r, "group-a"), peak(r, "group-b")) == (1, 1)
    assert peak(r, "all") == 2  # an a and a b ran together
    records = [await h.ainfo() for h in handles]
    assert most_at_once(records[0::2]) == 1
    assert most_at_once(records[1::2]) == 1
    assert most_at_once(records) == 2
    assert limited(r) == 0


# -- a crashed holder ---------------------------------------------------------------------


def test_a_crashed_holders_slot_frees_when_its_lease_expires(
    app: Redwork, r: redis.Redis, spawn_worker: SpawnWorker
) -> None:
    app.set_limit("default", PROBE_SCOPE, concurrency=1)
    a = spawn_worker(concurrency=2)
    # The holder sleeps a minute on worker A; run again (after A dies) it returns at once.
    holder = tasks.limit_probe.enqueue([], 60.0, later_seconds=0.0)
    assert r.blpop([f"test:started:{holder.id}"], 15) is not None
    assert pid_of(holder.info().worker or "") == a.pid
    waiting = tasks.limit_probe.enqueue([], 0.0)
    # A, with a free slot, fetched it and parked it: the one slot of the scope is taken.
    wait_for_event(r, "default", "limited", waiting.id)
    assert limited(r) == 1
    assert waiting.status() is JobState.WAITING

    a.kill(signal.SIGKILL)
    assert a.wait() == -signal.SIGKILL
    b = spawn_worker(concurrency=2)

    assert pid_of(waiting.result(timeout=20)) == b.pid
    assert pid_of(holder.result(timeout=20)) == b.pid
    order = [(e["event"], e["job"]) for e in stream_events(r)]
    # The holder's slot was freed by the recovery of its lease, before the parked job ran.
    assert order.index(("recovered", holder.id)) < order.index(("active", waiting.id))
    assert holder.info().attempt == 2
    assert limited(r) == 0
    assert r.scard(f"{Q.prefix}running:{PROBE_SCOPE}") == 0


# -- parked jobs: cancelled, or sent back when the limit is cleared ------------------------


async def test_a_parked_job_can_be_cancelled_and_never_starts(
    app: Redwork, r: redis.Redis, worker: Worker
) -> None:
    app.set_limit("default", PROBE_SCOPE, concurrency=1)
    holder = await tasks.limit_probe.aenqueue([], 0.5)
    assert await started(r, holder) == 1
    doomed = await tasks.limit_probe.aenqueue([], 0.0)
    witness = await tasks.limit_probe.aenqueue([], 0.0)
    await event(r, "limited", doomed.id)
    await event(r, "limited", witness.id)
    assert limited(r) == 2

    assert await doomed.acancel() == "cancelled"
    assert limited(r) == 1

    # The witness, parked behind it, runs once the holder frees the slot.
    await witness.aresult(timeout=15)
    await holder.aresult(timeout=15)
    assert (await doomed.astatus()) is JobState.CANCELLED
    assert r.llen(f"test:started:{doomed.id}") == 0
    assert ("active", doomed.id) not in [(e["event"], e["job"]) for e in stream_events(r)]
    assert limited(r) == 0


async def test_clearing_a_limit_sends_its_parked_jobs_back(
    app: Redwork, r: redis.Redis, worker: Worker
) -> None:
    app.set_limit("default", PROBE_SCOPE, concurrency=1)
    holder = await tasks.limit_probe.aenqueue([], 30.0)
    assert await started(r, holder) == 1
    parked = [await tasks.limit_probe.aenqueue([], 0.0) for _ in range(2)]
    for h in parked:
        await event(r, "limited", h.id)
    assert limited(r) == 2
    assert app.limits("default") == {PROBE_SCOPE: Limit(concurrency=1)}

    app.clear_limit("default", PROBE_SCOPE)

    assert app.limits("default") == {}
    for h in parked:
        await h.aresult(timeout=15)
    assert (await holder.astatus()) is JobState.ACTIVE  # they did not wait for it
    assert limited(r) == 0
    assert await holder.acancel() == "cancelling"
    await event(r, "cancelled", holder.id)


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("50/s", (50, 1000)),
        ("10/5s", (10, 5000)),
        ("2/100ms", (2, 100)),
        ("1000/h", (1000, 3_600_000)),
        ("3/m", (3, 60_000)),
        ("1/0.5s", (1, 500)),
        (" 7 / 2s ", (7, 2000)),
    ],
)
def test_parse_rate_reads_count_and_period(rate: str, expected: tuple[int, int]) -> None:
    assert parse_rate(rate) == expected


@pytest.mark.parametrize(
    "rate", ["", "50", "50/", "/s", "0/s", "-1/s", "50/d", "50/0s", "x/s", "1.5/s", "50 per s"]
)
def test_a_bad_rate_is_refused(rate: str) -> None:
    with pytest.raises(LimitError, match="rate"):
        parse_rate(rate)


def test_limits_are_checked_when_made() -> None:
    assert Limit.of(concurrency=3) == Limit(concurrency=3, rate=0, period_ms=1000)
    assert Limit.of(rate="10/5s") == Limit(concurrency=0, rate=10, period_ms=5000)
    both = Limit.of(concurrency=2, rate="2/100ms")
    assert Limit.from_spec(both.spec()) == both
    assert issubclass(LimitError, ValueError)
    for bad in (
        lambda: Limit.of(),
        lambda: Limit.of(concurrency=0),
        lambda: Limit(concurrency=-1),
        lambda: Limit(rate=5, period_ms=0),
        lambda: Limit.of(rate="fast"),
    ):
        with pytest.raises(LimitError):
            bad()
    other = Redwork("limits-validation")
    with pytest.raises(LimitError):
        other.task(name="t", rate_limit="fast")
    with pytest.raises(LimitError):
        other.task(name="t", concurrency=-2)
    assert "t" not in other.tasks


@pytest.mark.parametrize("scope", ["task:", "tasks:x", "groups", "", "QUEUE"])
def test_a_bad_scope_is_refused(app: Redwork, r: redis.Redis, scope: str) -> None:
    with pytest.raises(LimitError, match="scope"):
        app.set_limit("default", scope, concurrency=1)
    assert app.limits("default") == {}


def test_set_limit_stores_and_replaces_a_scopes_limit(app: Redwork, r: redis.Redis) -> None:
    app.set_limit("default", "queue", concurrency=5)
    app.set_limit("default", "group", rate="10/5s")
    app.set_limit("default", "queue", concurrency=2, rate="50/s")
    assert app.limits("default") == {
        "queue": Limit(concurrency=2, rate=50, period_ms=1000),
        "group": Limit(rate=10, period_ms=5000),
    }
    app.clear_limit("default", "group")
    assert app.limits("default") == {"queue": Limit(concurrency=2, rate=50)}
    assert app.limits("other") == {}


def test_parked_jobs_keep_their_order(app: Redwork, r: redis.Redis) -> None:
    """Jobs held back by a limit start in enqueue order once there is room, however many
    are released at once."""
    app.set_limit("default", "queue", concurrency=1)
    handles = app.enqueue_many(tasks.limit_noop.prepare() for _ in range(6))
    holder = run(r, Q.fetch(1, 60_000, "w", 1 << 20)).deliveries
    assert [d.id for d in holder] == [handles[0].id]
    assert run(r, Q.fetch(5, 60_000, "w", 1 << 20)).deliveries == []  # all parked
    assert limited(r) == 5
    app.clear_limit("default", "queue")  # releases the five at once
    released = run(r, Q.fetch(5, 60_000, "w", 1 << 20)).deliveries
    assert [d.id for d in released] == [h.id for h in handles[1:]]
    assert limited(r) == 0
