"""The app/client API, sync and async: enqueue, handles, results, errors, settings."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from redwork import (
    JobEvent,
    JobFailed,
    JobNotFound,
    JobState,
    PayloadTooLarge,
    Redwork,
    ResultTimeout,
    SerializationError,
    Settings,
    Worker,
)
from redwork.errors import ConfigurationError, InvalidName, ServerPolicyError
from redwork.queue import QUEUES_KEY, Completion, Queue, run
from tests import tasks
from tests.conftest import stop_worker, until

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
def thread_worker(app: Redwork) -> Iterator[Worker]:
    """A Worker running in a background thread with its own event loop (for sync tests)."""
    started: concurrent.futures.Future[tuple[Worker, asyncio.Task[None]]] = (
        concurrent.futures.Future()
    )
    loop = asyncio.new_event_loop()

    async def main() -> None:
        worker = Worker(app)
        task = asyncio.create_task(worker.run())
        started.set_result((worker, task))
        await asyncio.wait({task})

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    worker, task = started.result(timeout=10)
    yield worker
    stopped = asyncio.run_coroutine_threadsafe(stop_worker(worker, task), loop).result(20)
    thread.join(10)
    assert not thread.is_alive(), "the worker thread did not stop"
    loop.close()
    assert stopped, "Worker.run() did not return after stop()"


@pytest.fixture
def offline_app() -> Redwork:
    """An app whose server is a closed port: any Redis call it made would fail (at once:
    reconnect_for=0 turns off the producer's retrying)."""
    settings = Settings.load(env={}, redis_url=CLOSED_PORT_URL, reconnect_for=0)
    return Redwork("offline", settings=settings)


# -- enqueue and results, sync ------------------------------------------------------


@pytest.mark.cluster
def test_sync_enqueue_then_result_with_a_running_worker(
    app: Redwork, thread_worker: Worker
) -> None:
    handle = tasks.sync_add.enqueue(2, 40)
    assert handle.result(timeout=10) == 42
    assert handle.status() is JobState.COMPLETED
    assert tasks.add.enqueue(x=1, y=2).result(timeout=10) == 3


async def test_the_result_of_an_ended_job_is_read_without_a_subscription(
    app: Redwork, r: redis.Redis
) -> None:
    """A subscription takes a connection of its own (opened anew each time): reading the
    results of jobs that have ended, the common case, needs none."""
    handle = tasks.add.enqueue(1, 2)
    worker = Worker(app)
    running = asyncio.create_task(worker.run())
    assert await handle.aresult(timeout=10) == 3
    assert await stop_worker(worker, running)
    # The producer's connections are open (a closed subscription leaves its connection
    # in the pool, closed: the next read may take and reopen it).
    app.client.job("default", handle.id)
    await app.client.ajob("default", handle.id)
    before = r.info("stats")["total_connections_received"]
    assert [handle.result(timeout=1) for _ in range(3)] == [3, 3, 3]
    assert [await handle.aresult(timeout=1) for _ in range(3)] == [3, 3, 3]
    assert r.info("stats")["total_connections_received"] == before


def test_sync_result_of_failed_job_raises_job_failed_with_reason(
    app: Redwork, thread_worker: Worker
) -> None:
    handle = tasks.boom.options(retries=0).enqueue("kaput")
    with pytest.raises(JobFailed) as caught:
        handle.result(timeout=10)
    assert caught.value.job_id == handle.id
    assert caught.value.error.startswith("exception:")
    assert "ValueError: kaput" in caught.value.error


def test_result_times_out_when_nobody_runs_the_job(app: Redwork) -> None:
    handle = tasks.add.enqueue(1, 2)
    with pytest.raises(ResultTimeout) as caught:
        handle.result(timeout=0.2)
    assert isinstance(caught.value, TimeoutError)
    assert handle.status() is JobState.WAITING


async def test_async_result_times_out_when_nobody_runs_the_job(app: Redwork) -> None:
    handle = await tasks.add.aenqueue(1, 2)
    with pytest.raises(ResultTimeout):
        await handle.aresult(timeout=0.2)
    assert await handle.astatus() is JobState.WAITING
    await app.client.aclose()


def test_enqueue_many_stores_1100_jobs_in_two_script_calls(app: Redwork, r: redis.Redis) -> None:
    # The first 100 go in a call of their own, so workers can start on them at once.
    envelopes = [tasks.add.prepare(i, i) for i in range(1100)]
    app.client.redis()  # connect (and check the server) before counting calls
    r.config_resetstat()

    handles = app.enqueue_many(envelopes)

    stats = r.info("commandstats")
    ok_calls = sum(
        s["calls"] - s.get("failed_calls", 0) - s.get("rejected_calls", 0)
        for name, s in stats.items()
        if name in ("cmdstat_evalsha", "cmdstat_eval")
    )
    assert ok_calls == 2
    assert len(handles) == 1100
    assert {h.id for h in handles} == {e.id for e in envelopes}
    assert r.llen(Queue("default").wait) == 1100
    assert r.hget(Queue("default").stats, "enqueued") == b"1100"


def test_enqueue_many_encodes_everything_before_storing_anything(
    app: Redwork, r: redis.Redis
) -> None:
    good, bad = tasks.add.prepare(1, 2), tasks.add.prepare(object(), 2)
    with pytest.raises(SerializationError):
        app.enqueue_many([good, bad])
    assert r.llen(Queue("default").wait) == 0
    assert not r.exists(Queue("default").job_key(good.id))


# -- handles ------------------------------------------------------------------------


@pytest.mark.cluster
def test_handle_status_and_info_follow_the_job(app: Redwork, r: redis.Redis) -> None:
    handle = tasks.add.options(retries=2).enqueue(3, 4)
    info = handle.info()
    assert (info.id, info.queue, info.state, info.attempt) == (handle.id, "default", "waiting", 0)
    assert info.envelope is not None
    assert (info.envelope.task, info.envelope.args, info.envelope.retry.max_attempts) == (
        "add",
        [3, 4],
        3,
    )
    assert info.as_dict()["task"] == "add"

    q = Queue("default")
    (d,) = run(r, q.fetch(1, 60_000, "w1", 1 << 20)).deliveries
    assert handle.status() is JobState.ACTIVE
    assert handle.info().worker == "w1"
    run(r, q.complete([Completion(d.id, d.token, b"7")], 60))
    assert handle.status() is JobState.COMPLETED
    assert handle.result(timeout=1) == 7
    assert app.job(handle.id).info().result_value() == 7


def test_info_of_unknown_job_raises_job_not_found(app: Redwork) -> None:
    with pytest.raises(JobNotFound):
        app.job("does-not-exist").info()


# -- enqueue options ----------------------------------------------------------------


def test_options_route_to_another_queue_and_name_the_job(app: Redwork, r: redis.Redis) -> None:
    handle = tasks.add.options(queue="other", job_id="x1").enqueue(1, 2)
    assert (handle.queue, handle.id) == ("other", "x1")
    assert r.lrange(Queue("other").wait, 0, -1) == [b"x1"]
    assert r.llen(Queue("default").wait) == 0
    assert r.sismember(QUEUES_KEY, "other")
    assert handle.info().envelope.queue == "other"  # type: ignore[union-attr]


@pytest.mark.cluster
def test_second_enqueue_with_same_job_id_creates_no_second_job(
    app: Redwork, r: redis.Redis
) -> None:
    first = tasks.add.options(job_id="once").enqueue(1, 2)
    second = tasks.add.options(job_id="once").enqueue(10, 20)
    assert first.id == second.id == "once"
    assert r.lrange(Queue("default").wait, 0, -1) == [b"once"]
    assert r.hget(Queue("default").stats, "enqueued") == b"1"
    assert first.info().envelope.args == [1, 2]  # type: ignore[union-attr]


async def test_async_second_enqueue_with_same_job_id_creates_no_second_job(
    app: Redwork, r: redis.Redis
) -> None:
    await tasks.add.options(job_id="once").aenqueue(1, 2)
    await tasks.add.options(job_id="once").aenqueue(1, 2)
    assert r.lrange(Queue("default").wait, 0, -1) == [b"once"]
    await app.client.aclose()


@pytest.mark.parametrize("job_id", ["a b", "{x}", "x/y", "x" * 129])
def test_invalid_job_id_raises_invalid_name(app: Redwork, job_id: str) -> None:
    with pytest.raises(InvalidName):
        tasks.add.options(job_id=job_id).enqueue(1, 2)


def test_job_id_with_trailing_newline_is_refused(app: Redwork, r: redis.Redis) -> None:
    # `$` in a regex also matches before a final newline; such an id would be stored,
    # then buried by fetch as a raw entry (its own check is stricter)
    with pytest.raises(InvalidName):
        tasks.add.options(job_id="x1\n").enqueue(1, 2)
    assert r.llen(Queue("default").wait) == 0


# -- errors raised before any Redis call --------------------------------------------


def test_non_json_args_raise_serialization_error_before_any_redis_call(
    offline_app: Redwork,
) -> None:
    @offline_app.task(name="echo")
    def echo(value: object) -> object:
        return value

    with pytest.raises(SerializationError):
        echo.enqueue(object())
    with pytest.raises(SerializationError):
        echo.enqueue({1, 2})
    # the same app does reach for the (closed) server once the payload is fine
    with pytest.raises(redis.exceptions.ConnectionError):
        echo.enqueue("fine")


def test_oversized_payload_raises_payload_too_large_before_any_redis_call(
    offline_app: Redwork,
) -> None:
    @offline_app.task(name="echo")
    def echo(value: object) -> object:
        return value

    limit = offline_app.settings.max_payload
    with pytest.raises(PayloadTooLarge) as caught:
        echo.enqueue("x" * limit)
    assert str(limit) in str(caught.value)


async def test_async_enqueue_errors_come_before_any_redis_call() -> None:
    offline = Redwork(
        "offline",
        settings=Settings.load(env={}, redis_url=CLOSED_PORT_URL, max_payload=100, reconnect_for=0),
    )

    @offline.task(name="echo")
    async def echo(value: object) -> object:
        return value

    with pytest.raises(SerializationError):
        await echo.aenqueue(object())
    with pytest.raises(PayloadTooLarge):
        await echo.aenqueue("x" * 100)


# -- server checks ------------------------------------------------------------------


@pytest.fixture
def evicting_server(r: redis.Redis) -> Iterator[None]:
    old = r.config_get("maxmemory-policy")["maxmemory-policy"]
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        yield
    finally:
        r.config_set("maxmemory-policy", old)


def test_client_refuses_a_server_that_evicts_keys(
    settings: Settings, evicting_server: None, r: redis.Redis
) -> None:
    app = Redwork("evict", settings=settings)

    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(ServerPolicyError, match="maxmemory-policy"):
        t.enqueue()
    assert r.dbsize() == 0


async def test_async_client_and_worker_refuse_a_server_that_evicts_keys(
    settings: Settings, evicting_server: None
) -> None:
    app = Redwork("evict", settings=settings)

    @app.task(name="t")
    async def t() -> None: ...

    with pytest.raises(ServerPolicyError, match="maxmemory-policy"):
        await t.aenqueue()
    with pytest.raises(ServerPolicyError, match="maxmemory-policy"):
        await asyncio.wait_for(Worker(app).run(), 10)


# -- settings -----------------------------------------------------------------------


def test_settings_load_reads_redwork_env() -> None:
    s = Settings.load(
        env={
            "REDWORK_REDIS_URL": "redis://h:1/2",
            "REDWORK_QUEUES": "high, low,,",
            "REDWORK_CONCURRENCY": "7",
            "REDWORK_LEASE": "2.5",
            "REDWORK_FSYNC": "always",
            "REDWORK_DATA_DIR": "/tmp/rw",
            "REDWORK_LOG_LEVEL": "DEBUG",
            "REDWORK_MAX_LOSSES": "",  # empty means unset
            "OTHER_CONCURRENCY": "99",
        }
    )
    assert s.redis_url == "redis://h:1/2"
    assert s.queues == ("high", "low")
    assert (s.concurrency, s.lease, s.fsync, s.log_level) == (7, 2.5, "always", "DEBUG")
    assert s.data_dir == Path("/tmp/rw")
    assert s.max_losses == Settings().max_losses
    assert s.lease_ms == 2500


def test_settings_explicit_values_win_over_env() -> None:
    env = {"REDWORK_CONCURRENCY": "7", "REDWORK_QUEUES": "a", "REDWORK_GRACE": "9"}
    s = Settings.load(env=env, concurrency=3, queues=("b",), grace=None)
    assert (s.concurrency, s.queues, s.grace) == (3, ("b",), 9.0)


def test_app_settings_come_from_keyword_arguments() -> None:
    app = Redwork("kw", settings=Settings.load(env={}), concurrency=4, redis_url=CLOSED_PORT_URL)
    assert (app.settings.concurrency, app.settings.redis_url) == (4, CLOSED_PORT_URL)


@pytest.mark.parametrize(
    ("env", "explicit"),
    [
        ({"REDWORK_CONCURRENCY": "many"}, {}),
        ({"REDWORK_LEASE": "1s"}, {}),
        ({"REDWORK_FSYNC": "never"}, {}),
        ({"REDWORK_QUEUES": " , "}, {}),
        ({}, {"concurrency": 0}),
        ({}, {"processes": 0}),
        ({}, {"lease": 0}),
        ({}, {"block_timeout": -1}),
        ({}, {"grace": -0.1}),
        ({}, {"max_losses": 0}),
        ({}, {"queues": ()}),
    ],
)
def test_invalid_settings_raise_configuration_error(
    env: dict[str, str], explicit: dict[str, object]
) -> None:
    with pytest.raises(ConfigurationError):
        Settings.load(env=env, **explicit)


def test_invalid_settings_of_an_app_raise_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        Redwork("bad", settings=Settings.load(env={}), concurrency=0)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_lease_raises_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError):
        Settings.load(env={"REDWORK_LEASE": value})


