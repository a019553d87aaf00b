"""The front doors to a redwork deployment: enqueue, look up and wait for jobs, from
plain code (sync methods) or from asyncio (the same names prefixed with `a`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from redwork import connection, tracing
from redwork.connection import AsyncRedis, SyncRedis
from redwork.errors import (
    JobCancelled,
    JobFailed,
    JobNotFound,
    NotCancellable,
    ResultTimeout,
    WorkflowError,
    WorkflowNotFound,
)
from redwork.job import Envelope, JobEvent, JobRecord, JobState
from redwork.queue import (
    QUEUES_KEY,
    Durability,
    NewJob,
    Op,
    Queue,
    arun,
    arun_durably,
    arun_many,
    run,
    run_durably,
    run_many,
    text,
)
from redwork.scripts import Code
from redwork.settings import Settings
from redwork.workflow import Plan, WorkflowRecord, adrive, drive, relay

T = TypeVar("T")


class _Ends(Protocol):
    """A record that can be waited for: a job's, or a workflow's."""

    @property
    def is_final(self) -> bool: ...

    @property
    def status_text(self) -> str: ...


_Ending = TypeVar("_Ending", bound=_Ends)
log = logging.getLogger("redwork.client")
# Jobs per enqueue script call: large enough to amortise the round trip, small enough
# not to hold the server for more than a few milliseconds.
ENQUEUE_CHUNK = 1000
# A queue's first chunk is smaller: its workers start on a large batch a few milliseconds
# after the call begins, instead of once the first 1,000 jobs are stored.
FIRST_CHUNK = 100


def _chunks(jobs: Sequence[tuple[Queue, NewJob]]) -> Iterable[tuple[Queue, list[NewJob]]]:
    by_queue: dict[str, tuple[Queue, list[NewJob]]] = {}
    for queue, job in jobs:
        by_queue.setdefault(queue.name, (queue, []))[1].append(job)
    for queue, queued in by_queue.values():
        yield queue, queued[:FIRST_CHUNK]
        for start in range(FIRST_CHUNK, len(queued), ENQUEUE_CHUNK):
            yield queue, queued[start : start + ENQUEUE_CHUNK]


class Client:
    """Connections are opened on first use; the async one is bound to the event loop
    that first uses it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._url: str | None = None
        self._sync: SyncRedis | None = None
        self._async: AsyncRedis | None = None
        self._async_connecting = asyncio.Lock()
        self._queues: dict[str, Queue] = {}
        self._known_queues: set[str] = set()
        self._lock = threading.Lock()
        self._tracer = tracing.tracer(settings.tracing)

    @property
    def url(self) -> str:
        with self._lock:
            if self._url is None:
                self._url = connection.resolve_url(self.settings)
            return self._url

    @property
    def cluster(self) -> bool:
        """Whether the server is a Redis Cluster (by the URL's form)."""
        return connection.parse_target(self.url).shape == "cluster"

    def queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = Queue(name)
        return queue

    # -- sync -------------------------------------------------------------------------

    def redis(self) -> SyncRedis:
        if self._sync is None:
            client = connection.sync_client(self.url, self.settings)
            connection.check_server(self._retrying(client.info, "connect"))
            self._sync = client
        return self._sync

    def run(self, op: Op[Any]) -> Any:
        return run(self.redis(), op)

    def read(self, ops: Sequence[Op[Any]], what: str) -> list[Any]:
        """Run read-only ops (pipelined), retrying while the server is away for up to
        reconnect_for: unlike a write, a read whose reply was lost is safe to repeat."""
        return self._retrying(partial(run_many, self.redis(), ops), what)

    def write(self, ops: Sequence[Op[T]], what: str) -> list[T]:
        """Run ops that store jobs (each safe to repeat: a job or workflow id is stored
        once), retrying while the server is away; with durable acknowledgement
        (ack_replicas, ack_fsync), only once the server has made them durable."""
        client, durability = self.redis(), Durability.asked(self.settings)
        if durability is None:
            return self._retrying(partial(run_many, client, ops), what)
        return self._retrying(partial(run_durably, client, ops, durability), what)

    def enqueue(self, envelopes: Sequence[Envelope]) -> list[str]:
        """Store jobs; returns their ids. A job whose id exists already is not added
        again (the id is returned all the same); nor is one whose idempotency key was
        used within the retention window: the id of the job that used it is returned."""
        with self.traced(envelopes):
            plan = self._plan_enqueue(envelopes)
            if plan.new_queues:
                self.redis().sadd(QUEUES_KEY, *plan.new_queues)
            replies = self.write(plan.ops, "enqueue")
        return self._enqueued(plan, replies)

    def job(self, queue: str, job_id: str) -> JobRecord:
        record: JobRecord | None = self.run(self.queue(queue).job(job_id))
        if record is None:
            raise JobNotFound(f"no job {job_id} in queue {queue}")
        return record

    def wait(self, queue: str, job_id: str, timeout: float | None = None) -> JobRecord:
        """Block until the job has ended (completed, failed, cancelled or skipped);
        listens on the job's channel rather than polling."""
        return self._wait_until_final(
            self.queue(queue).job_channel(job_id),
            partial(self.job, queue, job_id),
            _Deadline(f"job {job_id}", timeout, time.monotonic),
        )

    def _wait_until_final(
        self, channel: str, read: Callable[[], _Ending], deadline: _Deadline
    ) -> _Ending:
        record = read()
        if record.is_final:  # ended already: no subscription, which takes a connection
            return record
        pubsub = self.redis().pubsub()  # type: ignore[no-untyped-call, unused-ignore]
        try:
            pubsub.subscribe(channel)
            # The subscription must be in force before the state is read: an end published
            # in between would otherwise be missed.
            while not _confirms_subscription(
                pubsub.get_message(timeout=self.settings.socket_timeout)
            ):
                pass
            while True:
                record = read()
                if record.is_final:
                    return record
                pubsub.get_message(timeout=deadline.next_wait(record.status_text))
        finally:
            pubsub.close()

    def result(self, queue: str, job_id: str, timeout: float | None = None) -> Any:
        return _result_of(self.wait(queue, job_id, timeout))

    def events(
        self, queues: Sequence[str], idle: float | None = None
    ) -> Generator[JobEvent, None, None]:
        """Follow the events of `queues` as they happen, until `idle` seconds pass without
        one (None: for ever). They come over pub/sub: events from before the first one
        is asked for, or from while the connection is down, are not replayed (the
        queue's `events` stream keeps a log: docs/protocol.md#events)."""
        pubsub = self.redis().pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]
        try:
            pubsub.subscribe(*[self.queue(name).events for name in queues])
            clock = _IdleClock(idle, time.monotonic)
            while (wait := clock.remaining()) > 0:
                message = pubsub.get_message(timeout=wait)
                if message is not None and (event := _event_of(message)) is not None:
                    clock.restart()
                    yield event
        finally:
            pubsub.close()

    def failed_jobs(self, queue: str, limit: int = 50, offset: int = 0) -> list[JobRecord]:
        """The failed store of a queue, most recent first."""
        q = self.queue(queue)
        ids: list[str] = self.run(q.failed_ids(offset, offset + limit - 1))
        records: list[JobRecord | None] = self.read([q.job(i) for i in ids], "read failed jobs")
        return [r for r in records if r is not None]  # a job purged meanwhile is left out

    def cancel(self, queue: str, job_id: str) -> str:
        """Cancel a job: one that has not started is withdrawn ('cancelled' is returned:
        it never starts); a running one is aborted by its worker ('cancelling': it ends
        as cancelled shortly). NotCancellable once it has ended, JobNotFound if there is
        no such job."""
        cancelled = _cancelled(job_id, self.run(self._cancel(queue, job_id)))
        self.relay([queue])  # a workflow's node: its end, or the cancel, goes on
        return cancelled

    def submit_workflow(self, plan: Plan, name: str = "") -> bool:
        """Store a checked workflow (see redwork.workflow.plan); submitting one whose id
        exists adds nothing (returns False)."""
        new_queues = set(plan.queues) - self._known_queues
        if new_queues:
            self.redis().sadd(QUEUES_KEY, *new_queues)
            self._known_queues |= new_queues
        op = self._submit(plan, name)
        submitted = _submitted(plan, self.write([op], "submit a workflow")[0])
        if len(plan.queues) > 1:
            self.relay([plan.queue])  # its first jobs of other queues
        return submitted

    def workflow(self, queue: str, workflow_id: str) -> WorkflowRecord:
        reply = self.run(self.queue(queue).workflow(workflow_id))
        record = _workflow_found(queue, workflow_id, reply)
        reads = record.live_reads()
        return record.with_live(self.read(reads, "read a workflow")) if reads else record

    def retry_failed(self, queue: str, job_ids: Sequence[str] = ()) -> int:
        """Send failed jobs (all when none are named) back to the queue with a fresh
        attempt budget; returns how many went back."""
        count: int = self.run(self.queue(queue).retry_failed(job_ids))
        self.relay([queue])
        return count

    def relay(self, queues: Iterable[str]) -> int:
        """Deliver the messages the queues' outboxes hold for workflows across queues
        (see docs/workflows.md); returns how many. Safe at any time: workers do it too,
        after every transition that writes one and on each recovery check."""
        steps = relay(queues, self.settings.result_ttl)
        return drive(steps, lambda ops: self.write(ops, "deliver workflow messages"))

    def wait_workflow(
        self, queue: str, workflow_id: str, timeout: float | None = None
    ) -> WorkflowRecord:
        """Block until the workflow has ended (it publishes its status on its key)."""
        return self._wait_until_final(
            self.queue(queue).workflow_key(workflow_id),
            partial(self.workflow, queue, workflow_id),
            _Deadline(f"workflow {workflow_id}", timeout, time.monotonic),
        )

    def cancel_workflow(self, queue: str, workflow_id: str) -> int:
        """Cancel every job of the workflow that has not started; returns how many.
        NotCancellable once it has ended, WorkflowNotFound if there is none."""
        reply = self.run(self._cancel_workflow(queue, workflow_id))
        self.relay([queue])  # withdraws its jobs sent to other queues
        return _workflow_cancelled(workflow_id, reply)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    # -- async ------------------------------------------------------------------------

    async def aredis(self) -> AsyncRedis:
        if self._async is None:
            # Callers arriving together while the first connects wait for its client
            # rather than each opening one (and all but the last leaking).
            async with self._async_connecting:
                if self._async is None:
                    url = self._url or await asyncio.to_thread(lambda: self.url)
                    assert url is not None
                    client = connection.async_client(url, self.settings)
                    try:
                        connection.check_server(await self._aretrying(client.info, "connect"))
                    except BaseException:
                        await client.aclose()
                        raise
                    self._async = client
        return self._async

    async def arun(self, op: Op[Any]) -> Any:
        return await arun(await self.aredis(), op)

    async def aread(self, ops: Sequence[Op[Any]], what: str) -> list[Any]:
        client = await self.aredis()
        return await self._aretrying(partial(arun_many, client, ops), what)

    async def awrite(self, ops: Sequence[Op[T]], what: str) -> list[T]:
        """The async twin of write()."""
        client, durability = await self.aredis(), Durability.asked(self.settings)
        if durability is None:
            return await self._aretrying(partial(arun_many, client, ops), what)
        return await self._aretrying(partial(arun_durably, client, ops, durability), what)

    async def aenqueue(self, envelopes: Sequence[Envelope]) -> list[str]:
        with self.traced(envelopes):
            plan = self._plan_enqueue(envelopes)
            client = await self.aredis()
            if plan.new_queues:
                await client.sadd(QUEUES_KEY, *plan.new_queues)
            replies = await self.awrite(plan.ops, "enqueue")
        return self._enqueued(plan, replies)

    async def afailed_jobs(self, queue: str, limit: int = 50, offset: int = 0) -> list[JobRecord]:
        """The async twin of failed_jobs()."""
        q = self.queue(queue)
        ids: list[str] = await self.arun(q.failed_ids(offset, offset + limit - 1))
        records: list[JobRecord | None] = await self.aread(
            [q.job(i) for i in ids], "read failed jobs"
        )
        return [r for r in records if r is not None]

    async def aevents(
        self, queues: Sequence[str], idle: float | None = None
    ) -> AsyncGenerator[JobEvent, None]:
        """The async twin of events()."""
        client = await self.aredis()
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*[self.queue(name).events for name in queues])
            clock = _IdleClock(idle, time.monotonic)
            while (wait := clock.remaining()) > 0:
                message = await pubsub.get_message(timeout=wait)
                if message is not None and (event := _event_of(message)) is not None:
                    clock.restart()
                    yield event
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    async def ajob(self, queue: str, job_id: str) -> JobRecord:
        record: JobRecord | None = await self.arun(self.queue(queue).job(job_id))
        if record is None:
            raise JobNotFound(f"no job {job_id} in queue {queue}")
        return record

    async def await_job(self, queue: str, job_id: str, timeout: float | None = None) -> JobRecord:
        """The async twin of wait()."""
        return await self._await_until_final(
            self.queue(queue).job_channel(job_id),
            partial(self.ajob, queue, job_id),
            _Deadline(f"job {job_id}", timeout, asyncio.get_running_loop().time),
        )

    async def _await_until_final(
        self, channel: str, read: Callable[[], Awaitable[_Ending]], deadline: _Deadline
    ) -> _Ending:
        record = await read()
        if record.is_final:  # ended already: no subscription, which takes a connection
            return record
        client = await self.aredis()
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
            wait = self.settings.socket_timeout
            while not _confirms_subscription(await pubsub.get_message(timeout=wait)):
                pass
            while True:
                record = await read()
                if record.is_final:
                    return record
                await pubsub.get_message(timeout=deadline.next_wait(record.status_text))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    async def aresult(self, queue: str, job_id: str, timeout: float | None = None) -> Any:
        return _result_of(await self.await_job(queue, job_id, timeout))

    async def acancel(self, queue: str, job_id: str) -> str:
        cancelled = _cancelled(job_id, await self.arun(self._cancel(queue, job_id)))
        await self.arelay([queue])
        return cancelled

    async def asubmit_workflow(self, plan: Plan, name: str = "") -> bool:
        client = await self.aredis()
        new_queues = set(plan.queues) - self._known_queues
        if new_queues:
            await client.sadd(QUEUES_KEY, *new_queues)
            self._known_queues |= new_queues
        op = self._submit(plan, name)
        submitted = _submitted(plan, (await self.awrite([op], "submit a workflow"))[0])
        if len(plan.queues) > 1:
            await self.arelay([plan.queue])
        return submitted

    async def aworkflow(self, queue: str, workflow_id: str) -> WorkflowRecord:
        reply = await self.arun(self.queue(queue).workflow(workflow_id))
        record = _workflow_found(queue, workflow_id, reply)
        reads = record.live_reads()
        return record.with_live(await self.aread(reads, "read a workflow")) if reads else record

    async def aretry_failed(self, queue: str, job_ids: Sequence[str] = ()) -> int:
        count: int = await self.arun(self.queue(queue).retry_failed(job_ids))
        await self.arelay([queue])
        return count

    async def arelay(self, queues: Iterable[str]) -> int:
        steps = relay(queues, self.settings.result_ttl)
        return await adrive(steps, partial(self.awrite, what="deliver workflow messages"))

    async def await_workflow(
        self, queue: str, workflow_id: str, timeout: float | None = None
    ) -> WorkflowRecord:
        return await self._await_until_final(
            self.queue(queue).workflow_key(workflow_id),
            partial(self.aworkflow, queue, workflow_id),
            _Deadline(f"workflow {workflow_id}", timeout, asyncio.get_running_loop().time),
        )

    async def acancel_workflow(self, queue: str, workflow_id: str) -> int:
        reply = await self.arun(self._cancel_workflow(queue, workflow_id))
        await self.arelay([queue])
        return _workflow_cancelled(workflow_id, reply)

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        self._async_connecting = asyncio.Lock()  # the next loop to use this client gets its own

    # -- shared -----------------------------------------------------------------------

    def _retrying(self, call: Callable[[], T], what: str) -> T:
        # Safe to repeat: an enqueue whose reply was lost is DUPLICATE the second time.
        return connection.retrying(call, what, self.settings.reconnect_for)

    async def _aretrying(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        return await connection.aretrying(call, what, self.settings.reconnect_for)

    def _cancel(self, queue: str, job_id: str) -> Op[list[Code | str]]:
        return self.queue(queue).cancel([job_id], self.settings.result_ttl)

    def _submit(self, plan: Plan, name: str) -> Op[Code | str]:
        return self.queue(plan.queue).submit_workflow(
            plan.id, name, self.settings.result_ttl, plan.nodes
        )

    def _cancel_workflow(self, queue: str, workflow_id: str) -> Op[int | str]:
        return self.queue(queue).cancel_workflow(workflow_id, self.settings.result_ttl)

    def traced(self, envelopes: Sequence[Envelope]) -> AbstractContextManager[None]:
        """The producer span around storing these jobs, whose context they carry (nothing
        when tracing is off); enter it before the jobs are encoded."""
        if self._tracer is None or not envelopes:
            return contextlib.nullcontext()
        return tracing.enqueue_span(self._tracer, envelopes)

    def _plan_enqueue(self, envelopes: Sequence[Envelope]) -> _EnqueuePlan:
        """Encode every job first: a batch with one bad job stores nothing."""
        limit = self.settings.max_payload
        jobs = [(self.queue(e.queue), NewJob.of(e, limit)) for e in envelopes]
        chunks = list(_chunks(jobs))
        return _EnqueuePlan(
            ids=[e.id for e in envelopes],
            new_queues={e.queue for e in envelopes} - self._known_queues,
            chunks=chunks,
            ops=[
                queue.enqueue(queued, self.settings.idempotency_ms, self.settings.result_ttl)
                for queue, queued in chunks
            ],
        )

    def _enqueued(self, plan: _EnqueuePlan, replies: list[list[Code | str]]) -> list[str]:
        self._known_queues.update(plan.new_queues)
        first_ids: dict[str, str] = {}
        for (_, jobs), codes in zip(plan.chunks, replies, strict=True):
            for job, code in zip(jobs, codes, strict=True):
                if code is Code.DUPLICATE:
                    log.info("job %s exists already; not enqueued again", job.id)
                elif isinstance(code, str):
                    log.info(
                        "job %s not enqueued: job %s holds its %s",
                        job.id,
                        code,
                        "uniqueness key" if job.unique_key else "idempotency key",
                    )
                    first_ids[job.id] = code
        return [first_ids.get(job_id, job_id) for job_id in plan.ids]


@dataclass(frozen=True, slots=True)
class _EnqueuePlan:
    ids: list[str]
    new_queues: set[str]
    chunks: list[tuple[Queue, list[NewJob]]]
    ops: list[Op[list[Code | str]]]


class _Deadline:
    """How long a result wait may still block, in pieces of at most a minute."""

    def __init__(self, what: str, timeout: float | None, clock: Callable[[], float]) -> None:
        self.what, self.timeout, self.clock = what, timeout, clock
        self.at = None if timeout is None else clock() + timeout

    def next_wait(self, status: str) -> float:
        if self.at is None:
            return 60.0
        remaining = self.at - self.clock()
        if remaining <= 0:
            raise ResultTimeout(f"{self.what} is still {status} after {self.timeout}s")
        return min(remaining, 60.0)


class _IdleClock:
    """How long an events() call may still wait for its next event."""

    def __init__(self, idle: float | None, clock: Callable[[], float]) -> None:
        self.idle, self.clock = idle, clock
        self.restart()

    def restart(self) -> None:
        self.until = None if self.idle is None else self.clock() + self.idle

    def remaining(self) -> float:
        """Seconds to wait at most (a minute at a time when there is no limit)."""
        return 60.0 if self.until is None else self.until - self.clock()


def _event_of(message: dict[str, Any]) -> JobEvent | None:
    try:
        return JobEvent.decode(message["data"])
    except ValueError as exc:  # a foreign publisher's junk on the channel
        log.warning("skipping a message on %s: %s", text(message["channel"]), exc)
        return None


def _confirms_subscription(message: dict[str, Any] | None) -> bool:
    return message is not None and message["type"] == "subscribe"


def _result_of(record: JobRecord) -> Any:
    if record.state is JobState.FAILED:
        raise JobFailed(record.id, f"{record.reason}: {record.error}")
    if record.state is JobState.CANCELLED:
        raise JobCancelled(f"job {record.id} was cancelled")
    return record.result_value()


def _cancelled(job_id: str, replies: list[Code | str]) -> str:
    reply = replies[0]
    if reply == "unknown":
        raise JobNotFound(f"no job {job_id}")
    if reply is Code.OK:
        return "cancelled"
    if reply == "cancelling":
        return reply
    raise NotCancellable(f"job {job_id} is {reply}: it has ended already")


def _submitted(plan: Plan, reply: Code | str) -> bool:
    if reply is Code.DUPLICATE:
        log.info("workflow %s exists already; not submitted again", plan.id)
        return False
    if isinstance(reply, str):
        raise WorkflowError(f"job {reply} exists already: a workflow's job ids must be new")
    return True


def _workflow_found(queue: str, workflow_id: str, reply: list[Any]) -> WorkflowRecord:
    record = WorkflowRecord.parse(queue, workflow_id, reply)
    if record is None:
        raise WorkflowNotFound(f"no workflow {workflow_id} in queue {queue}")
    return record


def _workflow_cancelled(workflow_id: str, reply: int | str) -> int:
    if reply == "unknown":
        raise WorkflowNotFound(f"no workflow {workflow_id}")
    if isinstance(reply, str):
        raise NotCancellable(
            f"workflow {workflow_id} is {reply}: only a pending or running one can be cancelled"
        )
    return reply
