"""The worker: one asyncio process that leases jobs, runs them in a fixed number of
slots (coroutines on the loop, plain functions in threads) and reports how they ended.
Its roles run in one TaskGroup: fetcher, reporter (reporter.py), heartbeat, recoverer,
abort listener and watchdog; the live-worker registry is registry.py."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
import random
import socket
import traceback
from collections import defaultdict, deque
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio.cluster
from redis.crc import key_slot

from redwork import connection, logs, tracing
from redwork.app import Redwork, Task
from redwork.connection import TRANSIENT, AsyncRedis, Backoff
from redwork.context import JobContext, enter_job, leave_job
from redwork.errors import SerializationError, UnknownTask
from redwork.job import Call, FailureReason, RetryPolicy, new_job_id, now_ms, to_json
from redwork.limits import set_limit
from redwork.queue import Completion, Delivery, Durability, Failure, Op, Queue, arun, text
from redwork.registry import Registration
from redwork.reporter import Reporter
from redwork.schedule import Scheduler
from redwork.settings import Settings
from redwork.workflow import node_inputs

log = logging.getLogger("redwork.worker")
T = TypeVar("T")


@dataclass(slots=True)
class _Completed:
    result: bytes


@dataclass(slots=True)
class _Failed:
    reason: FailureReason
    error: str


@dataclass(slots=True)
class _Running:
    delivery: Delivery
    call: Call | None = None
    context: JobContext | None = None
    task: asyncio.Task[None] | None = None
    thread: asyncio.Future[Any] | None = None
    """The thread of a plain function, which cannot be stopped and so keeps its slot."""
    aborted: bool = False
    """The job was cancelled while running: the run ends it as cancelled."""


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    started_at: int = field(default_factory=now_ms)


class Worker:
    """Runs jobs from `queues` (highest priority first) with `concurrency` slots."""

    def __init__(
        self, app: Redwork, settings: Settings | None = None, *, worker_id: str | None = None
    ) -> None:
        self.app = app
        self.settings = settings or app.settings
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_job_id()[:6]}"
        self.queues = [Queue(name) for name in self.settings.queues]
        self.stats = WorkerStats()
        self._free = self.settings.concurrency
        self._running: dict[tuple[str, str], _Running] = {}
        self._prefetched: deque[Delivery] = deque()
        self._slot_freed = asyncio.Event()
        self._stop = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._services_done = asyncio.Event()
        self._reporter = Reporter(
            self.queues,
            self.settings.result_ttl,
            self.settings.lease,
            Durability.asked(self.settings),
        )
        self._threads = ThreadPoolExecutor(
            self.settings.concurrency, thread_name_prefix="redwork-job"
        )
        self._tracer = tracing.tracer(self.settings.tracing)
        self._redis: AsyncRedis | None = None
        self._registration: Registration | None = None
        self._fetching: AsyncRedis | None = None
        self._reporting: AsyncRedis | None = None

    # -- lifecycle --------------------------------------------------------------------

    def stop(self) -> None:
        """First call: stop fetching and drain within the grace period. Second call:
        hand every running job back now."""
        if self._stop.is_set():
            log.warning("second stop signal: handing back running jobs now")
            self._hard_stop.set()
        else:
            log.info(
                "stopping: no new jobs; waiting up to %.1fs for %d running",
                self.settings.grace,
                len(self._running),
            )
            self._stop.set()
            self._slot_freed.set()

    async def run(self) -> None:
        url = await asyncio.to_thread(connection.resolve_url, self.settings)
        self._redis = connection.async_client(url, self.settings)
        # The fetcher and the reporter each own a connection (the fetcher's also blocks
        # waiting for work); heartbeat, recovery and the rest share a pool.
        self._fetching = connection.async_client(url, self.settings, blocking=True, single=True)
        self._reporting = connection.async_client(url, self.settings, single=True)
        try:
            started, _ = await self._unless_stopped(self._start_up())
            if not started:
                return
            async with asyncio.TaskGroup() as roles:
                # Roles are never cancelled: each ends by itself once told to stop, so that
                # no reply in flight (a fetch that leased jobs, a report) is thrown away.
                fetcher = roles.create_task(self._fetch_loop(), name="fetcher")
                reporter = roles.create_task(
                    self._reporter.run(self._reporting, self._hard_stop), name="reporter"
                )
                relayer = roles.create_task(self._reporter.run_relays(self._redis), name="relayer")
                roles.create_task(self._heartbeat_loop(), name="heartbeat")
                roles.create_task(self._recover_loop(), name="recoverer")
                roles.create_task(self._abort_listener(), name="abort listener")
                if self.settings.scheduler:
                    scheduler = Scheduler(
                        self.app, self.settings.result_ttl, self.settings.idempotency_ms
                    )
                    roles.create_task(scheduler.run(self._redis, self._stop), name="scheduler")
                roles.create_task(self._watch_loop(), name="watchdog")
                await self._stop.wait()
                await fetcher
                await self._hand_back(list(self._prefetched))  # never started: return at once
                self._prefetched.clear()
                await self._drain()
                await self._hand_back_unfinished()
                self._reporter.close()
                await reporter
                await relayer
                self._services_done.set()
            await self._deregister()
        finally:
            self._threads.shutdown(wait=False, cancel_futures=True)
            await self._redis.aclose()
            await self._fetching.aclose()
            await self._reporting.aclose()

    async def _start_up(self) -> None:
        assert self._redis is not None
        info = await connection.aretrying(self._redis.info, "connect", float("inf"))
        connection.check_server(info)
        info = {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": ",".join(self.settings.queues),
            "concurrency": self.settings.concurrency,
            "started_at": self.stats.started_at,
        }
        ttl = int(self.settings.heartbeat_interval * 3) + 1
        self._registration = registration = Registration(self._redis, info, ttl)

        async def register() -> None:
            await registration.register(self.settings.queues)
            await registration.refresh(self._counters())
            # The limits of the tasks this worker runs, where fetch can see them.
            for queue in self.queues:
                for task in self.app.tasks.values():
                    if task.defaults.limit is not None:
                        await self._call(set_limit(queue, f"task:{task.name}", task.defaults.limit))

        await connection.aretrying(register, "register", float("inf"))

    async def _unless_stopped(self, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
        """Await `awaitable` unless a stop is requested first, in which case it is
        cancelled; only for waits whose cancellation loses nothing."""
        return await _unless_set(self._stop, awaitable)

    async def _pause(self, seconds: float) -> None:
        """Sleep between rounds of a service role, waking early when the worker closes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._services_done.wait(), seconds)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.grace
        hard = asyncio.ensure_future(self._hard_stop.wait())
        try:
            while self._running and not hard.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                tasks = {r.task for r in self._running.values() if r.task is not None}
                await asyncio.wait(
                    {*tasks, hard}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            hard.cancel()

    async def _hand_back_unfinished(self) -> None:
        unfinished = list(self._running.values())
        for running in unfinished:
            if running.task is not None:
                running.task.cancel()
        await asyncio.gather(*(r.task for r in unfinished if r.task), return_exceptions=True)
        await self._hand_back([r.delivery for r in unfinished])

    async def _hand_back(self, deliveries: list[Delivery]) -> None:
        by_queue: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for delivery in deliveries:
            by_queue[delivery.queue].append((delivery.id, delivery.token))
        for queue in self.queues:
            if by_queue[queue.name]:
                try:
                    await self._call(queue.handback(by_queue[queue.name], self.settings.result_ttl))
                    log.info("handed back %d jobs of %s", len(by_queue[queue.name]), queue.name)
                except TRANSIENT as exc:
                    log.error(
                        "could not hand back jobs (%s); they return when their lease ends", exc
                    )

    # -- fetcher ----------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        assert self._fetching is not None
        markers = [q.marker for q in self.queues]
        backoff = Backoff()
        while not self._stop.is_set():
            if self._wanted() <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()  # stop() sets it too
                continue
            try:
                asked = self._wanted()
                got, next_due_ms = await self._fetch_once()
                # Fewer jobs than asked for: rather than fetch again (empty, most of the
                # time), block on the markers. A fetch that leaves work behind sets its
                # queue's marker again, so the wait then returns at once.
                if got < asked:
                    await self._wait_for_work(markers, next_due_ms)
                backoff.reset()
            except TRANSIENT as exc:
                await asyncio.sleep(backoff.next("fetch", exc))

    async def _wait_for_work(self, markers: list[str], next_due_ms: int | None) -> None:
        """Block on the queues' markers until work arrives, `block_timeout` passes, or
        the next delayed job (or rate-limited one) is due. The server checks blocking
        timeouts only about every 100 ms (its `hz`), so for a due time the worker also
        sets the marker itself when the time comes: a delayed job starts within a few
        milliseconds of it."""
        assert self._fetching is not None
        timeout = self.settings.block_timeout
        alarm = None
        if next_due_ms is not None and next_due_ms / 1000 < timeout:
            alarm = asyncio.create_task(self._set_markers_in(next_due_ms / 1000, markers))
            timeout = max(next_due_ms / 1000, 0.001)
        try:
            # Losing a popped marker to a stop is harmless: markers only wake.
            await self._unless_stopped(self._block_on(markers, timeout))
        finally:
            if alarm is not None:
                alarm.cancel()

    async def _block_on(self, markers: list[str], timeout: float) -> None:
        """One BZPOPMIN over every marker; on a cluster, where one command may only name
        keys of one slot, one per slot at once, and the first to wake ends the others
        (each cancelled call drops its connection, so this costs a reconnect per slot
        on each wake of a worker serving queues in several slots)."""
        assert self._fetching is not None
        if not isinstance(self._fetching, redis.asyncio.cluster.RedisCluster):
            await self._fetching.bzpopmin(markers, timeout)
            return
        by_slot: dict[int, list[str]] = defaultdict(list)
        for marker in markers:
            by_slot[key_slot(marker.encode())].append(marker)
        fetching = self._fetching
        waits = [asyncio.ensure_future(fetching.bzpopmin(m, timeout)) for m in by_slot.values()]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.wait(waits)
        for wait in done:
            wait.result()  # a server that is away raises here, for the fetch loop's backoff

    async def _set_markers_in(self, seconds: float, markers: list[str]) -> None:
        await asyncio.sleep(seconds)
        assert self._redis is not None
        with contextlib.suppress(*TRANSIENT):
            for marker in markers:
                await self._redis.zadd(marker, {"m": 0})

    def _wanted(self) -> int:
        """Jobs to ask for: one per free slot, plus the prefetch buffer's free room."""
        return self._free + self.settings.prefetch - len(self._prefetched)

    async def _fetch_once(self) -> tuple[int, int | None]:
        got, next_due = 0, None
        for queue in self.queues:
            wanted = self._wanted()
            if wanted <= 0:
                break
            fetched = await self._call_on(
                self._fetching,
                queue.fetch(wanted, self.settings.lease_ms, self.id, self.settings.max_payload),
            )
            for delivery in fetched.deliveries:
                if self._free > 0:
                    self._start(delivery)
                else:
                    self._prefetched.append(delivery)
            got += len(fetched.deliveries)
            due = fetched.next_due_in_ms
            if due is not None:
                next_due = due if next_due is None else min(next_due, due)
        return got, next_due

    def _start(self, delivery: Delivery) -> None:
        self._free -= 1
        running = _Running(delivery)
        self._running[(delivery.queue, delivery.id)] = running
        running.task = asyncio.create_task(self._run_job(running), name=f"job:{delivery.id}")

    # -- runner -----------------------------------------------------------------------

    async def _run_job(self, running: _Running) -> None:
        delivery = running.delivery
        try:
            outcome = await self._execute(running)
        except asyncio.CancelledError:
            if not running.aborted:
                return  # stopping or lease lost: the job is handed back or recovered elsewhere
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            outcome = _Failed(FailureReason.CANCELLED, "cancelled while running")
        finally:
            self._running.pop((delivery.queue, delivery.id), None)
            self._release_slot_when_done(running)
        self._report(running, outcome)

    def _release_slot_when_done(self, running: _Running) -> None:
        def release(_: object = None) -> None:
            self._free += 1
            if self._prefetched and not self._stop.is_set():
                self._start(self._prefetched.popleft())
            self._slot_freed.set()

        if running.thread is not None and not running.thread.done():
            running.thread.add_done_callback(release)
        else:
            release()

    async def _execute(self, running: _Running) -> _Completed | _Failed:
        delivery = running.delivery
        try:
            call = running.call = Call.decode(delivery.data)
            if delivery.inputs:  # a workflow's node given its dependencies' results
                inputs = node_inputs(call.document, delivery.inputs)
                call = dataclasses.replace(call, args=inputs + call.args)
        except ValueError as exc:  # orjson.JSONDecodeError included
            return _Failed(FailureReason.DECODE_ERROR, f"cannot decode the job: {exc}")
        try:
            task = self.app.get_task(call.task)
        except UnknownTask as exc:
            return _Failed(FailureReason.UNKNOWN_TASK, str(exc))
        max_attempts = call.document.get("max_attempts", 1)
        max_attempts = max_attempts if isinstance(max_attempts, int) else 1
        context = running.context = JobContext(
            delivery.id,
            delivery.queue,
            delivery.attempt,
            max_attempts,
            self.id,
            delivery.token,
            reporter=self.app.report_progress,
        )
        if running.aborted:
            context.request_cancel()
        if self._tracer is None:
            return await self._outcome(task, call, context, running)
        span = tracing.start_run(
            self._tracer, call.document, delivery.id, delivery.queue, delivery.attempt
        )
        reason: str | None = None  # cut off (CancelledError): handed back or lease lost
        error: str | None = None
        try:
            outcome = await self._outcome(task, call, context, running)
            if isinstance(outcome, _Failed):
                reason, error = outcome.reason.value, outcome.error
            else:
                reason = "completed"
            return outcome
        finally:
            if running.aborted:  # however the run ended, it ends as cancelled (_failure)
                reason = FailureReason.CANCELLED.value
            tracing.end(span, reason, error)

    async def _outcome(
        self, task: Task[Any, Any], call: Call, context: JobContext, running: _Running
    ) -> _Completed | _Failed:
        try:
            value = await self._call_task(task, call, context, running)
        except _Timeout:
            return _Failed(FailureReason.TIMEOUT, f"timed out after {call.timeout}s")
        except _BadArguments as exc:
            return _Failed(FailureReason.BAD_ARGUMENTS, str(exc))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return _Failed(FailureReason.EXCEPTION, _describe_exception())
        except BaseException:  # a task's SystemExit or KeyboardInterrupt must not end the worker
            return _Failed(FailureReason.EXCEPTION, _describe_exception())
        try:
            return _Completed(to_json(value, f"the result of {call.task}"))
        except SerializationError as exc:
            return _Failed(FailureReason.RESULT_ENCODE_ERROR, str(exc))

    async def _call_task(
        self, task: Task[Any, Any], call: Call, context: JobContext, running: _Running
    ) -> Any:
        token = enter_job(context)
        try:
            if task.is_async:
                try:
                    coroutine = task.fn(*call.args, **call.kwargs)
                except TypeError as exc:
                    raise _arguments_error(task, call, exc) from exc
                return await _with_timeout(coroutine, call.timeout)
            in_thread = functools.partial(
                contextvars.copy_context().run, task.fn, *call.args, **call.kwargs
            )
            running.thread = asyncio.get_running_loop().run_in_executor(self._threads, in_thread)
            # A thread left running by a timeout or a lost lease may raise later, when no
            # one awaits it any more: its exception is retrieved here, not logged as lost.
            running.thread.add_done_callback(_retrieve_exception)
            try:
                return await _with_timeout(asyncio.shield(running.thread), call.timeout)
            except TypeError as exc:
                raise _arguments_error(task, call, exc) from exc
        finally:
            leave_job(token)

    def _report(self, running: _Running, outcome: _Completed | _Failed) -> None:
        delivery = running.delivery
        if isinstance(outcome, _Completed):
            staged = running.context.staged if running.context is not None else {}
            completion = Completion(delivery.id, delivery.token, outcome.result)
            if staged:
                # Needed only if an etag no longer matches at commit: a conflict is a
                # failed run, retried as the task's policy says.
                retry_in = self._retry_in(running, FailureReason.CONFLICT)
                completion = Completion(
                    delivery.id, delivery.token, outcome.result, list(staged.values()), retry_in
                )
            self._reporter.completed(delivery.queue, completion, _spans_queues(running))
            self.stats.done += 1
        else:
            failure = self._failure(running, outcome)
            self._reporter.failed(delivery.queue, failure, _spans_queues(running))

    def _retry_in(self, running: _Running, reason: FailureReason) -> int:
        """Milliseconds before the next attempt after a run that failed for `reason`, or
        -1 when there is none (the job goes to the failed store)."""
        if not reason.is_retryable or running.call is None:
            return -1
        try:
            policy = RetryPolicy.of(running.call.document)
        except (TypeError, ValueError):
            return -1  # a malformed policy means no retry
        attempt = running.delivery.attempt
        if attempt >= policy.max_attempts:
            return -1
        return int(1000 * policy.delay(attempt, random.random()))

    def _failure(self, running: _Running, outcome: _Failed) -> Failure:
        delivery = running.delivery
        if running.aborted:
            # However the run ended (JobCancelled, CancelledError, any error raised on
            # the way out), it ends as cancelled, as asked.
            log.info(
                "job %s (attempt %d) cancelled while running",
                delivery.id,
                delivery.attempt,
                extra=_about(running, reason=FailureReason.CANCELLED.value),
            )
            reason = FailureReason.CANCELLED.value
            return Failure(delivery.id, delivery.token, reason, outcome.error)
        retry_in = self._retry_in(running, outcome.reason)
        if retry_in < 0:
            self.stats.failed += 1
        log.warning(
            "job %s (attempt %d) failed: %s%s",
            delivery.id,
            delivery.attempt,
            outcome.reason.value,
            f"; retry in {retry_in} ms" if retry_in >= 0 else "",
            extra=_about(running, reason=outcome.reason.value),
        )
        return Failure(delivery.id, delivery.token, outcome.reason.value, outcome.error, retry_in)

    # -- heartbeat and recovery -------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        while True:
            await self._pause(self.settings.heartbeat_interval)
            if self._services_done.is_set():
                return
            try:
                await self._extend_leases()
                assert self._registration is not None
                await self._registration.refresh(self._counters())
                last_ok = loop.time()
            except TRANSIENT as exc:
                silent = loop.time() - last_ok
                log.warning("heartbeat failed (%s); leases unrenewed for %.1fs", exc, silent)
                if silent > self.settings.lease:
                    self._abandon(list(self._running.values()), "its lease could not be renewed")
                    self._prefetched.clear()  # their leases are gone too; others take them

    async def _extend_leases(self) -> None:
        """Renew the leases of running jobs, and of finished ones whose outcome is not
        reported yet (a report delayed by an outage must not let the job run again)."""
        by_queue: dict[str, list[_Running]] = defaultdict(list)
        for running in self._running.values():
            by_queue[running.delivery.queue].append(running)
        for queue in self.queues:
            held = by_queue.get(queue.name, [])
            leases = [(r.delivery.id, r.delivery.token) for r in held]
            leases += [(d.id, d.token) for d in self._prefetched if d.queue == queue.name]
            leases += self._reporter.unsent(queue.name)
            if leases:
                lost_ids, aborted = await self._call(
                    queue.heartbeat(leases, self.settings.lease_ms)
                )
                for job_id in aborted:
                    self._abort(queue.name, job_id)
                lost = set(lost_ids)
                if lost:
                    kept = [
                        d for d in self._prefetched if d.queue != queue.name or d.id not in lost
                    ]
                    self._prefetched = deque(kept)
                self._abandon([r for r in held if r.delivery.id in lost], "its lease was lost")

    def _abandon(self, runs: list[_Running], why: str) -> None:
        for running in runs:
            if running.task is not None and not running.task.done():
                log.warning(
                    "cancelling job %s: %s", running.delivery.id, why, extra=_about(running)
                )
                running.task.cancel()

    async def _recover_loop(self) -> None:
        while not self._services_done.is_set():
            for queue in self.queues:
                try:
                    recovered, buried = await self._call(
                        queue.recover(self.settings.max_losses, self.settings.result_ttl)
                    )
                    if recovered or buried:
                        log.warning(
                            "%s: took back %d jobs from lost workers, failed %d lost too often",
                            queue.name,
                            recovered,
                            buried,
                        )
                except TRANSIENT as exc:
                    log.warning("recovery check failed: %s", exc)
            try:
                # What a worker that stopped (or a caller that failed) before relaying
                # left in an outbox.
                assert self._redis is not None
                await self._reporter.relay(self._redis, [q.name for q in self.queues])
            except TRANSIENT as exc:
                log.warning("relaying workflow messages failed: %s", exc)
            # Jitter spreads the checks of many workers over the interval.
            await self._pause(self.settings.lease / 2 * (0.5 + random.random()))

    # -- cancellation of running jobs --------------------------------------------------

    async def _abort_listener(self) -> None:
        """Abort running jobs whose ids cancel.lua publishes on their queue's channel.
        A message missed while disconnected is caught by the next heartbeat."""
        assert self._redis is not None
        channels = {q.aborts: q.name for q in self.queues}
        backoff = Backoff()
        while not self._services_done.is_set():
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(*channels)
                backoff.reset()
                while True:
                    # Waits for the next message, not a poll: a closing worker ends it at
                    # once (a message cut off then is for a job this worker no longer runs).
                    waiting = pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    got, message = await _unless_set(self._services_done, waiting)
                    if not got:
                        return
                    if message is not None:
                        channel, job_id = text(message["channel"]), text(message["data"])
                        self._abort(channels[channel], job_id)
            except TRANSIENT as exc:
                await self._pause(backoff.next("abort listener", exc))
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    def _abort(self, queue: str, job_id: str) -> None:
        """Stop a job cancelled while this worker holds it. An async task is cancelled;
        a plain function is told through its context (it cannot be stopped from here)
        and keeps running until it looks or returns."""
        running = self._running.get((queue, job_id))
        if running is not None:
            if running.aborted:
                return
            log.info("job %s was cancelled: aborting it", job_id, extra=_about(running))
            running.aborted = True
            if running.context is not None:
                running.context.request_cancel()
            if running.thread is None and running.task is not None and not running.task.done():
                running.task.cancel()
            return
        for delivery in self._prefetched:
            if (delivery.queue, delivery.id) == (queue, job_id):
                self._prefetched.remove(delivery)
                self._reporter.failed(
                    queue,
                    Failure(
                        delivery.id,
                        delivery.token,
                        FailureReason.CANCELLED.value,
                        "cancelled before it started",
                    ),
                )
                return

    async def _watch_loop(self) -> None:
        """Say when the event loop was blocked (a coroutine task calling time.sleep or
        crunching numbers): nothing else runs meanwhile, heartbeats included, so the
        worker's leases can run out and its jobs go to other workers."""
        loop = asyncio.get_running_loop()
        tick = 0.1
        threshold = min(1.0, self.settings.lease / 4)
        while not self._services_done.is_set():
            before = loop.time()
            await self._pause(tick)
            late = loop.time() - before - tick
            if late > threshold:
                log.warning(
                    "event loop blocked for %.2fs: a coroutine task ran blocking code (make "
                    "it a plain def, which runs in a thread); leases went unrenewed meanwhile",
                    late,
                )

    # -- registry ---------------------------------------------------------------------

    def _counters(self) -> dict[str, int]:
        stats = self.stats
        return {
            "done": stats.done,
            "failed": stats.failed,
            "fenced": self._reporter.fenced,
            "running": len(self._running),
        }

    async def _deregister(self) -> None:
        assert self._registration is not None
        try:
            await self._registration.deregister(self._counters())
        except TRANSIENT as exc:
            log.warning("could not announce this worker's stop: %s", exc)

    async def _call(self, op: Op[T]) -> T:
        return await self._call_on(self._redis, op)

    @staticmethod
    async def _call_on(client: AsyncRedis | None, op: Op[T]) -> T:
        assert client is not None, "the worker is not running"
        return await arun(client, op)


def _about(running: _Running, **more: Any) -> dict[str, Any]:
    """The job fields of a log record about this run (see redwork.logs)."""
    delivery = running.delivery
    task = running.call.task if running.call is not None else None
    return logs.about_job(delivery.id, delivery.queue, task, delivery.attempt, **more)


def _spans_queues(running: _Running) -> bool:
    """A node of a workflow across queues: its end must be relayed."""
    document = running.call.document if running.call is not None else {}
    workflow = document.get("workflow")
    return isinstance(workflow, dict) and "home" in workflow


async def _unless_set(event: asyncio.Event, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
    """(True, its result), or (False, None) when `event` is set first: then `awaitable` is
    cancelled, so only for waits whose cancellation loses nothing."""
    work = asyncio.ensure_future(awaitable)
    told = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({work, told}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also when this task is cancelled (a failing role's TaskGroup): a wait left
        # running would hold its connection, and closing that would wait for it.
        told.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait({work})
    if work.cancelled():
        return False, None
    return True, work.result()


class _Timeout(Exception):
    pass


class _BadArguments(Exception):
    pass


async def _with_timeout(awaitable: Awaitable[T], timeout: float | None) -> T:
    if timeout is None:
        return await awaitable
    try:
        async with asyncio.timeout(timeout) as scope:
            return await awaitable
    except TimeoutError:
        if scope.expired():
            raise _Timeout from None
        raise


def _arguments_error(task: Task[Any, Any], call: Call, exc: TypeError) -> Exception:
    """A TypeError is an argument mismatch only if the arguments do not bind; otherwise
    the task itself raised it."""
    try:
        task.signature.bind(*call.args, **call.kwargs)
    except TypeError as mismatch:
        return _BadArguments(f"{call.task}{task.signature}: {mismatch}")
    return exc


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _describe_exception() -> str:
    return traceback.format_exc(limit=30)[-8000:]
