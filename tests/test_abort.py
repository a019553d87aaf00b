"""Cancelling running jobs (abort) with real worker processes: an async task gets
CancelledError, a plain function sees current_job().cancel_requested; either way the job
ends `cancelled`, never retried. Also: the heartbeat fallback, a worker killed or stopped
while an abort is pending, the CLI and HTTP entry points, and progress reports.

The tasks (tests/tasks.py: abortable_sleep, sync_abortable) announce each run on
test:started:<id> (BLPOPed here), count runs in test:starts:<id> and record how each run
ended on test:ended:<id>."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest
import redis

from redwork import JobCancelled, JobFailed, JobHandle, JobState, Redwork
from redwork.queue import Queue, run
from tests import tasks
from tests.conftest import ApiProcess, WorkerProcess, job_events, wait_for_event
from tests.test_cli import ok, run_cli

Q = Queue("default")


def wait_started(r: redis.Redis, handle: JobHandle, timeout: float = 20.0) -> int:
    """Block until a run of the job's task has begun; its attempt."""
    reply = r.blpop([f"test:started:{handle.id}"], timeout=timeout)
    assert reply is not None, f"the task of job {handle.id} did not start in {timeout}s"
    return int(reply[1])


def wait_ended(r: redis.Redis, handle: JobHandle, timeout: float = 20.0) -> str:
    """Block until a run of the job's task has ended; how (see tests/tasks.py)."""
    reply = r.blpop([f"test:ended:{handle.id}"], timeout=timeout)
    assert reply is not None, f"the task of job {handle.id} did not end in {timeout}s"
    return str(reply[1].decode())


def starts(r: redis.Redis, handle: JobHandle) -> int:
    """How many times the job's task has begun a run."""
    return int(r.get(f"test:starts:{handle.id}") or 0)


def events_of(r: redis.Redis, job_id: str) -> list[str]:
    """The job's events in the queue's stream, oldest first."""
    return [
        job["event"]
        for _, raw in r.xrange(Q.events, "-", "+")
        for job in job_events(raw)
        if job["job"] == job_id
    ]


def assert_cancelled(r: redis.Redis, handle: JobHandle) -> None:
    with pytest.raises(JobCancelled):
        handle.result(timeout=20)
    record = handle.info()
    assert record.state is JobState.CANCELLED
    assert record.attempt == 1
    events = events_of(r, handle.id)
    assert events.count("cancelled") == 1
    # Ended for good: no retry, no second run, nothing left in the queue's structures.
    assert not {"retry_scheduled", "failed", "returned", "recovered"} & set(events), events
    assert r.zscore(Q.active, handle.id) is None and r.zscore(Q.delayed, handle.id) is None


@pytest.mark.parametrize("concurrency", [1, 10])
@pytest.mark.cluster
def test_a_running_async_task_is_cancelled_not_retried_and_the_worker_goes_on(
    app: Redwork,
    r: redis.Redis,
    spawn_worker: Callable[..., WorkerProcess],
    concurrency: int,
) -> None:
    spawn_worker(concurrency=concurrency)
    handle = tasks.abortable_sleep.options(retries=3, unique_key="u1").enqueue(60)
    assert wait_started(r, handle) == 1

    asked = time.monotonic()
    assert handle.cancel() == "cancelling"
    assert wait_ended(r, handle) == "cancelled"  # CancelledError inside the task
    assert_cancelled(r, handle)
    assert time.monotonic() - asked < 10  # promptly: the task would sleep for a minute
    assert events_of(r, handle.id) == ["enqueued", "active", "cancel_requested", "cancelled"]
    assert handle.info().cancel_requested

    # The worker goes on running jobs, and the uniqueness key was released.
    after = tasks.add.options(unique_key="u1").enqueue(2, 3)
    assert after.id != handle.id
    assert after.result(timeout=20) == 5
    assert starts(r, handle) == 1
    assert handle.status() is JobState.CANCELLED


@pytest.mark.parametrize(
    ("mode", "ended"),
    [("raise", "JobCancelled True"), ("flag", "RuntimeError True")],
)
def test_a_running_sync_task_that_looks_at_the_request_ends_cancelled(
    app: Redwork,
    r: redis.Redis,
    spawn_worker: Callable[..., WorkerProcess],
    mode: str,
    ended: str,
) -> None:
    spawn_worker()
    handle = tasks.sync_abortable.options(retries=3).enqueue(mode, 30)
    wait_started(r, handle)
    assert handle.cancel() == "cancelling"
    assert wait_ended(r, handle) == ended
    assert_cancelled(r, handle)
    # Its slot and thread are free again: the worker goes on.
    assert tasks.sync_add.enqueue(1, 2).result(timeout=20) == 3
    assert starts(r, handle) == 1


