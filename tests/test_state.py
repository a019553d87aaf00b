"""Versioned state: Dapr's layout, etags (first write wins), bulk operations, staged
writes that commit with a job's completion, fenced writes from running jobs."""

from __future__ import annotations

import logging
import threading

import pytest
import redis

from redwork import Redwork, SerializationError, Settings, StateConflict
from redwork.context import JobContext, enter_job, leave_job
from redwork.errors import InvalidName, LeaseLost, RedworkError
from redwork.job import Envelope
from redwork.queue import Completion, NewJob, Queue, StateWrite, run
from redwork.scripts import Code
from redwork.server import ServerProcess
from tests.conftest import DAY_MS


@pytest.fixture
def goapp(settings: Settings) -> Redwork:
    return Redwork("goapp", settings=settings)


def test_saves_use_dapr_layout_and_the_version_grows_by_one(goapp: Redwork, r: redis.Redis) -> None:
    store = goapp.state("redis-state")
    assert store.get("m-1") is None
    assert store.save("m-1", {"id": "m-1", "message": "hello!"}) == 1
    assert r.hgetall("goapp||m-1") == {
        b"data": b'{"id":"m-1","message":"hello!"}',
        b"version": b"1",
    }
    assert store.save("m-1", {"id": "m-1", "message": "hello! "}) == 2
    item = store.get("m-1")
    assert item is not None
    assert (item.key, item.value, item.etag) == ("m-1", {"id": "m-1", "message": "hello! "}, 2)


def test_a_stale_etag_is_a_conflict_and_writes_nothing(goapp: Redwork, r: redis.Redis) -> None:
    store = goapp.state("s")
    store.save("k", 1)
    assert store.save("k", 2, etag=1) == 2
    with pytest.raises(StateConflict) as caught:
        store.save("k", 3, etag=1)  # the second writer that read version 1
    assert (caught.value.key, caught.value.expected, caught.value.actual) == ("k", 1, 2)
    assert "version 2" in str(caught.value)
    with pytest.raises(StateConflict):
        store.save("absent", 1, etag=1)
    item = store.get("k")
    assert item is not None and (item.value, item.etag) == (2, 2)
    assert not r.exists("goapp||absent")


def test_etag_0_means_the_entry_must_not_exist(goapp: Redwork) -> None:
    store = goapp.state("s")
    assert store.save("new", 1, etag=0) == 1
    with pytest.raises(StateConflict):
        store.save("new", 2, etag=0)


def test_a_key_holding_something_else_is_refused_and_nothing_is_written(
    goapp: Redwork, r: redis.Redis
) -> None:
    r.set("goapp||taken", "a plain string")
    store = goapp.state("s")
    with pytest.raises(StateConflict, match="holds a string"):
        store.save_many({"fine": 1, "taken": 2})
    assert store.get("fine") is None  # all or none
    assert store.save_many({}) == []


def test_bulk_save_is_all_or_nothing_and_bulk_get_reads_every_key(goapp: Redwork) -> None:
    store = goapp.state("s")
    assert store.save_many({"a": {"n": 1}, "b": {"n": 2}}) == [1, 1]
    with pytest.raises(StateConflict) as caught:
        store.save_many({"a": {"n": 10}, "b": {"n": 20}}, etags={"a": 1, "b": 7})
    assert caught.value.key == "b"
    items = store.get_many(["a", "b", "c"])
    assert items["c"] is None
    assert [(items[k].value, items[k].etag) for k in "ab"] == [({"n": 1}, 1), ({"n": 2}, 1)]  # type: ignore[union-attr]


def test_delete_honours_its_etag(goapp: Redwork) -> None:
    store = goapp.state("s")
    store.save("k", "v")
    with pytest.raises(StateConflict):
        store.delete("k", etag=5)
    assert store.get("k") is not None
    store.delete("k", etag=1)
    assert store.get("k") is None
    store.delete("k")  # absent, unconditional: nothing to do
    assert store.save("k", "again") == 1  # a deleted entry starts over


