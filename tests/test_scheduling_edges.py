"""Edge cases of the server-side transitions found in review: each drives the scripts
directly (no worker), so the order of events is exact."""

from __future__ import annotations

import redis

from redwork.job import Envelope
from redwork.limits import Limit, set_limit
from redwork.queue import Completion, Failure, NewJob, Queue, StateWrite, run
from redwork.scripts import Code
from tests.conftest import DAY_MS

BIG = 1 << 20
Q = Queue("edges")


def job(job_id: str, task: str = "t", **fields: object) -> NewJob:
    document = Envelope(id=job_id, task=task, queue=Q.name, **fields)  # type: ignore[arg-type]
    return NewJob(job_id, document.encode(BIG))


def fetched(r: redis.Redis, count: int = 1, max_bytes: int = BIG) -> list[str]:
    return [d.id for d in run(r, Q.fetch(count, 60_000, "w", max_bytes)).deliveries]


def lease(r: redis.Redis, job_id: str) -> int:
    (delivery,) = run(r, Q.fetch(1, 60_000, "w", BIG)).deliveries
    assert delivery.id == job_id
    return delivery.token


def test_a_retry_priority_of_zero_is_kept(r: redis.Redis) -> None:
    run(r, Q.enqueue([NewJob("a", job("a").data, priority=5, retry_priority=0)], DAY_MS))
    token = lease(r, "a")
    run(r, Q.fail([Failure("a", token, "exception", "boom", retry_in_ms=0)]))
    run(r, Q.enqueue([NewJob("b", job("b").data, priority=3)], DAY_MS))
    assert fetched(r) == ["b"]  # the retry runs at 0, after b's 3
    assert fetched(r) == ["a"]


def test_a_job_buried_after_it_was_given_room_passes_its_turn(r: redis.Redis) -> None:
    run(r, set_limit(Q, "queue", Limit(concurrency=1)))
    run(r, Q.enqueue([job("x")], DAY_MS))
    token = lease(r, "x")
    big = job("big", kwargs={"pad": "y" * 2000})
    run(r, Q.enqueue([big, job("c")], DAY_MS))
    assert fetched(r, 2) == []  # both parked behind x
    run(r, Q.complete([Completion("x", token, b"1")], 60))  # big is given the room
    assert fetched(r, 1, max_bytes=1000) == []  # big is too large for this worker: buried
    assert fetched(r, 5) == ["c"]  # the turn went on: c is not stranded
    assert run(r, Q.counts()).limited == 0


def test_a_job_given_room_by_one_scope_queues_behind_another_scopes_parked_jobs(
    r: redis.Redis,
) -> None:
    run(r, set_limit(Q, "task:T", Limit(concurrency=1)))
    run(r, set_limit(Q, "group", Limit(concurrency=1)))
    run(r, Q.enqueue([job("x", "T", group="other")], DAY_MS))
    x = lease(r, "x")
    run(r, Q.enqueue([job("y", "U", group="g")], DAY_MS))
    y = lease(r, "y")
    run(r, Q.enqueue([job("j", "T", group="g")], DAY_MS))
    assert fetched(r) == []  # j waits for task T
    run(r, Q.enqueue([job("k", "V", group="g")], DAY_MS))
    assert fetched(r) == []  # k waits for group g
    run(r, Q.complete([Completion("x", x, b"1")], 60))
    assert fetched(r) == []  # j has task T's room, but group g is y's: j queues behind k
    run(r, Q.complete([Completion("y", y, b"1")], 60))
    assert fetched(r) == ["k"]


def test_a_job_asked_to_abort_whose_staged_writes_conflict_ends_cancelled(
    r: redis.Redis,
) -> None:
    run(r, Q.enqueue([job("a")], DAY_MS))
    token = lease(r, "a")
    assert run(r, Q.cancel(["a"], 60)) == ["cancelling"]
    stale = StateWrite("edges||k", b'{"v": 1}', etag=7)
    completion = Completion("a", token, b"1", [stale], retry_in_ms=0)
    assert run(r, Q.complete([completion], 60)) == [Code.CONFLICT]
    assert r.hget(Q.job_key("a"), "state") == b"cancelled"
    assert fetched(r) == []  # not retried