def test_a_sync_task_that_returns_despite_the_request_completes(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    spawn_worker()
    handle = tasks.sync_abortable.options(retries=3).enqueue("finish", 30)
    wait_started(r, handle)
    assert handle.cancel() == "cancelling"
    # It saw the request (it returns only once it is set) and returned all the same.
    assert wait_ended(r, handle) == "finished True"
    assert handle.result(timeout=20) == "finished"
    record = handle.info()
    assert record.state is JobState.COMPLETED and record.cancel_requested
    assert "cancelled" not in events_of(r, handle.id)
    assert starts(r, handle) == 1


def test_a_job_cancelled_before_it_starts_never_starts(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    # Waiting, at priority 0 and 5: withdrawn while no worker runs.
    waiting = [
        tasks.abortable_sleep.enqueue(0),
        tasks.abortable_sleep.options(priority=5).enqueue(0),
    ]
    assert [h.cancel() for h in waiting] == ["cancelled", "cancelled"]
    # Enqueued before the worker starts: its first fetch would take the others with it.
    marker = tasks.abortable_sleep.enqueue(0)
    spawn_worker()
    assert marker.result(timeout=20) == "returned"

    # Delayed: due in 1 s, cancelled at once; a later one (due in 1.5 s) runs.
    delayed = tasks.abortable_sleep.options(countdown=1.0).enqueue(0)
    assert delayed.status() is JobState.DELAYED
    assert delayed.cancel() == "cancelled"
    later = tasks.abortable_sleep.options(countdown=1.5).enqueue(0)
    assert later.result(timeout=20) == "returned"
    assert "promoted" in events_of(r, later.id)

    for handle in [*waiting, delayed]:
        with pytest.raises(JobCancelled):
            handle.result(timeout=5)
        assert handle.status() is JobState.CANCELLED
        events = events_of(r, handle.id)
        assert events[-1] == "cancelled" and events.count("cancelled") == 1
        assert not {"active", "promoted"} & set(events), events
        assert starts(r, handle) == 0
    assert r.zcard(Q.delayed) == 0
    assert run(r, Q.counts()).waiting == 0


def test_a_prefetched_job_cancelled_before_it_starts_never_starts(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    spawn_worker(concurrency=1, prefetch=1)
    busy = tasks.abortable_sleep.enqueue(60)
    wait_started(r, busy)
    # Leased into the worker's prefetch buffer while its one slot is busy: `active` in
    # Redis, so cancelling it asks the worker, which drops it unstarted.
    buffered = tasks.abortable_sleep.enqueue(0)
    wait_for_event(r, "default", "active", buffered.id)
    assert buffered.cancel() == "cancelling"
    wait_for_event(r, "default", "cancelled", buffered.id)
    assert_cancelled(r, buffered)
    assert starts(r, buffered) == 0

    assert busy.cancel() == "cancelling"
    assert wait_ended(r, busy) == "cancelled"
    assert_cancelled(r, busy)
    assert tasks.add.enqueue(1, 2).result(timeout=20) == 3
    assert starts(r, buffered) == 0


def test_a_worker_killed_while_an_abort_is_pending_leaves_the_job_cancelled(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    first = spawn_worker()
    handle = tasks.abortable_sleep.options(retries=3, unique_key="u4").enqueue(60)
    assert wait_started(r, handle) == 1
    first.kill(signal.SIGSTOP)  # it cannot react to the abort
    assert handle.cancel() == "cancelling"
    first.kill(signal.SIGKILL)
    first.wait()
    assert r.llen(f"test:ended:{handle.id}") == 0  # the run never saw the abort

    spawn_worker()  # its recovery finds the lease (1 s) expired
    wait_for_event(r, "default", "cancelled", handle.id, timeout=20)
    assert_cancelled(r, handle)
    assert events_of(r, handle.id) == ["enqueued", "active", "cancel_requested", "cancelled"]
    # Not run again: the rescuer runs other jobs (the uniqueness key is free), not it.
    after = tasks.add.options(unique_key="u4").enqueue(1, 1)
    assert after.id != handle.id and after.result(timeout=20) == 2
    assert starts(r, handle) == 1


def test_a_stopping_worker_hands_back_a_job_asked_to_abort_as_cancelled(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    worker = spawn_worker()  # grace 2 s
    handle = tasks.sync_abortable.enqueue("deaf", 30)  # ignores the request, sleeps 30 s
    wait_started(r, handle)
    assert handle.cancel() == "cancelling"
    worker.kill(signal.SIGTERM)  # once: drain within the grace period, then hand back
    assert worker.wait(timeout=20) == 0
    assert r.llen(f"test:ended:{handle.id}") == 0  # it did not wait for the thread
    assert_cancelled(r, handle)

    spawn_worker()
    assert tasks.add.enqueue(1, 1).result(timeout=20) == 2
    assert starts(r, handle) == 1
    assert handle.status() is JobState.CANCELLED


def test_a_run_that_fails_as_the_abort_arrives_is_not_retried(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    spawn_worker()
    handle = tasks.fail_as_aborted.options(retries=3, backoff=0.01).enqueue()
    wait_started(r, handle)  # its first run now blocks the worker's loop
    assert handle.cancel() == "cancelling"
    r.rpush(f"test:go:{handle.id}", 1)  # it raises before the worker sees the abort
    assert_cancelled(r, handle)
    assert starts(r, handle) == 1


def test_a_heartbeat_reports_an_abort_nobody_published(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    spawn_worker()
    handle = tasks.abortable_sleep.enqueue(60)
    wait_started(r, handle)
    asked = time.monotonic()
    r.hset(Q.job_key(handle.id), "abort", 1)  # as cancel.lua does, without the PUBLISH
    assert wait_ended(r, handle) == "cancelled"
    # Heartbeats come every lease/3 (0.33 s here); the bound is generous.
    assert time.monotonic() - asked < 5
    assert_cancelled(r, handle)
    assert "cancel_requested" not in events_of(r, handle.id)


def test_cli_job_cancel(
    app: Redwork, redis_url: str, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    waiting = tasks.abortable_sleep.enqueue(0)
    assert ok(run_cli("job", "cancel", waiting.id, redis_url=redis_url)) == (
        f"job {waiting.id}: cancelled\n"
    )
    assert waiting.status() is JobState.CANCELLED
    again = run_cli("job", "cancel", waiting.id, "-q", "default", redis_url=redis_url)
    assert again.returncode == 1 and "cancelled" in again.stderr

    spawn_worker()
    running = tasks.abortable_sleep.enqueue(60)
    wait_started(r, running)
    assert ok(run_cli("job", "cancel", running.id, redis_url=redis_url)) == (
        f"job {running.id}: cancelling\n"
    )
    assert wait_ended(r, running) == "cancelled"
    assert_cancelled(r, running)
    assert starts(r, waiting) == 0

    missing = run_cli("job", "cancel", "no-such-job", redis_url=redis_url)
    assert missing.returncode == 1 and "no job no-such-job" in missing.stderr


@pytest.fixture
def http(api: ApiProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=30) as client:
        yield client


def test_http_cancel_of_a_running_job_and_of_a_completed_one(
    app: Redwork,
    r: redis.Redis,
    http: httpx.Client,
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    spawn_worker()
    running = tasks.abortable_sleep.enqueue(60)
    wait_started(r, running)
    reply = http.post(f"/api/jobs/{running.id}/cancel")
    assert reply.status_code == 200, reply.text
    view = reply.json()
    assert view["id"] == running.id and view["cancel_requested"] is True
    # The worker may have ended it already by the time the view was read.
    assert view["state"] in ("active", "cancelled")
    assert wait_ended(r, running) == "cancelled"
    assert_cancelled(r, running)
    assert http.get(f"/api/jobs/{running.id}").json()["state"] == "cancelled"
    assert http.post(f"/api/jobs/{running.id}/cancel").status_code == 409

    done = tasks.add.enqueue(1, 2)
    assert done.result(timeout=20) == 3
    refused = http.post(f"/api/jobs/{done.id}/cancel")
    assert refused.status_code == 409 and "completed" in refused.json()["error"]
    assert done.status() is JobState.COMPLETED


@pytest.mark.parametrize("task_name", ["progress_fraction", "sync_progress_fraction"])
def test_progress_is_stored_published_and_shown(
    app: Redwork,
    redis_url: str,
    r: redis.Redis,
    spawn_worker: Callable[..., WorkerProcess],
    task_name: str,
) -> None:
    task = getattr(tasks, task_name)
    spawn_worker()
    handle = task.enqueue(0.5, "half")
    assert handle.result(timeout=20) == "reported"
    expected = {"fraction": 0.5, "message": "half"}
    record = handle.info()
    assert record.progress is not None and record.progress_value() == expected
    assert record.as_dict()["progress"] == expected
    wait_for_event(r, "default", "progress", handle.id)
    (raw,) = [raw for _, raw in r.xrange(Q.events, "-", "+") if raw[b"event"] == b"progress"]
    assert orjson.loads(raw[b"progress"]) == expected  # the event carries the value
    shown = orjson.loads(ok(run_cli("job", "show", handle.id, redis_url=redis_url)))
    assert shown["progress"] == expected

    bad = task.enqueue(1.5, "too far")
    with pytest.raises(JobFailed):
        bad.result(timeout=20)
    failed = bad.info()
    assert (failed.state, failed.reason) == (JobState.FAILED, "exception")
    assert failed.error is not None and "ValueError" in failed.error
    assert failed.progress is None
    assert "progress" not in events_of(r, bad.id)
