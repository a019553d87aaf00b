"""The Redwork application: its settings, its task registry and the `@app.task`
decorator, and job handles for what was enqueued."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

import orjson

from redwork.client import Client
from redwork.context import running_job
from redwork.errors import LeaseLost, RedworkError, SerializationError, UnknownTask
from redwork.job import (
    MAX_DELAY,
    Envelope,
    JobEvent,
    JobRecord,
    JobState,
    RetryPolicy,
    check_key,
    check_name,
    check_priority,
    check_unique_policy,
    new_job_id,
)
from redwork.limits import Limit, read_limits, set_limit
from redwork.queue import Counts, Op
from redwork.registry import WorkerInfo, live_workers
from redwork.schedule import (
    Schedule,
    ScheduleError,
    ScheduleState,
    add_schedules,
    list_schedules,
    remove_schedule,
)
from redwork.scripts import Code
from redwork.settings import Settings
from redwork.state import StateStore
from redwork.workflow import Item, Workflow, WorkflowRecord, WorkflowStatus, plan

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class JobHandle:
    """A job that was enqueued: look it up or wait for its result, sync or async."""

    client: Client
    queue: str
    id: str

    def info(self) -> JobRecord:
        return self.client.job(self.queue, self.id)

    def status(self) -> JobState:
        return self.info().state

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job to end; its result, or JobFailed (JobCancelled). ResultTimeout
        past `timeout`."""
        return self.client.result(self.queue, self.id, timeout)

    def cancel(self) -> str:
        """Cancel the job: 'cancelled' when it had not started (it never will),
        'cancelling' when it is running (its worker aborts it; it ends as cancelled).
        NotCancellable once it has ended."""
        return self.client.cancel(self.queue, self.id)

    async def ainfo(self) -> JobRecord:
        return await self.client.ajob(self.queue, self.id)

    async def astatus(self) -> JobState:
        return (await self.ainfo()).state

    async def aresult(self, timeout: float | None = None) -> Any:
        return await self.client.aresult(self.queue, self.id, timeout)

    async def acancel(self) -> str:
        return await self.client.acancel(self.queue, self.id)


@dataclass(slots=True)
class WorkflowHandle:
    """A workflow that was submitted: its status and nodes, its result, cancel it."""

    client: Client
    queue: str
    id: str

    def info(self) -> WorkflowRecord:
        return self.client.workflow(self.queue, self.id)

    def status(self) -> WorkflowStatus:
        return self.info().status

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the workflow to end; the result of its last job (of each of its last
        jobs, as a list, when several end it), or JobFailed. ResultTimeout past
        `timeout`."""
        return self.client.wait_workflow(self.queue, self.id, timeout).result()

    def cancel(self) -> int:
        """Cancel every job that has not started (jobs running finish, releasing
        nothing); returns how many were cancelled."""
        return self.client.cancel_workflow(self.queue, self.id)

    def job(self, job_id: str) -> JobHandle:
        return JobHandle(self.client, self.queue, job_id)

    async def ainfo(self) -> WorkflowRecord:
        return await self.client.aworkflow(self.queue, self.id)

    async def astatus(self) -> WorkflowStatus:
        return (await self.ainfo()).status

    async def aresult(self, timeout: float | None = None) -> Any:
        return (await self.client.await_workflow(self.queue, self.id, timeout)).result()

    async def acancel(self) -> int:
        return await self.client.acancel_workflow(self.queue, self.id)


@dataclass(frozen=True)
class TaskOptions:
    queue: str = "default"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    job_id: str | None = None
    key: str | None = None
    idempotency_key: str | None = None
    meta: dict[str, Any] | None = None
    priority: int = 0
    retry_priority: int | None = None
    countdown: float | None = None
    eta: datetime | float | None = None
    unique_key: str | None = None
    unique: str = "reject"
    group: str | None = None
    limit: Limit | None = None
    """The task's own rate and concurrency limit (stored by its workers)."""


