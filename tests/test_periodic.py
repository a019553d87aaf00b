"""Periodic jobs: one job per tick however many schedulers run (four `redwork scheduler`
processes), ticks missed during downtime (skip or once), a declared schedule run by a
worker, the `redwork schedules` command, and the schedule arithmetic (cron with five or
six fields, in a zone, and fixed intervals); on the real test server.

No schedule is declared in tests/tasks.py (every worker process of every test loads it
and would run it): the tests store theirs at run time, or declare one on the test app
for the length of a test."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio

from redwork import JobState, Redwork, Settings, Worker
from redwork.job import Envelope
from redwork.queue import NewJob, Queue, run
from redwork.schedule import SCHEDULES_KEY, Schedule, ScheduleError, Scheduler
from redwork.scripts import Code
from tests import tasks
from tests.conftest import (
    DAY_MS,
    ROOT,
    job_events,
    stop_worker,
    until,
    wait_for_event,
    worker_env,
)
from tests.test_cli import ok, run_cli, table_row

PQ = Queue("periodic-test")
"""The queue of the schedules that no worker serves: their jobs stay in its wait list."""
HOUR_MS = 3_600_000


# -- helpers ------------------------------------------------------------------------------


def server_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Unix ms of a UTC date and time."""
    return ms(datetime(year, month, day, hour, minute, second, tzinfo=UTC))


