"""Live updates for the HTTP server: one Redis subscription per server process, to the
event channels of every queue, fanned out in memory to any number of clients (WebSocket
or Server-Sent Events). A client subscribes to some jobs, or to everything (the
firehose). A client that cannot keep up is dropped, never waited for.

A job subscriber gets one message per state change of its jobs; when a job ends the
message carries the whole job record (result or error), read once for all the clients
of that job. Clients register before they read the current state, and the subscription
to Redis is in force before the first client registers, so no change is lost between
the two; at worst a client sees a state twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis.asyncio.cluster

from redwork.connection import TRANSIENT, AsyncRedis, Backoff
from redwork.job import JobRecord
from redwork.queue import KEY_ROOT, Queue, arun_many

log = logging.getLogger("redwork.live")

EVENTS_PATTERN = f"{KEY_ROOT}:{{*}}:events"
"""Every queue's event channel, `rw:{<queue>}:events`."""

STATE_AFTER = {
    "enqueued": "waiting",
    "active": "active",
    "completed": "completed",
    "retry_scheduled": "delayed",
    "delayed": "delayed",
    "cancel_requested": "active",
    "failed": "failed",
    "recovered": "waiting",
    "returned": "waiting",
    "promoted": "waiting",
    "requeued": "waiting",
    "purged": "purged",
    "cancelled": "cancelled",
    "progress": "active",
    "pending": "pending",
    "ready": "waiting",
    "skipped": "skipped",
}
"""The state a job is in after each kind of event (protocol.md, Events)."""

FINAL_EVENTS = frozenset({"completed", "failed", "cancelled", "skipped", "purged"})

JobRef = tuple[str, str]
"""(queue, job id)"""


class Update(dict[str, Any]):
    """A message for clients; its JSON is built once, however many clients it goes to."""

    __slots__ = ("_json",)

    def json(self) -> bytes:
        try:
            return self._json
        except AttributeError:
            self._json: bytes = orjson.dumps(self)
            return self._json


def encoded(message: dict[str, Any]) -> bytes:
    return message.json() if isinstance(message, Update) else orjson.dumps(message)


class Overflow(Exception):
    """The client fell too far behind and was dropped."""