async def test_concurrent_first_calls_share_one_async_connection_pool(app: Redwork) -> None:
    clients = await asyncio.gather(*(app.client.aredis() for _ in range(50)))
    assert len({id(c) for c in clients}) == 1
    await app.client.aclose()


async def test_counts_workers_and_the_failed_store_from_python(
    app: Redwork, worker: Worker
) -> None:
    ok, bad = tasks.add.enqueue(1, 1), tasks.boom.options(retries=0).enqueue("kaput")
    assert await ok.aresult(timeout=10) == 2
    with pytest.raises(JobFailed):
        await bad.aresult(timeout=10)
    counts = app.counts()
    assert (counts.waiting, counts.active, counts.failed) == (0, 0, 1)
    assert counts.stats["completed"] == 1 and counts.stats["failed"] == 1
    (failed,) = app.failed_jobs()
    assert (failed.id, failed.reason, failed.state) == (bad.id, "exception", JobState.FAILED)
    assert "ValueError: kaput" in (failed.error or "")
    (live,) = app.workers()
    assert (live.id, live.queues, live.concurrency) == (worker.id, ["default"], 10)
    assert live.pid == os.getpid()
    assert app.retry_failed("default", [bad.id]) == 1  # back to the queue: it fails again
    with pytest.raises(JobFailed):
        await bad.aresult(timeout=10)
    assert [job.id for job in app.failed_jobs()] == [bad.id]
    assert app.counts().stats["failed"] == 2


def test_events_follow_what_happens_to_jobs_and_skip_junk(
    app: Redwork, r: redis.Redis, thread_worker: Worker
) -> None:
    channel = Queue("default").events
    events = app.events(idle=10)
    got: list[JobEvent] = []

    def follow() -> None:
        for event in events:
            got.append(event)
            if event.event == "completed":
                return

    listener = threading.Thread(target=follow)
    listener.start()
    until(lambda: r.pubsub_numsub(channel)[0][1] == 1, what="the subscription")
    r.publish(channel, b"not an event")  # a foreign publisher's junk: skipped
    handle = tasks.add.enqueue(2, 3)
    assert handle.result(timeout=10) == 5
    listener.join(10)
    events.close()  # ends its subscription
    assert [(e.event, e.jobs, e.queue) for e in got] == [
        (kind, [handle.id], "default") for kind in ("enqueued", "active", "completed")
    ]
    assert got[1].attempts == [1] and got[0].at <= got[2].at
    until(lambda: r.pubsub_numsub(channel)[0][1] == 0, what="the unsubscription")


async def test_aevents_end_after_the_idle_time(app: Redwork) -> None:
    assert [event async for event in app.aevents(["quiet"], idle=0.2)] == []
