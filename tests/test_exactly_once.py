"""Exactly-once effects with real worker processes: seed 000's conflict, a randomized run
with duplicate publishes and SIGKILLed workers, and a stale worker that wakes up."""

from __future__ import annotations

import random
import signal
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import redis

from redwork import Redwork
from redwork.queue import Queue, run
from tests import tasks
from tests.conftest import WorkerProcess

Q = Queue("default")


@pytest.mark.cluster
def test_seed_000_the_same_event_sent_to_two_workers_at_once_applies_once(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    for _ in range(2):
        spawn_worker()
    store = app.state("redis-state", key_prefix=tasks.STATE_PREFIX)
    with ThreadPoolExecutor(2) as publishers:
        for round_ in range(20):
            store.delete("m-1")
            store.save("m-1", {"id": "m-1", "message": "hello!"})
            event = tasks.append_message.options(idempotency_key=f"e-{round_}", key="m-1")
            publish = partial(event.enqueue, "m-1", " gopher")
            handles = [f.result() for f in [publishers.submit(publish) for _ in range(2)]]
            assert handles[0].id == handles[1].id
            assert handles[0].result(timeout=30) == 8
            item = store.get("m-1")
            assert item is not None
            assert (item.value, item.etag) == ({"id": "m-1", "message": "hello! gopher"}, 8)
    assert r.hgetall("{default}||m-1") == {
        b"data": b'{"id":"m-1","message":"hello! gopher"}',
        b"version": b"8",
    }
    # Two different events for one message are not entangled either: per-key ordering
    # runs them one after the other.
    first, second = (
        tasks.append_message.options(idempotency_key=f"e-{name}", key="m-1").enqueue(
            "m-1", text, 0.001
        )
        for name, text in (("first", " gopher"), ("second", " rocks"))
    )
    first.result(timeout=30)
    assert second.result(timeout=30) == 21
    assert store.get("m-1").value["message"] == "hello! gopher gopher rocks"  # type: ignore[union-attr]


def running_job_holder(r: redis.Redis, workers: list[WorkerProcess]) -> int | None:
    """Index of a worker that holds a job right now (the victim of a kill that matters)."""
    for job_id in r.zrange(Q.active, 0, -1):
        holder = r.hget(Q.job_key(job_id.decode()), "worker")
        pid = int(holder.split(b":")[1]) if holder else None
        for index, worker in enumerate(workers):
            if worker.pid == pid:
                return index
    return None


@pytest.mark.cluster
def test_duplicates_and_sigkills_leave_every_key_as_one_sequential_pass(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """200 keys, 2,000 events, each published 1-3 times at once; 4 workers, random ones
    SIGKILLed and restarted throughout. Each key's state must list its distinct events
    once each, in publish order, and no key may be left held."""
    rng = random.Random(7)
    keys = [f"acct-{i}" for i in range(200)]
    events = [(f"ev-{n}", rng.choice(keys)) for n in range(2000)]
    # max_losses: a job killed with its worker again and again must still run, not fail.
    workers = [spawn_worker(max_losses=1000) for _ in range(4)]
    expected: dict[str, list[str]] = defaultdict(list)
    handles = []
    with ThreadPoolExecutor(3) as publishers:
        for n, (event_id, key) in enumerate(events):
            task = tasks.apply_event.options(key=key, idempotency_key=event_id)
            copies = rng.randint(1, 3)
            publish = partial(task.enqueue, key, event_id, rng.random() / 100)
            published = [f.result() for f in [publishers.submit(publish) for _ in range(copies)]]
            assert len({h.id for h in published}) == 1
            handles.append(published[0])
            expected[key].append(event_id)
            if n % 200 == 199:  # ten times during the run
                victim = running_job_holder(r, workers) or rng.randrange(len(workers))
                workers[victim].kill(signal.SIGKILL)
                workers[victim].wait()
                workers[victim] = spawn_worker(max_losses=1000)
    for handle in handles:
        handle.result(timeout=120)
    store = app.state("events", key_prefix=tasks.STATE_PREFIX)
    states = store.get_many(keys)
    for key in keys:
        item = states[key]
        got = item.value["events"] if item else []
        assert got == expected[key], key
        assert item is None or item.etag == len(expected[key])
    counts = run(r, Q.counts())
    assert (counts.waiting, counts.active, counts.delayed, counts.held) == (0, 0, 0, 0)
    assert counts.stats["completed"] == len(events)
    assert r.hlen(Q.prefix + "keys") == 0
    # Kills that hit running jobs (taken back later) are what this test is about.
    assert counts.stats.get("recovered", 0) > 0


def test_a_stale_worker_that_wakes_up_cannot_write_state(
    app: Redwork, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    store = app.state("steps", key_prefix=tasks.STATE_PREFIX)
    stale = spawn_worker()
    handle = tasks.fenced_steps.enqueue("k", 3, 0.5)
    # The first save (version 1) is made; the worker sleeps before the second.
    _, stale_id = r.blpop([f"test:saved:{handle.id}"], timeout=30)
    stale.kill(signal.SIGSTOP)
    rescuer = spawn_worker()
    assert handle.result(timeout=30) == 4  # the rescuer's three saves: versions 2-4
    stale.kill(signal.SIGCONT)
    # The stale worker's sleep ends and it tries its second save: refused.
    refused = r.blpop([f"test:refused:{handle.id}"], timeout=30)
    assert refused is not None and refused[1] == stale_id
    item = store.get("k")
    assert item is not None
    assert item.etag == 4 and item.value["worker"] != stale_id.decode()
    assert app.client.job("default", handle.id).state.value == "completed"
    rescuer.kill(signal.SIGTERM)