class Subscription:
    """One client's mailbox: bounded, so that a slow client costs a bounded amount of
    memory and is cut off instead of slowing anyone down."""

    def __init__(self, jobs: frozenset[JobRef] | None, limit: int) -> None:
        self.jobs = jobs
        """The jobs it follows; None for every event (the firehose)."""
        self.limit = limit
        self.overflowed = False
        self._items: deque[dict[str, Any]] = deque()
        self._ready = asyncio.Event()

    def push(self, item: dict[str, Any]) -> None:
        if self.overflowed:
            return
        if len(self._items) >= self.limit:
            self.overflowed = True
            self._items.clear()
        else:
            self._items.append(item)
        self._ready.set()

    async def get(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None after `timeout` seconds without one (time for a
        keep-alive ping). Raises Overflow once the client has been dropped."""
        if not self._items and not self.overflowed:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        if self.overflowed:
            raise Overflow(f"more than {self.limit} messages waiting: the client is too slow")
        return self._items.popleft() if self._items else None


class Hub:
    def __init__(
        self,
        connect: Callable[[], AsyncRedis],
        reader: AsyncRedis,
        mailbox_limit: int = 10_000,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._connect = connect
        self._reader = reader
        """Reads job records for final updates and resynchronisation."""
        self.mailbox_limit = mailbox_limit
        self._on_event = on_event
        self._firehose: set[Subscription] = set()
        self._by_job: dict[JobRef, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @property
    def clients(self) -> int:
        return len(self._firehose) + len({s for subs in self._by_job.values() for s in subs})

    async def start(self) -> None:
        """Subscribe to Redis; returns once the subscription is in force."""
        self._task = asyncio.create_task(self._run(), name="live-hub")
        subscribed = asyncio.ensure_future(self._subscribed.wait())
        await asyncio.wait({self._task, subscribed}, return_when=asyncio.FIRST_COMPLETED)
        if not subscribed.done():
            subscribed.cancel()
            self._task.result()  # raises what ended it

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def subscribe(self, jobs: Iterable[JobRef] | None) -> Subscription:
        """Follow `jobs`, or every event when None."""
        if jobs is None:
            subscription = Subscription(None, self.mailbox_limit)
            self._firehose.add(subscription)
            return subscription
        subscription = Subscription(frozenset(jobs), self.mailbox_limit)
        for ref in subscription.jobs or ():
            self._by_job.setdefault(ref, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._firehose.discard(subscription)
        for ref in subscription.jobs or ():
            followers = self._by_job.get(ref)
            if followers is not None:
                followers.discard(subscription)
                if not followers:
                    del self._by_job[ref]

    async def records(self, refs: list[JobRef]) -> list[JobRecord | None]:
        """The current records of jobs, in one pipelined round trip."""
        return await arun_many(self._reader, [Queue(q).job(i) for q, i in refs])

    # -- the subscription to Redis -----------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff()
        first = True
        while True:
            client = self._connect()
            pubsub = client.pubsub()
            try:
                if isinstance(client, redis.asyncio.cluster.RedisCluster):
                    # Its pub/sub picks a node from the slot map, which a new client has not
                    # read yet. Any node will do: a PUBLISH reaches every node of a cluster.
                    await client.initialize()
                await pubsub.psubscribe(EVENTS_PATTERN)
                while (message := await pubsub.get_message(timeout=10)) is None or message[
                    "type"
                ] != "psubscribe":
                    pass
                self._subscribed.set()
                if not first:
                    await self._resync()
                first = False
                backoff.reset()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30)
                    if message is not None:
                        await self._dispatch(message["data"])
            except TRANSIENT as exc:
                await asyncio.sleep(backoff.next("live updates", exc))
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                await client.aclose()

    async def _resync(self) -> None:
        """After a reconnection, events may have been missed: send every followed job's
        current state, and tell firehose clients."""
        refs = list(self._by_job)
        for ref, record in zip(refs, await self.records(refs), strict=True):
            if record is not None:
                self._deliver(ref, job_message(record, "resync"))
        for subscription in self._firehose:
            subscription.push({"type": "resync"})

    async def _dispatch(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
            kind, queue, jobs = event["event"], event["queue"], event["jobs"]
            attempts = event.get("attempts") or [0] * len(jobs)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring a malformed event: %r", data[:200])
            return
        if self._on_event is not None:
            self._on_event(event)
        if self._firehose:
            message = Update(type="event", **event)
            for subscription in self._firehose:
                subscription.push(message)
        followed = [(queue, job_id) for job_id in jobs if (queue, job_id) in self._by_job]
        if not followed:
            return
        records: dict[JobRef, JobRecord | None] = {}
        # A final state carries the result or error: read the record once for all.
        if kind in FINAL_EVENTS and kind != "purged":
            records = dict(zip(followed, await self.records(followed), strict=True))
        attempt_of = dict(zip(jobs, attempts, strict=False))
        for ref in followed:
            record = records.get(ref)
            if record is not None:
                message = job_message(record, kind)
            else:
                message = Update(
                    type="job",
                    queue=queue,
                    id=ref[1],
                    event=kind,
                    state=STATE_AFTER.get(kind, kind),
                    attempt=attempt_of.get(ref[1], 0),
                    at=event.get("at"),
                )
                if kind == "progress":
                    message["progress"] = event.get("progress")
            self._deliver(ref, message)

    def _deliver(self, ref: JobRef, message: dict[str, Any]) -> None:
        for subscription in self._by_job.get(ref, ()):
            subscription.push(message)


def job_message(record: JobRecord, event: str) -> Update:
    """A job's full state as one update: `event` says what prompted it (`snapshot` for
    the state a new subscriber starts from)."""
    return Update(
        type="job",
        queue=record.queue,
        id=record.id,
        event=event,
        state=record.state.value,
        attempt=record.attempt,
        at=record.finished_at or record.started_at or record.enqueued_at,
        job=record.as_dict(),
    )


class DurationTracker:
    """Job run times seen in events (`active` to `completed` or `failed`), for the
    /metrics histogram. Remembers at most `limit` running jobs."""

    def __init__(self, observe: Callable[[str, str, float], None], limit: int = 100_000) -> None:
        self._observe = observe
        self._limit = limit
        self._started: OrderedDict[JobRef, int] = OrderedDict()

    def __call__(self, event: dict[str, Any]) -> None:
        kind, queue, at = event["event"], event["queue"], event.get("at", 0)
        if kind == "active":
            for job_id in event["jobs"]:
                self._started[(queue, job_id)] = at
            while len(self._started) > self._limit:
                self._started.popitem(last=False)
        elif kind in ("completed", "failed", "retry_scheduled"):
            outcome = "completed" if kind == "completed" else "failed"
            for job_id in event["jobs"]:
                started = self._started.pop((queue, job_id), None)
                if started is not None:
                    self._observe(queue, outcome, max(0, at - started) / 1000)