class SchedulerProcess:
    """`python -m redwork scheduler tests.tasks` as a real child process; its log goes to
    a file, read to know when it has started."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.log = log
        with log.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "redwork", "scheduler", "tests.tasks"],
                env=worker_env(settings),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def started(self) -> bool:
        return (
            re.search(r"scheduler: \d+ schedules declared", self.log.read_text(errors="replace"))
            is not None
        )


@pytest.fixture
def spawn_scheduler(settings: Settings, tmp_path: Path) -> Iterator[Callable[[], SchedulerProcess]]:
    started: list[SchedulerProcess] = []

    def spawn() -> SchedulerProcess:
        proc = SchedulerProcess(settings, tmp_path / f"scheduler-{len(started)}.log")
        started.append(proc)
        return proc

    yield spawn
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def ticks_by_schedule(job_ids: list[str]) -> dict[str, list[int]]:
    """`<name>:<tick ms>` ids, as the sorted ticks of each name."""
    found: dict[str, list[int]] = {}
    for job_id in job_ids:
        name, tick = job_id.rsplit(":", 1)
        found.setdefault(name, []).append(int(tick))
    return {name: sorted(ticks) for name, ticks in found.items()}


def meta_of(r: redis.Redis, queue: Queue, job_id: str) -> dict[str, Any]:
    data = r.hget(queue.job_key(job_id), "data")
    assert data is not None, f"no job {job_id}"
    meta: dict[str, Any] = orjson.loads(data)["meta"]
    return meta


# -- one job per tick, four scheduler processes -------------------------------------------


@pytest.mark.cluster
def test_four_scheduler_processes_enqueue_exactly_one_job_per_tick(
    app: Redwork, r: redis.Redis, spawn_scheduler: Callable[[], SchedulerProcess]
) -> None:
    every = Schedule("tick-every-second", "periodic_mark", every=1, queue=PQ.name)
    cron = Schedule("tick-cron-second", "periodic_mark", cron="* * * * * *", queue=PQ.name)
    app.add_schedule(every)
    app.add_schedule(cron)
    baselines = {s.name: int(r.hget(PQ.schedules, s.name) or 0) for s in (every, cron)}
    schedulers = [spawn_scheduler() for _ in range(4)]
    until(lambda: all(s.started() for s in schedulers), 30.0, "four schedulers started")
    # From a second after the last one started, all four compete for every tick.
    contested_from = server_ms(r) + 1000

    def contested_ticks() -> int:
        ids = [i.decode() for i in r.lrange(PQ.wait, 0, -1)]
        ticks = ticks_by_schedule(ids)
        return min(sum(t >= contested_from for t in ticks.get(s.name, [])) for s in (every, cron))

    until(lambda: contested_ticks() >= 21, 45.0, "21 contested ticks of each schedule")
    assert all(s.proc.poll() is None for s in schedulers), "a scheduler died"
    for s in schedulers:
        s.proc.send_signal(signal.SIGTERM)
    assert [s.proc.wait(15) for s in schedulers] == [0, 0, 0, 0]

    queued = [i.decode() for i in r.lrange(PQ.wait, 0, -1)]
    assert len(queued) == len(set(queued)), "a tick was enqueued twice"
    stored = {k.decode().removeprefix(PQ.prefix + "job:") for k in r.scan_iter(PQ.prefix + "job:*")}
    assert stored == set(queued)
    assert int(r.hget(PQ.stats, "enqueued") or 0) == len(queued)
    enqueued_events = [
        e["job"]
        for _, raw in r.xrange(PQ.events, "-", "+")
        for e in job_events(raw)
        if e["event"] == "enqueued"
    ]
    assert sorted(enqueued_events) == sorted(queued)

    ticks = ticks_by_schedule(queued)
    assert set(ticks) == {every.name, cron.name}
    for schedule in (every, cron):
        mine = ticks[schedule.name]
        assert all(t % 1000 == 0 for t in mine)
        assert mine[0] > baselines[schedule.name] > 0  # none from before it was stored
        gaps = [b - a for a, b in itertools.pairwise(mine)]
        assert gaps == [1000] * len(gaps), f"{schedule.name}: ticks missed or repeated"
        assert sum(t >= contested_from for t in mine) >= 20
        # The last claimed tick is the last job's, and its job says which tick it is.
        assert int(r.hget(PQ.schedules, schedule.name) or 0) == mine[-1]
        last_id = f"{schedule.name}:{mine[-1]}"
        assert meta_of(r, PQ, last_id) == {"schedule": schedule.name, "tick": mine[-1]}


def test_a_tick_is_claimed_once_whatever_job_comes_with_it(r: redis.Redis) -> None:
    """The claim itself, without the help of job ids (the same tick offered with another
    job is refused, so that schedulers that disagree on a job id still add one)."""
    q = Queue("default")

    def claim(tick: int, *job_ids: str) -> list[Any]:
        jobs = [NewJob(i, Envelope(id=i, task="t", queue=q.name).encode(1 << 20)) for i in job_ids]
        return run(r, q.enqueue(jobs, DAY_MS, tick=("s", tick)))

    assert claim(5000, "a") == [Code.OK]
    assert claim(5000, "b") == []  # the same tick
    assert claim(4000, "c") == []  # an earlier one
    assert claim(6000, "d") == [Code.OK]
    assert claim(7000) == []  # a skipped tick: claimed with no job
    assert r.hget(q.schedules, "s") == b"7000"
    assert claim(7000, "e") == []
    assert [i.decode() for i in r.lrange(q.wait, 0, -1)] == ["d", "a"]
    assert int(r.hget(q.stats, "enqueued") or 0) == 2


# -- missed ticks -------------------------------------------------------------------------


async def run_scheduler_until(
    app: Redwork, redis_url: str, condition: Callable[[], bool]
) -> Scheduler:
    """Run a Scheduler in this process until `condition` holds, then stop it."""
    scheduler = Scheduler(app, 60, 1000)
    client = redis.asyncio.Redis.from_url(redis_url)
    stopped = asyncio.Event()
    running = asyncio.create_task(scheduler.run(client, stopped))
    try:
        await asyncio.to_thread(until, condition, 15.0, "the scheduler's claim")
    finally:
        stopped.set()
        await asyncio.wait_for(running, 5)
        await client.aclose()
    return scheduler


def job_ids(r: redis.Redis, queue: Queue) -> list[str]:
    return sorted(
        k.decode().removeprefix(queue.prefix + "job:") for k in r.scan_iter(queue.prefix + "job:*")
    )


@pytest.mark.parametrize(("missed", "jobs"), [("skip", 0), ("once", 1)])
async def test_a_tick_missed_during_downtime_is_skipped_or_run_once(
    app: Redwork, r: redis.Redis, redis_url: str, missed: str, jobs: int
) -> None:
    # Hourly, and no lateness allowed: the latest tick is late whenever the scheduler runs.
    schedule = Schedule("hourly", "periodic_mark", every=3600, grace=0, missed=missed)
    app.add_schedule(schedule)
    q = Queue(schedule.queue)
    down_since = server_ms(r) - 10 * HOUR_MS  # ten ticks missed
    r.hset(q.schedules, schedule.name, down_since)

    def claimed() -> int:
        return int(r.hget(q.schedules, schedule.name) or 0)

    before = server_ms(r)
    scheduler = await run_scheduler_until(app, redis_url, lambda: claimed() != down_since)
    after = server_ms(r)

    latest = claimed()
    assert latest in (schedule.latest_tick(before), schedule.latest_tick(after))
    expected = [f"hourly:{latest}"] if jobs else []
    assert job_ids(r, q) == expected
    assert scheduler.enqueued == jobs
    assert run(r, q.counts()).waiting == jobs
    if jobs:
        assert meta_of(r, q, expected[0]) == {"schedule": "hourly", "tick": latest}
    # Claimed once: running again adds nothing.
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await scheduler.run_due(client)
    finally:
        await client.aclose()
    assert scheduler.enqueued == jobs
    assert claimed() == latest


async def test_after_downtime_only_the_latest_tick_runs_never_the_older_ones(
    app: Redwork, r: redis.Redis, redis_url: str
) -> None:
    schedule = Schedule("each-second", "periodic_mark", every=1, grace=60)
    app.add_schedule(schedule)
    q = Queue(schedule.queue)
    down_since = server_ms(r) // 1000 * 1000 - 10_000  # ten ticks ago, well within grace
    r.hset(q.schedules, schedule.name, down_since)
    scheduler = Scheduler(app, 60, 1000)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await scheduler.run_due(client)
    finally:
        await client.aclose()
    latest = int(r.hget(q.schedules, schedule.name) or 0)
    assert latest >= down_since + 10_000
    assert job_ids(r, q) == [f"each-second:{latest}"]
    assert scheduler.enqueued == 1


async def test_a_new_schedule_starts_after_it_is_stored(
    app: Redwork, r: redis.Redis, redis_url: str
) -> None:
    app.add_schedule(Schedule("hourly", "periodic_mark", every=3600, missed="once"))
    # One written by another tool, with no last tick: the scheduler takes now as its start.
    outsider = Schedule("outsider", "periodic_mark", every=3600, missed="once")
    r.hset(SCHEDULES_KEY, outsider.name, outsider.to_json())
    q = Queue("default")
    stored_at = server_ms(r)
    scheduler = Scheduler(app, 60, 1000)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await scheduler.run_due(client)
        await scheduler.run_due(client)
    finally:
        await client.aclose()
    assert scheduler.enqueued == 0
    assert job_ids(r, q) == []
    assert int(r.hget(q.schedules, "outsider") or 0) >= stored_at


# -- a declared schedule, run by a worker --------------------------------------------------


DECLARED_LOG = "test:periodic:declared"


@pytest.fixture
def declared(app: Redwork) -> Iterator[Schedule]:
    """A schedule declared on the test app (as @app.periodic would) for one test."""
    app.periodic(every=1, name="declared-tick", kwargs={"log": DECLARED_LOG})(tasks.periodic_mark)
    try:
        yield app.schedules["declared-tick"]
    finally:
        app.schedules.pop("declared-tick", None)


@pytest.mark.cluster
async def test_a_worker_stores_the_declared_schedules_and_runs_their_jobs(
    app: Redwork, r: redis.Redis, declared: Schedule
) -> None:
    assert app.settings.scheduler is True  # the test settings leave workers their scheduler
    assert declared == Schedule(
        "declared-tick", "periodic_mark", every=1, kwargs={"log": DECLARED_LOG}
    )
    assert r.hget(SCHEDULES_KEY, declared.name) is None
    worker = Worker(app)
    running = asyncio.create_task(worker.run())
    try:
        popped = await asyncio.to_thread(r.blpop, [DECLARED_LOG], 15)
        assert popped is not None, "no periodic job ran"
        job_id = popped[1].decode()
        stored = r.hget(SCHEDULES_KEY, declared.name)
        assert stored is not None and Schedule.from_json(stored) == declared
        name, tick = job_id.rsplit(":", 1)
        assert name == declared.name and int(tick) % 1000 == 0
        await asyncio.to_thread(wait_for_event, r, "default", "completed", job_id)
        record = await app.job(job_id).ainfo()
        assert record.state is JobState.COMPLETED
        assert orjson.loads(record.result or b"null") == job_id
        assert meta_of(r, Queue("default"), job_id) == {"schedule": name, "tick": int(tick)}
        assert int(r.hget(Queue("default").schedules, name) or 0) >= int(tick)
    finally:
        stopped = await stop_worker(worker, running)
        await app.client.aclose()
    assert stopped


# -- the command ----------------------------------------------------------------------------


def test_schedules_command_adds_lists_and_removes(redis_url: str, r: redis.Redis) -> None:
    added = ok(
        run_cli(
            "schedules", "add", "heartbeat", "periodic_mark", "--every", "5",
            "--args", '["test:cli:log"]', "-q", PQ.name, "--missed", "once",
            redis_url=redis_url,
        )
    )  # fmt: skip
    assert added.startswith("schedule heartbeat: every 5s, next run ")
    stored = Schedule.from_json(r.hget(SCHEDULES_KEY, "heartbeat") or b"")
    assert stored == Schedule(
        "heartbeat", "periodic_mark", every=5, args=["test:cli:log"], queue=PQ.name, missed="once"
    )

    before = server_ms(r)
    listed = ok(run_cli("schedules", redis_url=redis_url))
    after = server_ms(r)
    _, task, queue, when, missed, last, next_run = table_row(listed, "heartbeat")
    assert (task, queue, when, missed, last) == ("periodic_mark", PQ.name, "every 5s", "once", "-")
    next_at = datetime.strptime(next_run, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert next_at.second % 5 == 0
    assert before < ms(next_at) <= after + 5000

    rows = orjson.loads(ok(run_cli("schedules", "list", "--json", redis_url=redis_url)))
    assert len(rows) == 1
    row = rows[0]
    assert {k: row[k] for k in ("name", "task", "every", "queue", "args", "missed")} == {
        "name": "heartbeat",
        "task": "periodic_mark",
        "every": 5.0,
        "queue": PQ.name,
        "args": ["test:cli:log"],
        "missed": "once",
    }
    assert "cron" not in row
    assert row["next_tick"] % 5000 == 0 and row["last_tick"] is None  # stored, not ticked yet

    assert ok(run_cli("schedules", "remove", "heartbeat", redis_url=redis_url)).strip() == (
        "removed schedule heartbeat"
    )
    assert r.hget(SCHEDULES_KEY, "heartbeat") is None
    assert r.hget(PQ.schedules, "heartbeat") is None
    assert "no schedules" in ok(run_cli("schedules", redis_url=redis_url))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "bad", "periodic_mark", "--cron", "61 * * * *"], "bad cron expression"),
        (["add", "bad", "periodic_mark", "--cron", "* * * * *", "--every", "5"], "cron"),
        (["add", "bad", "periodic_mark", "--every", "5", "--args", "{nope"], "Invalid value"),
        (["remove", "nope"], "no schedule nope"),
    ],
)
def test_schedules_command_refuses_bad_input_readably(
    redis_url: str, r: redis.Redis, args: list[str], message: str
) -> None:
    result = run_cli("schedules", *args, redis_url=redis_url)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert r.hlen(SCHEDULES_KEY) == 0


# -- schedule arithmetic --------------------------------------------------------------------


def test_every_ticks_on_multiples_of_its_period() -> None:
    s = Schedule("s", "t", every=60)
    assert s.latest_tick(125_000) == 120_000
    assert s.latest_tick(120_000) == 120_000
    assert s.next_tick(120_000) == 180_000
    assert s.next_tick(119_999) == 120_000
    half = Schedule("h", "t", every=0.5)
    assert (half.latest_tick(1_234), half.next_tick(1_234)) == (1_000, 1_500)


def test_a_five_field_cron_ticks_on_minutes() -> None:
    s = Schedule("s", "t", cron="*/5 * * * *")
    five_past = utc(2024, 7, 15, 7, 5)
    assert s.latest_tick(five_past) == five_past  # a tick at `now` is the latest
    assert s.latest_tick(five_past - 1) == utc(2024, 7, 15, 7, 0)
    assert s.latest_tick(five_past + 299_999) == five_past
    assert s.next_tick(five_past) == utc(2024, 7, 15, 7, 10)
    assert s.next_tick(five_past - 1) == five_past
    assert s.next_tick(utc(2024, 12, 31, 23, 58)) == utc(2025, 1, 1)


def test_a_six_field_cron_ticks_on_seconds() -> None:
    every_second = Schedule("s", "t", cron="* * * * * *")
    base = utc(2024, 7, 15, 7, 0, 20)
    for offset in (0, 1, 500, 999):
        assert every_second.latest_tick(base + offset) == base
        assert every_second.next_tick(base + offset) == base + 1000
    assert every_second.latest_tick(base - 1) == base - 1000
    tens = Schedule("s", "t", cron="*/10 * * * * *")
    assert tens.latest_tick(base + 9_999) == base
    assert tens.next_tick(base) == base + 10_000


def test_a_cron_is_read_in_its_timezone() -> None:
    nine_in_paris = Schedule("s", "t", cron="0 9 * * *", timezone="Europe/Paris")
    # 09:00 in Paris is 08:00 UTC in winter (CET) and 07:00 UTC in summer (CEST).
    assert nine_in_paris.next_tick(utc(2024, 1, 15, 12)) == utc(2024, 1, 16, 8)
    assert nine_in_paris.next_tick(utc(2024, 7, 15, 12)) == utc(2024, 7, 16, 7)
    assert nine_in_paris.latest_tick(utc(2024, 7, 15, 12)) == utc(2024, 7, 15, 7)
    assert Schedule("u", "t", cron="0 9 * * *").next_tick(utc(2024, 7, 15, 12)) == utc(
        2024, 7, 16, 9
    )


def test_due_claims_the_latest_tick_and_says_whether_it_runs() -> None:
    skip = Schedule("s", "t", every=60, grace=10)
    once = Schedule("o", "t", every=60, grace=10, missed="once")
    tick = 600_000
    for s in (skip, once):
        assert s.due(tick, tick + 59_999) is None  # claimed already
        assert s.due(tick - 60_000, tick) == (tick, True)  # on time
        assert s.due(tick - 60_000, tick + 10_000) == (tick, True)  # late, within grace
        assert s.due(tick - 5 * 60_000, tick + 5_000) == (tick, True)  # older ones: never
    assert skip.due(tick - 60_000, tick + 10_001) == (tick, False)  # missed: skipped
    assert once.due(tick - 60_000, tick + 10_001) == (tick, True)  # missed: run once


def test_a_schedule_survives_its_json() -> None:
    s = Schedule(
        "nightly", "reports.build", cron="0 3 * * *", queue="reports", args=[1, "x"],
        kwargs={"k": [1]}, missed="once", grace=5, timezone="Asia/Tokyo", priority=4,
    )  # fmt: skip
    assert Schedule.from_json(s.to_json()) == s
    assert s.when == "cron 0 3 * * *"
    assert Schedule("e", "t", every=30).when == "every 30s"


# -- bad schedules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cron": "61 * * * *"}, "bad cron expression"),
        ({"cron": "* * *"}, "bad cron expression"),
        ({"cron": "every day"}, "bad cron expression"),
        ({"cron": "* * * * *", "every": 5}, "cron expression or every"),
        ({}, "cron expression or every"),
        ({"every": 0}, "out of range"),
        ({"every": -1}, "out of range"),
        ({"every": 5, "timezone": "Mars/Olympus_Mons"}, "unknown zone"),
        ({"every": 5, "args": [object()]}, "not JSON"),
        ({"every": 5, "kwargs": {"x": {1, 2}}}, "not JSON"),
        ({"every": 5, "missed": "later"}, "skip or once"),
        ({"every": 5, "grace": -1}, "grace"),
    ],
)
def test_a_schedule_that_cannot_work_is_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        Schedule("s", "t", **fields)


def test_bad_schedules_are_refused_where_they_are_made() -> None:
    with pytest.raises(ScheduleError, match="longer than"):
        Schedule("n" * 101, "t", every=5)
    with pytest.raises(ScheduleError, match="unreadable"):
        Schedule.from_json(b"not json")
    with pytest.raises(ScheduleError, match="unreadable"):
        Schedule.from_json(b'{"name": "no-task"}')
    other = Redwork("periodic-validation")

    def report() -> None: ...

    with pytest.raises(ScheduleError, match="bad cron expression"):
        other.periodic("61 * * * *")(report)
    with pytest.raises(ScheduleError, match="cron expression or every"):
        other.periodic()(report)
    with pytest.raises(ScheduleError, match="unknown zone"):
        other.periodic("0 3 * * *", timezone="Nowhere/Town")(report)
    assert other.schedules == {}
