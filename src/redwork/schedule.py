"""Periodic jobs: cron expressions and fixed intervals.

Any number of schedulers may run (every worker runs one; `redwork scheduler` runs one
alone), and each tick is enqueued once in total: a tick's job is added by the same
atomic call that claims the tick (enqueue.lua), which refuses a tick no later than the
last one claimed for its schedule. There is no leader to elect or lose. Time is the
server's (TIME), so schedulers on machines with skewed clocks agree on what is due.

Definitions live in the hash `rw:schedules` (name -> JSON), written by the code that
declares them (`@app.periodic`) when a scheduler starts, or at run time
(`app.add_schedule`, `redwork schedules add`). The last tick claimed is kept per queue
in `rw:{queue}:schedules`, beside the queue it enqueues into.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import croniter

from redwork.connection import TRANSIENT, AsyncRedis, Backoff, SyncRedis
from redwork.job import Envelope, check_name, check_priority
from redwork.queue import KEY_ROOT, QUEUES_KEY, NewJob, Op, Queue, arun_many, run_many, text
from redwork.scripts import Code

if TYPE_CHECKING:
    from redwork.app import Redwork

log = logging.getLogger("redwork.schedule")
SCHEDULES_KEY = f"{KEY_ROOT}:schedules"
MISSED_POLICIES = ("skip", "once")
# Schedule names become part of job ids (`<name>:<tick ms>`), which are at most 128
# characters.
MAX_NAME = 100
# How often a scheduler looks for schedules added at run time, at the longest.
RELOAD_SECONDS = 1.0


class ScheduleError(ValueError):
    """A schedule that cannot work: a bad cron expression, interval, zone or name."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A task to enqueue on every tick of a cron expression or of a fixed interval."""

    name: str
    task: str
    cron: str | None = None
    """Five fields (minute hour day month weekday), or six with seconds first."""
    every: float | None = None
    """Seconds between ticks; ticks fall on multiples of it since the Unix epoch."""
    queue: str = "default"
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    missed: str = "skip"
    """After downtime: `skip` the ticks missed, or run `once` for all of them."""
    grace: float = 60.0
    """Seconds a tick may be late and still run on time (not count as missed)."""
    timezone: str = "UTC"
    """The zone a cron expression is read in."""
    priority: int = 0

    def __post_init__(self) -> None:
        check_name("schedule name", self.name)
        if len(self.name) > MAX_NAME:
            raise ScheduleError(f"schedule name {self.name!r} is longer than {MAX_NAME}")
        check_name("queue name", self.queue)
        check_priority("priority", self.priority)
        if (self.cron is None) == (self.every is None):
            raise ScheduleError(f"schedule {self.name}: give a cron expression or every=")
        if self.cron is not None and not croniter.is_valid(
            self.cron, second_at_beginning=_has_seconds(self.cron)
        ):
            raise ScheduleError(f"schedule {self.name}: bad cron expression {self.cron!r}")
        if self.every is not None and not 0.001 <= self.every <= 10 * 365 * 86_400:
            raise ScheduleError(f"schedule {self.name}: every={self.every!r} is out of range")
        if self.missed not in MISSED_POLICIES:
            raise ScheduleError(f"schedule {self.name}: missed must be skip or once")
        if self.grace < 0:
            raise ScheduleError(f"schedule {self.name}: grace must be positive")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ScheduleError(f"schedule {self.name}: unknown zone {self.timezone!r}") from exc
        try:
            orjson.dumps([self.args, self.kwargs])
        except TypeError as exc:
            raise ScheduleError(f"schedule {self.name}: arguments are not JSON: {exc}") from exc

    @property
    def when(self) -> str:
        return f"cron {self.cron}" if self.cron is not None else f"every {self.every:g}s"

    def latest_tick(self, now_ms: int) -> int:
        """The last tick at or before `now_ms`."""
        if self.every is not None:
            period = self._period_ms()
            return now_ms // period * period
        return _ms(self._cron(now_ms + 1).get_prev(datetime))

    def next_tick(self, after_ms: int) -> int:
        """The first tick after `after_ms`."""
        if self.every is not None:
            period = self._period_ms()
            return (after_ms // period + 1) * period
        return _ms(self._cron(after_ms).get_next(datetime))

    def due(self, last_ms: int, now_ms: int) -> tuple[int, bool] | None:
        """The tick to claim now, if one is due, and whether its job runs: a tick later
        than `grace` counts as missed, and runs only under the `once` policy (one run
        however many ticks were missed; older missed ticks are never run)."""
        latest = self.latest_tick(now_ms)
        if latest <= last_ms:
            return None
        on_time = now_ms - latest <= self.grace * 1000
        return latest, on_time or self.missed == "once"

    def envelope(self, tick_ms: int, app: Redwork) -> Envelope:
        """The job of one tick: the task's own options when the app knows the task
        (retries, timeout), its name alone otherwise."""
        job_id = f"{self.name}:{tick_ms}"
        meta = {"schedule": self.name, "tick": tick_ms}
        task = app.tasks.get(self.task)
        if task is not None:
            return task.options(
                queue=self.queue, job_id=job_id, priority=self.priority, meta=meta
            ).prepare(*self.args, **self.kwargs)
        return Envelope(
            id=job_id,
            task=self.task,
            queue=self.queue,
            args=list(self.args),
            kwargs=dict(self.kwargs),
            priority=self.priority,
            meta=meta,
        )

    def to_json(self) -> bytes:
        return orjson.dumps({k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def from_json(cls, data: bytes | str) -> Schedule:
        """Raises ScheduleError (a ValueError) for a definition that cannot work."""
        try:
            fields = orjson.loads(data)
            return cls(**fields)
        except (TypeError, orjson.JSONDecodeError) as exc:
            raise ScheduleError(f"unreadable schedule definition: {exc}") from exc

    def _period_ms(self) -> int:
        assert self.every is not None
        return max(1, round(self.every * 1000))

    def _cron(self, base_ms: int) -> croniter:
        assert self.cron is not None
        base = datetime.fromtimestamp(base_ms / 1000, ZoneInfo(self.timezone))
        return croniter(self.cron, base, second_at_beginning=_has_seconds(self.cron))


def _has_seconds(cron: str) -> bool:
    return len(cron.split()) == 6


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A schedule as `redwork schedules` shows it."""

    schedule: Schedule
    last_tick: int | None
    """The last tick claimed (run, or skipped as missed), server ms; None before the
    first."""
    next_tick: int
    """When it next runs, server ms."""

    def as_dict(self) -> dict[str, Any]:
        fields = orjson.loads(self.schedule.to_json())
        return {**fields, "last_tick": self.last_tick, "next_tick": self.next_tick}


# -- reading and writing definitions ------------------------------------------------


def _server_ms(time_reply: tuple[int, int]) -> int:
    seconds, micros = time_reply
    return int(seconds) * 1000 + int(micros) // 1000


def _baseline(schedule: Schedule, now_ms: int) -> Op[Any]:
    """A new schedule's first tick is the first after it was added: none before runs."""
    return Op(
        lambda r: r, command=("HSETNX", Queue(schedule.queue).schedules, schedule.name, now_ms)
    )


def _storing(schedules: list[Schedule], now_ms: int) -> list[Op[Any]]:
    ops: list[Op[Any]] = []
    for s in schedules:
        ops.append(Op(lambda r: r, command=("HSET", SCHEDULES_KEY, s.name, s.to_json())))
        ops.append(_baseline(s, now_ms))
        ops.append(Op(lambda r: r, command=("SADD", QUEUES_KEY, s.queue)))
    return ops


def add_schedules(client: SyncRedis, schedules: list[Schedule]) -> None:
    """Store schedules (a definition with the same name is replaced)."""
    run_many(client, _storing(schedules, _server_ms(client.time())))


async def aadd_schedules(client: AsyncRedis, schedules: list[Schedule]) -> None:
    await arun_many(client, _storing(schedules, _server_ms(await client.time())))


def remove_schedule(client: SyncRedis, name: str) -> bool:
    """Delete a schedule; False when there was none of that name. (A schedule declared
    in code comes back when a scheduler of that code starts.)"""
    raw = client.hget(SCHEDULES_KEY, name)
    if raw is None:
        return False
    schedule = Schedule.from_json(raw)
    client.hdel(SCHEDULES_KEY, name)
    client.hdel(Queue(schedule.queue).schedules, name)
    return True


def _parse_all(raw: Mapping[Any, Any]) -> list[Schedule]:
    schedules = []
    for name, data in raw.items():
        try:
            schedules.append(Schedule.from_json(data))
        except ValueError as exc:
            log.error("schedule %s is ignored: %s", text(name), exc)
    return schedules


def _last_ticks(raw: Mapping[Any, Any]) -> tuple[list[Schedule], list[Op[list[int | None]]]]:
    """The stored definitions, grouped by queue, and one HMGET per queue of their last
    ticks: the replies, flattened, follow the schedules' order."""
    by_queue: dict[str, list[Schedule]] = defaultdict(list)
    for s in _parse_all(raw):
        by_queue[s.queue].append(s)
    ops = [
        Op(
            lambda r: [None if v is None else int(v) for v in r],
            command=("HMGET", Queue(queue).schedules, *(s.name for s in queued)),
        )
        for queue, queued in by_queue.items()
    ]
    return [s for queued in by_queue.values() for s in queued], ops


def list_schedules(client: SyncRedis) -> list[ScheduleState]:
    now = _server_ms(client.time())
    schedules, ops = _last_ticks(client.hgetall(SCHEDULES_KEY))
    lasts = [v for reply in run_many(client, ops) for v in reply]
    states = [_state(s, last, now) for s, last in zip(schedules, lasts, strict=True)]
    return sorted(states, key=lambda state: state.schedule.name)


def _state(schedule: Schedule, last: int | None, now_ms: int) -> ScheduleState:
    # Before its first tick, a schedule's entry holds when it was stored: not a tick.
    tick = last if last is not None and schedule.latest_tick(last) == last else None
    return ScheduleState(schedule, tick, schedule.next_tick(now_ms))


# -- the scheduler -------------------------------------------------------------------


class Scheduler:
    """Enqueues the ticks of every schedule as they fall due. Run as many as you like."""

    def __init__(self, app: Redwork, ttl: int, idempotency_ms: int) -> None:
        """`ttl`: seconds a job replaced under its uniqueness key is kept (enqueue's)."""
        self.app = app
        self.ttl = ttl
        self.idempotency_ms = idempotency_ms
        self.enqueued = 0

    async def run(self, client: AsyncRedis, stopped: asyncio.Event) -> None:
        backoff = Backoff()
        declared = list(self.app.schedules.values())
        registered = not declared
        while not stopped.is_set():
            try:
                if not registered:
                    await aadd_schedules(client, declared)
                    registered = True
                wait = await self.run_due(client)
                backoff.reset()
            except TRANSIENT as exc:
                wait = backoff.next("scheduler", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), wait)

    async def run_due(self, client: AsyncRedis) -> float:
        """Claim (and enqueue) every tick that is due; returns seconds until the next."""
        now = _server_ms(await client.time())
        schedules, reads = _last_ticks(await client.hgetall(SCHEDULES_KEY))
        lasts = [v for reply in await arun_many(client, reads) for v in reply]
        ops: list[Op[Any]] = []
        wake = now + int(RELOAD_SECONDS * 1000)
        for schedule, last in zip(schedules, lasts, strict=True):
            wake = min(wake, schedule.next_tick(now))
            if last is None:  # defined by another tool: starts from now
                ops.append(_baseline(schedule, now))
                continue
            due = schedule.due(last, now)
            if due is not None:
                ops.append(self._claim(schedule, *due))
        for reply in await arun_many(client, ops):
            if isinstance(reply, list):
                self.enqueued += reply.count(Code.OK)
        return max(0.001, (wake - now) / 1000)

    def _claim(self, schedule: Schedule, tick: int, runs: bool) -> Op[Any]:
        queue = Queue(schedule.queue)
        jobs = []
        if runs:
            envelope = schedule.envelope(tick, self.app)
            jobs.append(NewJob.of(envelope, self.app.settings.max_payload))
        else:
            log.warning("schedule %s: tick %d missed (policy skip)", schedule.name, tick)
        return queue.enqueue(jobs, self.idempotency_ms, self.ttl, tick=(schedule.name, tick))
