"""The worker, in-process: results, retries, timeouts, bad jobs, BaseExceptions, stop."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redwork import JobFailed, JobState, Redwork, Worker
from redwork.job import Envelope
from redwork.queue import NewJob, Queue, run
from redwork.scripts import Code
from redwork.settings import Settings
from tests import tasks
from tests.conftest import DAY_MS, ROOT, count_events, stop_worker, wait_for_event, worker_env

Q = Queue("default")


async def event(r: redis.Redis, name: str, job_id: str | None = None, **kw: Any) -> dict[str, str]:
    """wait_for_event without blocking the loop the worker runs on."""
    return await asyncio.to_thread(wait_for_event, r, "default", name, job_id, **kw)


async def started(r: redis.Redis, job_id: str) -> None:
    """Wait (BLPOP on the server) until the announce_sleep task of job_id is running."""
    assert await asyncio.to_thread(r.blpop, [f"test:started:{job_id}"], 10) is not None


async def failed_record(handle: Any) -> Any:
    with pytest.raises(JobFailed):
        await handle.aresult(timeout=10)
    return await handle.ainfo()


@contextlib.asynccontextmanager
async def running_worker(
    app: Redwork, **overrides: Any
) -> AsyncIterator[tuple[Worker, asyncio.Task[None]]]:
    """A worker with other settings than the `worker` fixture's, and the task running it;
    stopped at once on exit unless the test has waited for it to end."""
    worker = Worker(app, app.settings.replace(**overrides))
    task = asyncio.create_task(worker.run())
    try:
        yield worker, task
    finally:
        if not task.done():
            await stop_worker(worker, task)
        task.result()
        await app.client.aclose()


# -- results ------------------------------------------------------------------------


@pytest.mark.cluster
async def test_async_and_sync_tasks_return_results(app: Redwork, worker: Worker) -> None:
    a = await tasks.add.aenqueue(2, 3)
    s = await tasks.sync_add.aenqueue(x=4, y=5)
    assert await a.aresult(timeout=10) == 5
    assert await s.aresult(timeout=10) == 9
    info = await s.ainfo()
    assert (info.state, info.attempt, info.worker) == (JobState.COMPLETED, 1, worker.id)


@pytest.mark.parametrize("task", [tasks.job_info, tasks.sync_job_info], ids=["async", "sync"])
async def test_current_job_gives_id_and_attempt(app: Redwork, worker: Worker, task: Any) -> None:
    handle = await task.options(queue="default", retries=4).aenqueue()
    assert await handle.aresult(timeout=10) == {
        "id": handle.id,
        "queue": "default",
        "attempt": 1,
        "max": 5,
    }


def test_current_job_outside_a_task_raises_lookup_error() -> None:
    import redwork

    with pytest.raises(LookupError):
        redwork.current_job()


# -- retries and the failed store ---------------------------------------------------


async def test_task_failing_twice_then_succeeding_is_retried(
    app: Redwork, worker: Worker, r: redis.Redis
) -> None:
    handle = await tasks.flaky.aenqueue(3)
    assert await handle.aresult(timeout=10) == 3
    assert count_events(r, "default", "retry_scheduled") == 2
    assert count_events(r, "default", "active") == 3
    info = await handle.ainfo()
    assert (info.state, info.attempt) == (JobState.COMPLETED, 3)


@pytest.mark.cluster
async def test_exhausted_retries_end_in_failed_store_then_retry_failed_runs_it_again(
    app: Redwork, worker: Worker, r: redis.Redis
) -> None:
    handle = await tasks.boom.aenqueue("kaboom")
    info = await failed_record(handle)
    assert (info.state, info.attempt, info.reason) == (JobState.FAILED, 3, "exception")
    assert "Traceback (most recent call last)" in info.error
    assert "ValueError: kaboom" in info.error
    assert run(r, Q.failed_ids()) == [handle.id]
    assert count_events(r, "default", "active") == 3

    requeued_at = r.xrevrange(Q.events, count=1)[0][0]
    assert run(r, Q.retry_failed()) == 1
    again = await event(r, "active", handle.id, after=requeued_at.decode())
    assert again["attempt"] == "1"
    info = await failed_record(handle)
    assert (info.state, info.attempt) == (JobState.FAILED, 3)
    assert count_events(r, "default", "active") == 6


@pytest.mark.cluster
async def test_async_timeout_fails_with_reason_timeout(app: Redwork, worker: Worker) -> None:
    handle = await tasks.sleep.options(timeout=0.2).aenqueue(30)
    info = await failed_record(handle)
    assert (info.reason, info.attempt) == ("timeout", 1)
    assert "0.2" in info.error


async def test_sync_timeout_fails_and_keeps_its_slot_until_the_thread_returns(
    app: Redwork, r: redis.Redis, tmp_path: Path
) -> None:
    mark = tmp_path / "returned_at"
    async with running_worker(app, concurrency=1):
        slow = await tasks.sync_sleep_mark.options(timeout=0.2).aenqueue(1.0, str(mark))
        await event(r, "active", slow.id)
        nxt = await tasks.add.aenqueue(1, 1)

        slow_info = await failed_record(slow)
        assert slow_info.reason == "timeout"
        assert await nxt.aresult(timeout=10) == 2
        thread_returned_at = int(mark.read_text())
        next_info = await nxt.ainfo()
    assert next_info.started_at is not None and slow_info.finished_at is not None
    # the timeout was reported when it happened, not when the thread came back ...
    assert slow_info.finished_at <= thread_returned_at
    # ... but the slot stayed taken until then
    assert next_info.started_at >= thread_returned_at


# -- jobs that cannot run -----------------------------------------------------------


async def test_unknown_task_fails_naming_it_and_the_worker_keeps_going(
    app: Redwork, worker: Worker
) -> None:
    (ghost,) = await app.aenqueue_many([Envelope(id="ghost", task="no.such.task", queue="default")])
    info = await failed_record(ghost)
    assert (info.reason, info.attempt) == ("unknown_task", 1)
    assert "no.such.task" in info.error
    assert await (await tasks.add.aenqueue(1, 2)).aresult(timeout=10) == 3


@pytest.mark.parametrize(
    ("task", "args", "kwargs"),
    [
        (tasks.add, (1,), {}),
        (tasks.add, (1, 2, 3), {}),
        (tasks.add, (1,), {"z": 2}),
        (tasks.sync_add, (1, 2, 3), {}),
        (tasks.sync_add, (), {"x": 1}),
    ],
    ids=["async-missing", "async-extra", "async-unknown-kw", "sync-extra", "sync-missing"],
)
async def test_bad_arguments_fail_on_the_first_attempt_despite_retries(
    app: Redwork, worker: Worker, r: redis.Redis, task: Any, args: tuple, kwargs: dict
) -> None:
    handle = await task.options(retries=3, backoff=0.01).aenqueue(*args, **kwargs)
    info = await failed_record(handle)
    assert (info.reason, info.attempt) == ("bad_arguments", 1)
    assert task.name in info.error
    assert count_events(r, "default", "retry_scheduled") == 0


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"[1, 2]",
        b'{"v": 99, "id": "x", "task": "add", "queue": "default"}',
        b'{"v": true, "id": "x", "task": "add", "queue": "default"}',
    ],
    ids=["not-json", "not-an-object", "other-version", "version-true"],
)
async def test_malformed_job_document_fails_with_decode_error(
    app: Redwork, worker: Worker, r: redis.Redis, data: bytes
) -> None:
    assert run(r, Q.enqueue([NewJob("bad", data)], DAY_MS)) == [Code.OK]
    await event(r, "failed", "bad")
    info = await app.job("bad").ainfo()
    assert (info.state, info.reason, info.attempt) == (JobState.FAILED, "decode_error", 1)
    assert info.data == data
    assert await (await tasks.add.aenqueue(1, 2)).aresult(timeout=10) == 3


async def test_unserialisable_result_fails_with_result_encode_error(
    app: Redwork, worker: Worker, r: redis.Redis
) -> None:
    handle = await tasks.unserialisable.options(retries=2).aenqueue()
    info = await failed_record(handle)
    assert (info.state, info.reason, info.attempt) == (JobState.FAILED, "result_encode_error", 1)
    assert "unserialisable" in info.error
    assert r.zcard(Q.active) == 0


@pytest.mark.parametrize(
    ("task", "kind", "name"),
    [
        (tasks.raise_base, "exit", "SystemExit"),
        (tasks.raise_base, "interrupt", "KeyboardInterrupt"),
        (tasks.raise_base, "cancel", "CancelledError"),
        (tasks.sync_raise_base, "exit", "SystemExit"),
        (tasks.sync_raise_base, "interrupt", "KeyboardInterrupt"),
        (tasks.sync_raise_base, "cancel", "CancelledError"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
async def test_base_exception_in_task_is_a_retryable_failure_and_worker_survives(
    app: Redwork, worker: Worker, r: redis.Redis, task: Any, kind: str, name: str
) -> None:
    handle = await task.options(retries=1, backoff=0.01).aenqueue(kind)
    info = await failed_record(handle)
    assert (info.reason, info.attempt) == ("exception", 2)
    assert name in info.error
    assert count_events(r, "default", "retry_scheduled") == 1
    assert await (await tasks.add.aenqueue(1, 2)).aresult(timeout=10) == 3


# -- stopping -----------------------------------------------------------------------


@pytest.mark.cluster
async def test_graceful_stop_hands_running_jobs_back_with_attempt_unchanged(
    app: Redwork, r: redis.Redis
) -> None:
    async with running_worker(app, grace=0.2) as (w, run_task):
        long_async = await tasks.announce_sleep.aenqueue(30)
        long_sync = await tasks.sync_announce_sleep.aenqueue(1.5)
        for h in (long_async, long_sync):
            await started(r, h.id)
        assert await stop_worker(w, run_task, timeout=10, hard=False), "stop() was ignored"
    for h in (long_async, long_sync):
        returned = await event(r, "returned", h.id)
        assert returned["attempt"] == "0"
        info = await h.ainfo()
        assert (info.state, info.attempt, info.worker) == (JobState.WAITING, 0, None)
    assert sorted(r.lrange(Q.wait, 0, -1)) == sorted(
        [long_async.id.encode(), long_sync.id.encode()]
    )
    assert r.zcard(Q.active) == 0
    assert not r.exists(f"rw:worker:{w.id}")
    # the sync job's thread cannot be stopped: it runs on, and what it returns is dropped
    assert await asyncio.to_thread(r.blpop, [f"test:ended:{long_sync.id}"], 10) is not None
    assert (await long_sync.ainfo()).state is JobState.WAITING
    await app.client.aclose()


async def test_graceful_stop_lets_jobs_finish_within_grace(app: Redwork, r: redis.Redis) -> None:
    async with running_worker(app, grace=10) as (w, run_task):
        handle = await tasks.announce_sleep.aenqueue(0.3)
        await started(r, handle.id)
        assert await stop_worker(w, run_task, timeout=10, hard=False), "stop() was ignored"
    info = await handle.ainfo()
    assert (info.state, info.attempt, info.result_value()) == (JobState.COMPLETED, 1, w.id)
    assert count_events(r, "default", "returned") == 0
    await app.client.aclose()


@contextlib.contextmanager
def stop_when_fetcher_sends(
    worker: Worker, command: bytes, after_iterations: int
) -> Iterator[None]:
    """Call worker.stop() at a precise point of the fetcher's next `command` (EVALSHA,
    BZPOPMIN): `after_iterations` loop iterations after redis-py has written it to the
    socket. It watches the loop's task factory for the task in which redis-py writes
    (under asyncio.wait_for); nothing is replaced, the worker, redis-py and the server
    run as they are."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    fired = False

    def stop_later(n: int) -> None:
        if n == 0:
            worker.stop()
        else:
            loop.call_soon(stop_later, n - 1)

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Any, context: Any = None
    ) -> asyncio.Task[Any]:
        nonlocal fired
        task = asyncio.Task(coro, loop=loop, context=context)
        current = asyncio.current_task(loop)
        if (
            not fired
            and getattr(coro, "__qualname__", "").endswith("._send_packed_command")
            and current is not None
            and current.get_name() == "fetcher"
            and command in b"".join(coro.cr_frame.f_locals["command"])[:64].upper()
        ):
            fired = True
            task.add_done_callback(lambda _: stop_later(after_iterations))
        return task

    loop.set_task_factory(factory)
    try:
        yield
    finally:
        loop.set_task_factory(previous)
    assert fired, f"the fetcher sent no {command!r}"