class Task(Generic[P, R]):
    """A function registered with an app. Calling it runs it here; `enqueue` runs it on
    a worker."""

    def __init__(self, app: Redwork, fn: Callable[P, R], name: str, options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.defaults = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def options(self, **changes: Any) -> Task[P, R]:
        """This task with other enqueue options: `send_email.options(queue="mail").enqueue(...)`.

        queue, timeout, retries, backoff, meta; job_id (an id of your own: enqueueing it
        twice adds one job); key (jobs of one key run one at a time, in enqueue order);
        idempotency_key (a second enqueue with the same key within `idempotency_ttl`
        adds nothing and gives back the first job); priority (0-9, higher first) and
        retry_priority (the priority of its retries); countdown (seconds) or eta (a
        datetime, or a Unix time in seconds): when it may start; unique_key with unique=
        "reject" or "replace"; group (the group it counts in for its queue's group limit)
        (see docs/scheduling.md)."""
        retry = self.defaults.retry
        if "retries" in changes:
            retry = replace(retry, max_attempts=count("retries", changes.pop("retries")) + 1)
        if "backoff" in changes:
            retry = replace(retry, backoff=number("backoff", changes.pop("backoff")))
        if changes.get("timeout") is not None:
            changes["timeout"] = number("timeout", changes["timeout"], low=0.001)
        task = Task(self.app, self.fn, self.name, replace(self.defaults, retry=retry, **changes))
        return task

    def prepare(self, *args: P.args, **kwargs: P.kwargs) -> Envelope:
        """The job document for this call, not yet enqueued (for `app.enqueue_many`)."""
        o = self.defaults
        return Envelope(
            id=new_job_id() if o.job_id is None else check_name("job id", o.job_id),
            task=self.name,
            queue=o.queue,
            args=list(args),
            kwargs=dict(kwargs),
            retry=o.retry,
            timeout=o.timeout,
            key=None if o.key is None else check_key("key", o.key),
            idempotency_key=(
                None
                if o.idempotency_key is None
                else check_key("idempotency key", o.idempotency_key)
            ),
            meta=o.meta or {},
            priority=check_priority("priority", o.priority),
            retry_priority=(
                None
                if o.retry_priority is None
                else check_priority("retry priority", o.retry_priority)
            ),
            unique_key=None if o.unique_key is None else check_key("unique key", o.unique_key),
            unique_policy=check_unique_policy(o.unique),
            group=None if o.group is None else check_key("group", o.group),
            delay_ms=_delay_ms(o.countdown, o.eta),
        )

    def s(self, *args: Any, **kwargs: Any) -> Envelope:
        """A job of this task for a workflow (chain, group, chord, Workflow.add). Not
        typed with the task's parameters: a chain step or a chord callback is given its
        input as first argument, before these."""
        return self.prepare(*args, **kwargs)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        return self.app.enqueue_many([self.prepare(*args, **kwargs)])[0]

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        return (await self.app.aenqueue_many([self.prepare(*args, **kwargs)]))[0]


def _delay_ms(countdown: float | None, eta: datetime | float | None) -> int | None:
    """Milliseconds from now until a job may start, or None to start at once. An eta
    is turned into a delay here: the server counts it on its own clock, which every
    worker shares."""
    if countdown is not None and eta is not None:
        raise ValueError("give countdown or eta, not both")
    if eta is not None:
        at = eta.timestamp() if isinstance(eta, datetime) else number("eta", eta)
        ahead = at - time.time()
        if ahead > MAX_DELAY:
            raise ValueError(f"eta {eta!r} is more than {MAX_DELAY // 86_400} days ahead")
        return max(0, math.ceil(ahead * 1000))
    if countdown is None:
        return None
    seconds = number("countdown", countdown, low=-math.inf, high=MAX_DELAY)
    return max(0, math.ceil(seconds * 1000))


def number(option: str, value: Any, low: float = 0.0, high: float = math.inf) -> float:
    """value as a float if it is a finite number within [low, high]; else a TypeError or
    ValueError that names the option."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{option} must be a number, not {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{option} {value!r} is not a finite number from {low:g} to {high:g}")
    return float(value)


def count(option: str, value: Any) -> int:
    """value if it is a whole number >= 0; else a TypeError or ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{option} must be a whole number, not {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{option} {value!r} is negative")
    return value


class TaskDecorator(Protocol):
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class Redwork:
    """One application: `app = Redwork("shop")`, then `@app.task` on functions.

    Settings come from keyword arguments, else REDWORK_* environment variables, else
    defaults (see redwork.settings.Settings); with no redis_url the embedded Valkey
    server in data_dir is used, started if it is not running."""

    def __init__(
        self, name: str = "redwork", *, settings: Settings | None = None, **overrides: Any
    ) -> None:
        self.name = name
        self.settings = settings.replace(**overrides) if settings else Settings.load(**overrides)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        """Periodic jobs declared in code (@app.periodic); stored when a scheduler starts."""
        self.client = Client(self.settings)

    def configure(self, settings: Settings) -> None:
        """Use other settings from now on (tests, or an app configured after import);
        connections made with the old ones are dropped."""
        self.client.close()
        self.settings = settings
        self.client = Client(settings)

    @overload
    def task(self, fn: Callable[P, R]) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str = "default",
        retries: int = 0,
        timeout: float | None = None,
        backoff: float = 1.0,
        backoff_max: float = 300.0,
        priority: int = 0,
        retry_priority: int | None = None,
        concurrency: int | None = None,
        rate_limit: str | None = None,
    ) -> TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str = "default",
        retries: int = 0,
        timeout: float | None = None,
        backoff: float = 1.0,
        backoff_max: float = 300.0,
        priority: int = 0,
        retry_priority: int | None = None,
        concurrency: int | None = None,
        rate_limit: str | None = None,
    ) -> Any:
        """Register a function (plain or `async def`) as a task.

        retries: extra attempts after a failure, with exponential backoff from `backoff`
        seconds up to `backoff_max`; timeout: seconds one attempt may run; priority:
        0-9, higher first; retry_priority: the priority its retries run at;
        concurrency: at most this many of its jobs run at once, across every worker;
        rate_limit: at most so many start per period, "50/s" (see docs/scheduling.md)."""
        options = TaskOptions(
            queue=check_name("queue name", queue),
            retry=RetryPolicy(
                max_attempts=count("retries", retries) + 1,
                backoff=number("backoff", backoff),
                backoff_max=number("backoff_max", backoff_max),
            ),
            timeout=None if timeout is None else number("timeout", timeout, low=0.001),
            priority=check_priority("priority", priority),
            retry_priority=(
                None if retry_priority is None else check_priority("retry priority", retry_priority)
            ),
            limit=(
                Limit.of(concurrency, rate_limit)
                if concurrency is not None or rate_limit is not None
                else None
            ),
        )

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or f"{f.__module__}.{f.__qualname__}"
            task = Task(self, f, task_name, options)
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(
        self,
        cron: str | None = None,
        *,
        every: float | timedelta | None = None,
        name: str | None = None,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        missed: str = "skip",
        grace: float = 60.0,
        timezone: str = "UTC",
    ) -> Callable[[Callable[..., Any]], Task[Any, Any]]:
        """Run a task on a schedule: `@app.periodic("*/5 * * * *")` (cron: five fields,
        or six with seconds first) or `@app.periodic(every=30)` (seconds, or a
        timedelta). Put it above `@app.task(...)` to give the task options, or use it
        alone on a plain function. Each tick is enqueued once however many workers and
        schedulers run; after downtime the ticks missed are skipped (`missed="skip"`)
        or run once (`missed="once"`). The schedule's name defaults to the task's."""

        def register(target: Callable[..., Any]) -> Task[Any, Any]:
            task = target if isinstance(target, Task) else self.task(target)
            schedule = Schedule(
                name=name or task.name.rsplit(".", 1)[-1],
                task=task.name,
                cron=cron,
                every=every.total_seconds() if isinstance(every, timedelta) else every,
                queue=queue or task.defaults.queue,
                args=list(args),
                kwargs=dict(kwargs or {}),
                missed=missed,
                grace=grace,
                timezone=timezone,
                priority=task.defaults.priority,
            )
            if schedule.name in self.schedules:
                raise ScheduleError(
                    f"two periodic jobs are named {schedule.name!r}: give one a name="
                )
            self.schedules[schedule.name] = schedule
            return task

        return register

    def add_schedule(self, schedule: Schedule) -> None:
        """Store a schedule at run time (one of the same name is replaced); every
        scheduler picks it up within a second."""
        add_schedules(self.client.redis(), [schedule])

    def remove_schedule(self, name: str) -> bool:
        """Delete a schedule; False if there was none. One declared in code returns when
        a scheduler with that code starts: remove it from the code too."""
        return remove_schedule(self.client.redis(), name)

    def list_schedules(self) -> list[ScheduleState]:
        """Every stored schedule with its last and next tick, by name."""
        return list_schedules(self.client.redis())

    def set_limit(
        self,
        queue: str = "default",
        scope: str = "queue",
        *,
        concurrency: int | None = None,
        rate: str | None = None,
    ) -> None:
        """Limit a queue's jobs, across every worker: `scope` "queue" (all of them),
        "group" (each group of jobs enqueued with the same group=, separately) or
        "task:<task name>". concurrency: at most so many running at once; rate: at most
        so many starting per period ("50/s", "10/5s", "1000/h"). Jobs over a limit
        wait, parked, until there is room. Replaces the scope's previous limit."""
        limit = Limit.of(concurrency, rate)
        self.client.run(set_limit(self.client.queue(queue), scope, limit))

    def clear_limit(self, queue: str = "default", scope: str = "queue") -> None:
        """Remove a scope's limit; the jobs it had parked go back to the queue."""
        self.client.run(set_limit(self.client.queue(queue), scope, None))

    def limits(self, queue: str = "default") -> dict[str, Limit]:
        """The limits of a queue, by scope."""
        result: dict[str, Limit] = self.client.run(read_limits(self.client.queue(queue)))
        return result

    def counts(self, queue: str = "default") -> Counts:
        """How many jobs a queue has in each state now, and its totals (`stats`)."""
        counts: Counts = self.client.run(self.client.queue(queue).counts())
        return counts

    def failed_jobs(self, queue: str = "default", limit: int = 50) -> list[JobRecord]:
        """The most recent jobs of a queue's failed store (its dead letters), newest
        first; `retry_failed` sends them back to the queue."""
        return self.client.failed_jobs(queue, limit)

    def retry_failed(self, queue: str = "default", job_ids: Sequence[str] = ()) -> int:
        """Send failed jobs back to their queue (all of them when no ids are given) with
        fresh attempts; returns how many went back."""
        return self.client.retry_failed(queue, job_ids)

    def events(
        self, queues: Sequence[str] = ("default",), idle: float | None = None
    ) -> Generator[JobEvent, None, None]:
        """Follow the events of `queues` as they happen (enqueued, active, completed,
        failed, progress, ...; docs/protocol.md#events), until `idle` seconds pass without
        one. Live only: nothing from before the first event is asked for is replayed."""
        return self.client.events(queues, idle)

    def aevents(
        self, queues: Sequence[str] = ("default",), idle: float | None = None
    ) -> AsyncGenerator[JobEvent, None]:
        """The async twin of events(): `async for event in app.aevents(): ...`."""
        return self.client.aevents(queues, idle)

    def workers(self) -> list[WorkerInfo]:
        """The live workers (of every queue), as their last heartbeat described them."""
        return live_workers(self.client.redis())

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(
                f"no task named {name!r} is registered with app {self.name!r}"
            ) from None

    def enqueue_many(self, envelopes: Iterable[Envelope]) -> list[JobHandle]:
        """Enqueue many jobs in as few round trips as possible (one per 1,000 per queue).
        A job whose idempotency key was used already gets the handle of the first job."""
        batch = list(envelopes)
        ids = self.client.enqueue(batch)
        return [JobHandle(self.client, e.queue, i) for e, i in zip(batch, ids, strict=True)]

    async def aenqueue_many(self, envelopes: Iterable[Envelope]) -> list[JobHandle]:
        batch = list(envelopes)
        ids = await self.client.aenqueue(batch)
        return [JobHandle(self.client, e.queue, i) for e, i in zip(batch, ids, strict=True)]

    def job(self, job_id: str, queue: str = "default") -> JobHandle:
        return JobHandle(self.client, queue, job_id)

    def submit(
        self,
        workflow: Item,
        *,
        workflow_id: str | None = None,
        queue: str | None = None,
        name: str = "",
    ) -> WorkflowHandle:
        """Submit a workflow (a chain, group, chord or Workflow) in one atomic call.

        Each job runs in its own queue (its task's, or the one given with
        .options(queue=...)), or every job in `queue` when it is given; the workflow is
        recorded in the first job's queue (or `queue`), which its handle names. A cycle
        or an unknown dependency raises WorkflowError, storing nothing; a workflow_id
        that exists adds nothing (a safe retry)."""
        graph = workflow if isinstance(workflow, Workflow) else Workflow(workflow)
        with self.client.traced([node.envelope for node in graph.nodes]):
            checked = plan(graph, workflow_id, queue, self.settings.max_payload)
            self.client.submit_workflow(checked, name)
        return WorkflowHandle(self.client, checked.queue, checked.id)

    async def asubmit(
        self,
        workflow: Item,
        *,
        workflow_id: str | None = None,
        queue: str | None = None,
        name: str = "",
    ) -> WorkflowHandle:
        graph = workflow if isinstance(workflow, Workflow) else Workflow(workflow)
        with self.client.traced([node.envelope for node in graph.nodes]):
            checked = plan(graph, workflow_id, queue, self.settings.max_payload)
            await self.client.asubmit_workflow(checked, name)
        return WorkflowHandle(self.client, checked.queue, checked.id)

    def workflow(self, workflow_id: str, queue: str = "default") -> WorkflowHandle:
        return WorkflowHandle(self.client, queue, workflow_id)

    def report_progress(self, progress: Any) -> None:
        """From a running task: record how far it has got (any JSON value, e.g.
        {"done": 40, "of": 100}); shown by the API and the dashboard, and published as
        a `progress` event. Refused (LeaseLost) once the job is no longer this run's."""
        self.client.run(self._progress(progress))

    async def areport_progress(self, progress: Any) -> None:
        await self.client.arun(self._progress(progress))

    def _progress(self, progress: Any) -> Op[None]:
        job = running_job()
        if job is None:
            raise RedworkError("report_progress() is for code running in a job")
        try:
            data = orjson.dumps(progress)
        except TypeError as exc:
            raise SerializationError(f"progress is not JSON: {exc}") from exc
        op = self.client.queue(job.queue).progress(job.id, job.token, data)

        def check(code: Code) -> None:
            if code is not Code.OK:
                raise LeaseLost(f"job {job.id} is no longer this run's; progress refused")

        return Op(lambda reply: check(op.parse(reply)), op.script, op.keys, op.args)

    def state(self, name: str, *, key_prefix: str | None = None) -> StateStore:
        """A versioned state store (see redwork.state). Its entries are the Redis hashes
        `<key_prefix>||<key>`; the prefix defaults to the app's name, as Dapr's does, so
        the stores of one app share their keys unless given a prefix of their own."""
        return StateStore(self, name, self.name if key_prefix is None else key_prefix)
