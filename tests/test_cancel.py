"""Cancelling jobs: withdrawn when they have not started (waiting, held behind their key,
delayed), asked to abort when running (tests/test_abort.py runs that with workers)."""

from __future__ import annotations

import pytest
import redis

from redwork import JobCancelled, JobNotFound, NotCancellable, Redwork
from redwork.job import Envelope
from redwork.queue import Completion, Failure, NewJob, Queue, run
from redwork.scripts import Code
from tests import tasks
from tests.conftest import DAY_MS, wait_for_event

Q = Queue("default")


def new(job_id: str, key: str | None = None) -> NewJob:
    return NewJob(job_id, Envelope(id=job_id, task="t", queue=Q.name).encode(1 << 20), key)


@pytest.mark.cluster
def test_a_waiting_job_is_withdrawn_and_its_waiters_told(app: Redwork, r: redis.Redis) -> None:
    handle = tasks.add.enqueue(1, 2)
    handle.cancel()
    assert handle.status().value == "cancelled"
    with pytest.raises(JobCancelled):
        handle.result(timeout=5)
    assert r.llen(Q.wait) == 0
    assert wait_for_event(r, "default", "cancelled", handle.id)["job"] == handle.id
    assert run(r, Q.counts()).stats["cancelled"] == 1
    assert 0 < r.ttl(Q.job_key(handle.id)) <= app.settings.result_ttl
    with pytest.raises(NotCancellable, match="cancelled"):
        handle.cancel()
    with pytest.raises(JobNotFound):
        app.job("no-such-job").cancel()


@pytest.mark.cluster
def test_a_running_job_is_asked_to_abort_and_an_ended_one_is_not_cancellable(
    r: redis.Redis,
) -> None:
    run(r, Q.enqueue([new("a"), new("b")], DAY_MS))
    leased = run(r, Q.fetch(1, 60_000, "w", 1 << 20)).deliveries
    assert run(r, Q.cancel([leased[0].id, "b", "nope"], 60)) == ["cancelling", Code.OK, "unknown"]
    assert r.hexists(Q.job_key(leased[0].id), "abort")
    assert run(r, Q.heartbeat([(leased[0].id, leased[0].token)], 60_000)) == ([], [leased[0].id])
    run(r, Q.complete([Completion(leased[0].id, leased[0].token, b"1")], 60))
    assert run(r, Q.cancel([leased[0].id], 60)) == ["completed"]


def test_a_delayed_retry_can_be_cancelled(r: redis.Redis) -> None:
    run(r, Q.enqueue([new("a")], DAY_MS))
    d = run(r, Q.fetch(1, 60_000, "w", 1 << 20)).deliveries[0]
    run(r, Q.fail([Failure("a", d.token, "exception", "x", retry_in_ms=60_000)]))
    assert run(r, Q.cancel(["a"], 60)) == [Code.OK]
    assert r.zcard(Q.delayed) == 0


def test_cancelling_a_keyed_job_keeps_the_key_moving(r: redis.Redis) -> None:
    run(r, Q.enqueue([new("a1", "A"), new("a2", "A"), new("a3", "A")], DAY_MS))
    assert run(r, Q.cancel(["a2"], 60)) == [Code.OK]  # held: leaves its key's line
    assert run(r, Q.counts()).held == 1
    assert run(r, Q.cancel(["a1"], 60)) == [Code.OK]  # the head: a3 takes its place
    assert [d.id for d in run(r, Q.fetch(5, 60_000, "w", 1 << 20)).deliveries] == ["a3"]
    assert run(r, Q.counts()).held == 0


async def test_async_cancel(app: Redwork) -> None:
    handle = await tasks.add.aenqueue(1, 2)
    await handle.acancel()
    assert (await handle.astatus()).value == "cancelled"
    await app.client.aclose()