async def test_stop_ends_the_worker_even_while_it_sends_a_command(app: Redwork) -> None:
    # Regression: run() used to cancel the fetcher, and on Python 3.11 asyncio.wait_for
    # (around every redis-py send) swallows a cancel landing as the send completes: the
    # fetcher looped on and run() never returned.
    w = Worker(app)
    run_task = asyncio.create_task(w.run())
    assert await (await tasks.add.aenqueue(1, 1)).aresult(timeout=10) == 2
    with stop_when_fetcher_sends(w, b"EVALSHA", after_iterations=0):
        handle = await tasks.add.aenqueue(2, 2)  # wakes the fetcher: it sends a fetch
        done, _ = await asyncio.wait({run_task}, timeout=3)
    ended_by_itself = await stop_worker(w, run_task, timeout=0)
    assert done and ended_by_itself, "stop() did not end Worker.run() within 3 s"
    # the job that fetch leased ran to the end or was handed back, never left leased
    assert (await handle.ainfo()).state in (JobState.COMPLETED, JobState.WAITING)
    await app.client.aclose()


async def test_stop_hands_back_jobs_fetched_but_not_yet_started(
    app: Redwork, r: redis.Redis
) -> None:
    # Regression: cancelling the fetcher while a fetch reply was in flight dropped the
    # jobs it leased (active until their lease ended, then recovered as a loss).
    w = Worker(app, app.settings.replace(grace=0.1))
    run_task = asyncio.create_task(w.run())
    assert await (await tasks.add.aenqueue(1, 1)).aresult(timeout=10) == 2
    # stop while the fetch that leases the job is on the wire (sent, reply not read)
    with stop_when_fetcher_sends(w, b"EVALSHA", after_iterations=2):
        handle = await tasks.sleep.aenqueue(30)
        await event(r, "active", handle.id)
        ended_by_itself = await stop_worker(w, run_task, timeout=3, hard=False)
    await app.client.aclose()
    assert ended_by_itself, "stop() did not end Worker.run()"
    info = await handle.ainfo()
    assert (info.state, info.attempt) == (JobState.WAITING, 0), (
        f"after stop() the job is {info.state.value}, leased to a worker that is gone"
    )