async def test_async_twins(goapp: Redwork) -> None:
    store = goapp.state("s")
    assert await store.asave("k", [1]) == 1
    assert await store.asave_many({"k": [1, 2], "j": 0}, etags={"k": 1}) == [2, 1]
    item = await store.aget("k")
    assert item is not None and item.value == [1, 2]
    assert (await store.aget_many(["j"]))["j"].etag == 1  # type: ignore[union-attr]
    await store.adelete("k", etag=2)
    assert await store.aget("k") is None
    await goapp.client.aclose()


def test_bad_keys_and_values_are_refused_with_a_reason(goapp: Redwork) -> None:
    store = goapp.state("s")
    with pytest.raises(InvalidName, match="state key"):
        store.save("", 1)
    with pytest.raises(SerializationError, match="not JSON"):
        store.save("k", object())
    with pytest.raises(RedworkError, match="staged"):
        store.staged()  # not in a job
    with pytest.raises(RedworkError, match="running in a job"):
        goapp.report_progress(1)


class _Retrying(logging.Handler):
    """Set once redwork logs that it retries a call because the server is away."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "server unavailable" in record.getMessage():
            self.seen.set()


def test_reads_ride_out_a_server_restart(goapp: Redwork, server: ServerProcess) -> None:
    """A task reading state while the server restarts waits for it (reconnect_for)
    instead of failing its run; found by the chaos run (bench/chaos.py)."""
    store = goapp.state("s")
    store.save("k", 1)  # connected: the read below finds its connection broken
    retrying = _Retrying()
    logging.getLogger("redwork.connection").addHandler(retrying)
    try:
        server.sigkill()
        result: list[object] = []
        reader = threading.Thread(target=lambda: result.append(store.get_many(["k"])["k"]))
        reader.start()
        assert retrying.seen.wait(15), "the read did not wait for the server"
        server.start()
        reader.join(30)
    finally:
        logging.getLogger("redwork.connection").removeHandler(retrying)
    assert len(result) == 1 and getattr(result[0], "value", None) == 1


def test_key_prefix_separates_stores(goapp: Redwork, r: redis.Redis) -> None:
    goapp.state("a", key_prefix="orders").save("k", 1)
    goapp.state("b").save("k", 2)
    assert r.hget("orders||k", "data") == b"1"
    assert r.hget("goapp||k", "data") == b"2"


# -- fencing and staged writes, at the level of the scripts ---------------------------

Q = Queue("default")
IN_QUEUE_SLOT = f"{{{Q.name}}}"
"""A key prefix that keeps a store's entries in the slot of Q, as a cluster needs."""


def lease_one(r: redis.Redis, job_id: str = "j") -> tuple[str, int]:
    data = Envelope(id=job_id, task="t", queue=Q.name).encode(1 << 20)
    run(r, Q.enqueue([NewJob(job_id, data)], DAY_MS))
    delivery = run(r, Q.fetch(1, 60_000, "w", 1 << 20)).deliveries[0]
    return delivery.id, delivery.token


@pytest.mark.cluster
def test_writes_from_a_job_are_fenced_by_its_lease(goapp: Redwork, r: redis.Redis) -> None:
    job_id, token = lease_one(r)
    store = goapp.state("s", key_prefix=IN_QUEUE_SLOT)
    context = JobContext(job_id, Q.name, 1, 1, "w", token)
    entered = enter_job(context)
    try:
        assert store.save("k", "current delivery") == 1
        stale = enter_job(JobContext(job_id, Q.name, 1, 1, "w", token - 1))
        with pytest.raises(LeaseLost, match="lost its lease"):
            store.save("k", "an earlier delivery")
        leave_job(stale)
    finally:
        leave_job(entered)
    run(r, Q.complete([Completion(job_id, token, b"null")], 60))
    entered = enter_job(context)
    try:
        with pytest.raises(LeaseLost):
            store.save("k", "after the job completed")
    finally:
        leave_job(entered)
    item = store.get("k")
    assert item is not None and (item.value, item.etag) == ("current delivery", 1)


