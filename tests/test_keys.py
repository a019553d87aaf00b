"""Idempotency keys (an enqueue accepted once per window) and per-key ordering (jobs of
one key one at a time, in enqueue order), at the level of the scripts and with workers."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import redis

from redwork import Redwork, Settings
from redwork.job import Envelope
from redwork.queue import Completion, Failure, NewJob, Queue, run
from redwork.registry import WORKERS_CHANNEL
from redwork.scripts import Code
from tests import tasks
from tests.conftest import DAY_MS, WorkerProcess

Q = Queue("default")


def new(job_id: str, key: str | None = None, idem: str | None = None) -> NewJob:
    data = Envelope(id=job_id, task="t", queue=Q.name, key=key).encode(1 << 20)
    return NewJob(job_id, data, key, idem)


def fetch_ids(r: redis.Redis, count: int = 10) -> dict[str, int]:
    """Lease up to `count` jobs; their ids and tokens."""
    return {d.id: d.token for d in run(r, Q.fetch(count, 60_000, "w", 1 << 20)).deliveries}


def complete(r: redis.Redis, leased: dict[str, int], *ids: str) -> None:
    assert run(r, Q.complete([Completion(i, leased[i], b"null") for i in ids], 60)) == [
        Code.OK
    ] * len(ids)


# -- idempotency keys ---------------------------------------------------------------


def test_an_idempotency_key_is_accepted_once_and_names_the_first_job(r: redis.Redis) -> None:
    assert run(r, Q.enqueue([new("a", idem="e-1")], DAY_MS)) == [Code.OK]
    assert run(r, Q.enqueue([new("b", idem="e-1"), new("c", idem="e-2")], DAY_MS)) == ["a", Code.OK]
    assert run(r, Q.enqueue([new("d", idem="e-3"), new("e", idem="e-3")], DAY_MS)) == [Code.OK, "d"]
    assert not r.exists(Q.job_key("b")) and not r.exists(Q.job_key("e"))
    assert sorted(fetch_ids(r)) == ["a", "c", "d"]
    assert run(r, Q.counts()).stats["enqueued"] == 3


def test_enqueue_with_an_idempotency_key_returns_the_first_jobs_handle(app: Redwork) -> None:
    first = tasks.add.options(idempotency_key="order-7").enqueue(1, 2)
    again = tasks.add.options(idempotency_key="order-7").enqueue(5, 5)
    batch = app.enqueue_many(
        [
            tasks.add.options(idempotency_key="order-7").prepare(0, 0),
            tasks.add.options(idempotency_key="order-8").prepare(3, 4),
            tasks.add.options(idempotency_key="order-8").prepare(9, 9),
        ]
    )
    assert again.id == first.id == batch[0].id
    assert batch[2].id == batch[1].id != first.id
    assert app.client.run(Q.counts()).waiting == 2


async def test_idempotent_async_enqueue(app: Redwork) -> None:
    first = await tasks.add.options(idempotency_key="x").aenqueue(1, 2)
    again = await tasks.add.options(idempotency_key="x").aenqueue(1, 2)
    assert first.id == again.id
    await app.client.aclose()


def test_an_idempotency_key_is_forgotten_after_its_window(
    settings: Settings, r: redis.Redis
) -> None:
    app = Redwork("window", settings=settings.replace(idempotency_ttl=0.3))
    task = app.task(name="t")(lambda: None).options(idempotency_key="e-1")
    first = task.enqueue()
    assert task.enqueue().id == first.id
    idem_key = Q.prefix + "idem:e-1"
    assert 0 < r.pttl(idem_key) <= 300
    r.config_set("notify-keyspace-events", "Ex")
    expired = r.pubsub()
    expired.subscribe("__keyevent@0__:expired")
    try:
        while r.exists(idem_key):  # until the server announces the key's expiry
            expired.get_message(timeout=1)
    finally:
        expired.close()
        r.config_set("notify-keyspace-events", "")
    assert task.enqueue().id != first.id


# -- per-key ordering, scripts ---------------------------------------------------------


def test_only_the_head_of_a_key_circulates_and_the_next_follows_in_order(
    r: redis.Redis,
) -> None:
    run(r, Q.enqueue([new("a1", "A"), new("a2", "A"), new("b1", "B"), new("a3", "A")], DAY_MS))
    counts = run(r, Q.counts())
    assert (counts.waiting, counts.held) == (2, 2)
    leased = fetch_ids(r)
    assert sorted(leased) == ["a1", "b1"]
    assert fetch_ids(r) == {}  # a2 waits for a1, even with free slots
    complete(r, leased, "a1")
    leased = fetch_ids(r)
    assert list(leased) == ["a2"]
    complete(r, leased, "a2")
    leased = fetch_ids(r)
    assert list(leased) == ["a3"]
    complete(r, leased, "a3")
    assert r.hgetall(Q.prefix + "keys") == {b"B": b"b1"}
    assert run(r, Q.counts()).held == 0


def test_a_retried_head_keeps_its_place_and_one_failed_for_good_releases_it(
    r: redis.Redis,
) -> None:
    run(r, Q.enqueue([new("a1", "A"), new("a2", "A")], DAY_MS))
    token = fetch_ids(r)["a1"]
    run(r, Q.fail([Failure("a1", token, "exception", "x", retry_in_ms=0)]))
    leased = fetch_ids(r)
    assert list(leased) == ["a1"]  # its retry, not a2
    run(r, Q.fail([Failure("a1", leased["a1"], "exception", "x", retry_in_ms=-1)]))
    assert list(fetch_ids(r)) == ["a2"]  # a dead letter no longer holds its key


def test_a_head_whose_worker_died_runs_again_before_the_rest_of_its_key(
    r: redis.Redis,
) -> None:
    run(r, Q.enqueue([new("a1", "A"), new("a2", "A")], DAY_MS))
    run(r, Q.fetch(1, 1, "dying worker", 1 << 20))  # a 1 ms lease
    while run(r, Q.recover(max_losses=3)) == (0, 0):
        pass  # until the server's clock has passed the lease
    assert list(fetch_ids(r)) == ["a1"]


def test_dead_letters_retried_together_keep_their_order(r: redis.Redis) -> None:
    jobs = [new(f"a{i}", "A") for i in range(1, 6)]
    run(r, Q.enqueue(jobs, DAY_MS))
    for i in (1, 2, 3):  # a1, a2, a3 fail for good one after the other
        token = fetch_ids(r)[f"a{i}"]
        run(r, Q.fail([Failure(f"a{i}", token, "exception", "x")]))
    leased = fetch_ids(r)
    assert list(leased) == ["a4"]
    assert run(r, Q.retry_failed()) == 3
    order = ["a4"]
    complete(r, leased, "a4")
    while leased := fetch_ids(r):
        order += list(leased)
        complete(r, leased, *leased)
    assert order == ["a4", "a1", "a2", "a3", "a5"]


def test_dead_letters_of_an_idle_key_come_back_oldest_first(r: redis.Redis) -> None:
    run(r, Q.enqueue([new(f"b{i}", "B") for i in range(1, 4)], DAY_MS))
    for i in (1, 2, 3):
        token = fetch_ids(r)[f"b{i}"]
        run(r, Q.fail([Failure(f"b{i}", token, "exception", "x")]))
    assert run(r, Q.retry_failed()) == 3
    order = []
    while leased := fetch_ids(r):
        order += list(leased)
        complete(r, leased, *leased)
    assert order == ["b1", "b2", "b3"]
    assert run(r, Q.counts()).held == 0


def test_a_retried_dead_letter_runs_next_in_its_key(r: redis.Redis) -> None:
    run(r, Q.enqueue([new("a1", "A"), new("a2", "A"), new("a3", "A")], DAY_MS))
    token = fetch_ids(r)["a1"]
    run(r, Q.fail([Failure("a1", token, "exception", "x")]))
    leased = fetch_ids(r)
    assert list(leased) == ["a2"]
    assert run(r, Q.retry_failed(["a1"])) == 1
    complete(r, leased, "a2")
    leased = fetch_ids(r)
    assert list(leased) == ["a1"]  # ahead of a3, which came after it
    complete(r, leased, "a1")
    assert list(fetch_ids(r)) == ["a3"]


# -- per-key ordering, worker processes --------------------------------------------------


def test_jobs_of_one_key_never_overlap_and_start_in_order_across_processes(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    keys, per_key = ["k1", "k2", "k3", "k4"], 8
    announcements = r.pubsub()
    announcements.subscribe(WORKERS_CHANNEL)
    for _ in range(2):
        spawn_worker()
    started = 0
    while started < 2:  # both are ready before the jobs come, so both take some
        message = announcements.get_message(timeout=30)
        assert message is not None, "a worker did not start"
        if message["type"] == "message":
            started += orjson.loads(message["data"])["event"] == "started"
    announcements.close()
    handles = app.enqueue_many(
        tasks.keyed_run.options(key=key).prepare(key, seq, 0.02)
        for seq in range(per_key)
        for key in keys
    )
    for handle in handles:
        handle.result(timeout=60)
    expected = [f"{edge} {seq}" for seq in range(per_key) for edge in ("start", "end")]
    for key in keys:
        assert [x.decode() for x in r.lrange(f"test:runs:{key}", 0, -1)] == expected, key
    workers = {app.client.job("default", h.id).worker for h in handles}
    assert len({w.split(":")[1] for w in workers if w}) == 2  # both processes took part


async def test_different_keys_run_in_parallel(app: Redwork, worker: object) -> None:
    handles = [await tasks.announce_sleep.options(key=f"k{i}").aenqueue(30) for i in range(3)]
    client = await app.client.aredis()
    for handle in handles:  # all three are asleep at once
        assert await client.blpop([f"test:started:{handle.id}"], timeout=10)