# -- prefetch -----------------------------------------------------------------------


@pytest.mark.cluster
async def test_prefetch_leases_jobs_beyond_free_slots_and_starts_them_as_slots_free(
    app: Redwork, r: redis.Redis
) -> None:
    async with running_worker(app, concurrency=1, prefetch=2) as (w, _):
        first = await tasks.announce_sleep.aenqueue(0.3)
        await started(r, first.id)
        queued = [await tasks.add.aenqueue(i, i) for i in range(3)]
        # Two of the three are leased to the busy worker at once; one stays waiting.
        await event(r, "active", queued[1].id)
        states = [(await h.ainfo()).state for h in queued]
        assert states == [JobState.ACTIVE, JobState.ACTIVE, JobState.WAITING]
        assert [await h.aresult(timeout=10) for h in queued] == [0, 2, 4]
        assert await first.aresult(timeout=10) == w.id


async def test_stop_hands_prefetched_jobs_back_at_once_without_spending_an_attempt(
    app: Redwork, r: redis.Redis
) -> None:
    async with running_worker(app, concurrency=1, prefetch=3, grace=30.0) as (w, task):
        running = await tasks.announce_sleep.aenqueue(0.5)
        await started(r, running.id)
        prefetched = [await tasks.add.aenqueue(i, 1) for i in range(3)]
        for h in prefetched:
            await event(r, "active", h.id)
        w.stop()
        for h in prefetched:
            returned = await event(r, "returned", h.id)
            assert returned["attempt"] == "0"
        # The running job still finishes within the grace period.
        assert await running.aresult(timeout=10) == w.id
        await asyncio.wait({task}, timeout=10)
        assert task.done()
    assert sorted(r.lrange(Q.wait, 0, -1)) == sorted(h.id.encode() for h in prefetched)