@pytest.mark.cluster
def test_staged_writes_commit_with_the_completion_once(goapp: Redwork, r: redis.Redis) -> None:
    job_id, token = lease_one(r)
    key = goapp.state("s", key_prefix=IN_QUEUE_SLOT).redis_key("k")
    writes = [StateWrite(key, b'"v"', None)]
    done = Completion(job_id, token, b"null", writes)
    assert run(r, Q.complete([done], 60)) == [Code.OK]
    # The reporter repeats a call whose reply it lost: the job is done, nothing applies twice.
    assert run(r, Q.complete([done], 60)) == [Code.ALREADY_DONE]
    assert r.hgetall(key) == {b"data": b'"v"', b"version": b"1"}


def test_a_staged_conflict_writes_nothing_and_fails_the_run(goapp: Redwork, r: redis.Redis) -> None:
    store = goapp.state("s")
    store.save("k", "someone else")  # version 1
    job_id, token = lease_one(r)
    writes = [
        StateWrite(store.redis_key("other"), b'"x"', None),
        StateWrite(store.redis_key("k"), b'"mine"', 0),  # the job read version 0
    ]
    reply = run(r, Q.complete([Completion(job_id, token, b"null", writes, retry_in_ms=-1)], 60))
    assert reply == [Code.CONFLICT]
    record = run(r, Q.job(job_id))
    assert (record.state.value, record.reason) == ("failed", "conflict")
    assert "version 1" in (record.error or "")
    assert store.get("other") is None
    assert store.get("k").value == "someone else"  # type: ignore[union-attr]
    assert not r.zscore(Q.active, job_id)


def test_a_staged_conflict_with_a_retry_left_is_scheduled_again(
    goapp: Redwork, r: redis.Redis
) -> None:
    store = goapp.state("s")
    store.save("k", 1)
    job_id, token = lease_one(r)
    writes = [StateWrite(store.redis_key("k"), b"2", 5)]
    run(r, Q.complete([Completion(job_id, token, b"null", writes, retry_in_ms=0)], 60))
    assert run(r, Q.job(job_id)).state.value == "delayed"
    again = run(r, Q.fetch(1, 60_000, "w", 1 << 20)).deliveries
    assert [d.id for d in again] == [job_id]
    assert run(r, Q.counts()).stats["conflicts"] == 1


def test_a_staged_write_to_a_key_of_another_type_fails_the_job_and_writes_nothing(
    goapp: Redwork, r: redis.Redis
) -> None:
    r.set("goapp||taken", "x")
    first, first_token = lease_one(r, "first")
    second, second_token = lease_one(r, "second")
    good = [StateWrite("goapp||fine", b"1", None)]
    bad = [StateWrite("goapp||taken", b"2", None)]
    batch = [
        Completion(first, first_token, b"null", good),
        Completion(second, second_token, b"null", bad, retry_in_ms=0),
    ]
    assert run(r, Q.complete(batch, 60)) == [Code.OK, Code.CONFLICT]
    record = run(r, Q.job(second))
    assert (record.state.value, record.reason) == ("failed", "conflict")  # no retry: futile
    assert "holds a string" in (record.error or "")
    assert r.get("goapp||taken") == b"x"
    assert r.hget("goapp||fine", "data") == b"1"
    assert r.zcard(Q.active) == 0


async def test_staged_reads_see_the_jobs_own_writes(goapp: Redwork) -> None:
    store = goapp.state("s")
    store.save("k", "live")
    context = JobContext("j", Q.name, 1, 1, "w", 1)
    entered = enter_job(context)
    try:
        staged = store.staged()
        assert staged.get("k").value == "live"  # type: ignore[union-attr]
        staged.save("k", "first", etag=1)
        staged.save("k", "second", etag=None)
        assert (await staged.aget("k")).value == "second"  # type: ignore[union-attr]
        staged.delete("gone")
        assert staged.get("gone") is None
    finally:
        leave_job(entered)
    assert store.get("k").value == "live"  # type: ignore[union-attr]  # nothing committed
    writes = context.staged
    # One write per key: the last value, checked against the first etag given.
    assert writes[store.redis_key("k")] == StateWrite(store.redis_key("k"), b'"second"', 1)
    assert writes[store.redis_key("gone")].value is None
    await goapp.client.aclose()