async def test_prefetched_jobs_keep_their_lease_while_they_wait(
    app: Redwork, r: redis.Redis
) -> None:
    # The test lease is 1 s: the prefetched job waits 2.5 s for the slot.
    async with running_worker(app, concurrency=1, prefetch=1) as (_w, _):
        slow = await tasks.announce_sleep.aenqueue(2.5)
        await started(r, slow.id)
        waiting = await tasks.add.aenqueue(1, 1)
        await event(r, "active", waiting.id)
        assert await waiting.aresult(timeout=15) == 2
        assert (await waiting.ainfo()).attempt == 1
    assert count_events(r, "default", "recovered") == 0


async def test_a_full_server_delays_reports_but_does_not_kill_the_worker(
    app: Redwork, r: redis.Redis
) -> None:
    async with running_worker(app) as (w, task):
        handle = await tasks.announce_sleep.aenqueue(0.3)
        await started(r, handle.id)
        r.config_set("maxmemory", "1")  # every write is refused with OOM from now on
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 1.0)
        finally:
            r.config_set("maxmemory", "0")
        assert await handle.aresult(timeout=15) == w.id
        assert not task.done()


@pytest.mark.parametrize("task", [tasks.sleep, tasks.sync_sleep], ids=["async", "sync"])
async def test_a_job_running_three_leases_keeps_its_lease_and_runs_once(
    app: Redwork, worker: Worker, r: redis.Redis, task: Any
) -> None:
    """Reliability plan C4: heartbeats renew the lease of a long job (lease 1 s here),
    so nobody takes it back and it runs once."""
    handle = await task.aenqueue(3.0)
    assert await handle.aresult(timeout=20) is not None
    info = await handle.ainfo()
    assert (info.attempt, info.state) == (1, JobState.COMPLETED)
    assert count_events(r, "default", "recovered") == 0
    assert count_events(r, "default", "active") == 1  # one delivery


def test_a_worker_whose_own_code_fails_exits_with_the_error_despite_a_running_thread(
    app: Redwork, settings: Settings
) -> None:
    # A bug in a role of the worker (not in a task) ends the process at once, logged and
    # with status 1, although a plain-function task still sleeps in its thread (the
    # interpreter's own exit would wait for it); its job is recovered by another worker.
    proc = subprocess.Popen(
        [sys.executable, "-m", "redwork", "worker", "tests.broken_worker:app"],
        env=worker_env(settings, processes=1),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        tasks.sync_sleep.enqueue(60)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1, stderr
    assert "the worker stopped on an error" in stderr
    assert "injected fault in a worker role" in stderr
