"""Workflows whose jobs run in several queues (on a Cluster: several slots), against a
real server or cluster and real workers: results and failures cross queues, retries
reopen, cancel withdraws, and the outbox messages between queues apply once, in order,
whoever relays them and however often."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import orjson
import pytest
import redis

from redwork import JobState, Redwork, Worker, WorkflowStatus, chain, chord, group
from redwork.queue import Completion, Failure, Queue, run_many
from redwork.scripts import Code
from redwork.workflow import drive, plan, relay
from tests.conftest import stop_worker
from tests.tasks import add, echo, needs_file, outcomes, sleep, total

WAIT = 20.0
B, C = "xq-b", "xq-c"
"""Queues besides `default`: on the test cluster, {xq-b} and {xq-c} hash to slots of
other primaries than {default}'s (checked in the first test)."""


@pytest.fixture
async def workers(app: Redwork) -> AsyncIterator[Worker]:
    """One worker serving the three queues."""
    running = Worker(app, app.settings.replace(queues=("default", B, C)))
    task = asyncio.create_task(running.run())
    yield running
    stopped = await stop_worker(running, task)
    await app.client.aclose()
    assert stopped, "Worker.run() did not return after stop()"


def outbox_sizes(r: redis.Redis) -> list[int]:
    return [r.llen(Queue(q).outbox) for q in ("default", B, C)]


@pytest.mark.cluster
async def test_a_chain_through_three_queues_passes_each_result_on(
    app: Redwork, workers: Worker, r: redis.Redis, shape: str
) -> None:
    if shape == "cluster":
        slots = {r.keyslot(Queue(q).wait) for q in ("default", B, C)}  # type: ignore[attr-defined]
        assert len(slots) == 3
    there = add.options(queue=B).s(10), add.options(queue=C).s(100)
    handle = app.submit(chain(add.s(1, 2), *there, add.s(1000)))
    assert handle.queue == "default"  # recorded in its first job's queue
    assert await handle.aresult(WAIT) == 1113
    info = await handle.ainfo()
    assert info.status is WorkflowStatus.SUCCEEDED
    assert [n.queue for n in info.nodes] == [None, B, C, None]
    assert [n.result_value() for n in info.nodes] == [3, 13, 113, 1113]
    # Each job ran in its own queue, where its record is.
    for node, queue in zip(info.nodes[1:3], (B, C), strict=True):
        record = await app.client.ajob(queue, node.id)
        assert record.state is JobState.COMPLETED and record.workflow == handle.id
    assert outbox_sizes(r) == [0, 0, 0]


@pytest.mark.cluster
async def test_a_chord_of_members_in_other_queues_collects_their_results(
    app: Redwork, workers: Worker
) -> None:
    members = group(add.options(queue=C if i % 2 else B).s(i, i) for i in range(10))
    handle = app.submit(chord(members, total.s()), queue=None)
    assert handle.queue == B  # the first member's queue
    assert await handle.aresult(WAIT) == sum(2 * i for i in range(10))


@pytest.mark.cluster
async def test_a_failure_in_another_queue_skips_its_dependants_until_retried(
    app: Redwork, workers: Worker, tmp_path: Path, r: redis.Redis
) -> None:
    gate = tmp_path / "fixed"
    risky = needs_file.options(queue=B, retries=0)
    handle = app.submit(chain(echo.s("x"), risky.s(str(gate)), echo.options(queue=C).s()))
    info = await app.client.await_workflow(handle.queue, handle.id, WAIT)
    assert info.status is WorkflowStatus.FAILED
    assert [n.state for n in info.nodes] == [JobState.COMPLETED, JobState.FAILED, JobState.SKIPPED]
    failed = info.nodes[1]
    assert failed.reason == "exception" and "FileNotFoundError" in (failed.error or "")
    assert r.zscore(Queue(B).failed, failed.id) is not None  # in its own queue's store
    assert info.nodes[2].error == f"dependency {failed.id} did not succeed"

    gate.write_text("")
    assert await app.client.aretry_failed(B, [failed.id]) == 1  # reopens the workflow
    info = await app.client.await_workflow(handle.queue, handle.id, WAIT)
    assert info.status is WorkflowStatus.SUCCEEDED
    assert [n.result_value() for n in info.nodes] == ["x", "x", "x"]
    assert info.counts["failed"] == 0 and info.counts["skipped"] == 0


@pytest.mark.cluster
async def test_a_collecting_node_is_given_the_error_of_a_node_of_another_queue(
    app: Redwork, workers: Worker, tmp_path: Path
) -> None:
    risky = needs_file.options(queue=C, retries=0)
    members = group(echo.options(queue=B).s(1), risky.s(str(tmp_path / "never")))
    handle = app.submit(chord(members, outcomes.s(), on_failure="collect"))
    info = await app.client.await_workflow(handle.queue, handle.id, WAIT)
    assert info.nodes[-1].result_value() == ["1", f"failed:{info.nodes[1].id}"]


@pytest.mark.cluster
def test_cancelling_withdraws_the_jobs_sent_to_other_queues(app: Redwork, r: redis.Redis) -> None:
    # No worker: the roots wait in their queues.
    handle = app.submit(chord(group(echo.s(2), echo.options(queue=B).s(1)), total.s()))
    sent = handle.info().nodes[1]
    assert app.client.job(B, sent.id).state is JobState.WAITING
    assert handle.cancel() == 3
    assert app.client.job(B, sent.id).state is JobState.CANCELLED
    assert r.llen(Queue(B).wait) == 0
    info = handle.info()
    assert info.status is WorkflowStatus.CANCELLED
    assert [n.state for n in info.nodes] == [JobState.CANCELLED] * 3
    assert outbox_sizes(r) == [0, 0, 0]


async def test_a_running_node_of_another_queue_shows_its_live_state(
    app: Redwork, workers: Worker
) -> None:
    handle = app.submit(chain(echo.s(1.0), sleep.options(queue=B).s()))
    for _ in range(200):
        node = (await handle.ainfo()).nodes[1]
        if node.state is JobState.ACTIVE:
            break
        assert node.state in (JobState.PENDING, JobState.WAITING)
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the node never showed as active")
    await handle.aresult(WAIT)


@pytest.mark.cluster
async def test_messages_left_in_an_outbox_are_delivered_by_a_workers_next_check(
    app: Redwork, r: redis.Redis
) -> None:
    # A producer that stopped between storing the workflow and relaying (the plain
    # submit call, not Client.submit_workflow) leaves the first job in the outbox.
    steps = group(echo.s(7), echo.options(queue=B).s(8))
    checked = plan(steps, None, None, app.settings.max_payload)
    assert app.client.run(app.client._submit(checked, "")) is Code.OK
    assert r.llen(Queue(B).wait) == 0 and r.llen(Queue("default").outbox) == 1
    worker = Worker(app, app.settings.replace(queues=("default", B), lease=1.0))
    task = asyncio.create_task(worker.run())
    try:
        info = await app.client.await_workflow(checked.queue, checked.id, WAIT)
        assert info.status is WorkflowStatus.SUCCEEDED
    finally:
        assert await stop_worker(worker, task)
        await app.client.aclose()


@pytest.mark.cluster
def test_a_message_handed_over_twice_or_early_applies_once_in_order(
    app: Redwork, r: redis.Redis, tmp_path: Path
) -> None:
    handle = app.submit(group(echo.s(0), echo.options(queue=B).s(1)))
    node = handle.info().nodes[1]
    b = Queue(B)
    # Run the node in B by hand, failing it for good: its end waits in B's outbox.
    (delivery,) = app.client.run(b.fetch(1, 60_000, "w", 1 << 20)).deliveries
    app.client.run(b.fail([Failure(node.id, delivery.token, "exception", "no", -1)]))
    assert app.client.retry_failed(B, [node.id]) == 1  # relays 'ended', then 'reopen'
    home = Queue(handle.queue)
    ended, reopen = (
        orjson.dumps({"op": op, "queue": home.name, "wf": handle.id, "id": node.id, "seq": seq,
                      "outcome": "failed", "attempt": 1})
        for op, seq in (("ended", 1), ("reopen", 2))
    )  # fmt: skip
    # Both were applied: handing them over again changes nothing.
    assert app.client.run(home.report([ended, reopen])) == ([Code.DUPLICATE] * 2, 0)
    assert handle.info().status is WorkflowStatus.RUNNING
    # One that comes before its predecessor waits in the outbox.
    early = orjson.dumps({"op": "reopen", "queue": home.name, "wf": handle.id, "id": node.id,
                          "seq": 9})  # fmt: skip
    assert app.client.run(home.report([early])) == ([Code.LATER], 0)
    r.rpush(b.outbox, early)
    assert app.client.relay([B]) == 0
    assert r.lrange(b.outbox, 0, -1) == [early]
    r.delete(b.outbox)


def test_a_message_that_is_not_redworks_is_set_aside_with_a_log(
    app: Redwork, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    b = Queue(B)
    junk = [
        b"not json",
        b'{"op": "fly", "queue": "default", "id": "a", "wf": "w"}',
        b'{"queue": "no way!"}',
        b'{"op": "ended", "queue": "default", "id": "a", "wf": "w", "seq": "1"}',
    ]
    r.rpush(b.outbox, *junk)
    with caplog.at_level(logging.ERROR, logger="redwork.workflow"):
        assert drive(relay([B], 60), partial(run_many, r)) == 4
    assert r.llen(b.outbox) == 0
    assert r.lrange(b.refused, 0, -1) == junk
    assert len([m for m in caplog.messages if "is not one redwork writes" in m]) == 4


@pytest.mark.cluster
def test_a_node_whose_id_is_taken_in_its_queue_fails_with_the_reason(
    app: Redwork, r: redis.Redis
) -> None:
    taken = echo.options(queue=B).s(1)
    echo.options(queue=B, job_id=taken.id).enqueue(0)
    handle = app.submit(chain(echo.s(0), taken, echo.s()), workflow_id="taken")
    # Run the first step by hand: its end releases the second to B, which fails it.
    home = Queue(handle.queue)
    (delivery,) = app.client.run(home.fetch(1, 60_000, "w", 1 << 20)).deliveries
    app.client.run(home.complete([Completion(delivery.id, delivery.token, b"0")], 60))
    assert app.client.relay([home.name]) == 2  # 'run' to B, 'ended' (failed) back
    info = handle.info()
    assert info.status is WorkflowStatus.FAILED
    assert info.nodes[1].reason == "duplicate_id"
    assert info.nodes[1].error == f"queue {B} holds another job with this id"
    assert info.nodes[2].state is JobState.SKIPPED
    assert app.client.job(B, taken.id).workflow is None  # the other job is untouched


@pytest.mark.cluster
async def test_a_workflow_across_queues_runs_with_durable_acknowledgement(
    app: Redwork, shape: str
) -> None:
    if shape != "cluster":
        pytest.skip("the single test server has no replica to wait for")
    app.configure(app.settings.replace(ack_replicas=1))
    running = Worker(app, app.settings.replace(queues=("default", B, C)))
    task = asyncio.create_task(running.run())
    try:
        steps = chain(add.s(1, 1), add.options(queue=B).s(1), add.options(queue=C).s(1))
        handle = await app.asubmit(steps)
        assert await handle.aresult(WAIT) == 4
    finally:
        assert await stop_worker(running, task)
        await app.client.aclose()


@pytest.mark.cluster
def test_a_message_the_server_refuses_is_set_aside_and_the_rest_delivered(
    app: Redwork, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    home = Queue("default")
    # Well formed enough to reach the server, whose script fails on the priority.
    broken = orjson.dumps({"op": "run", "queue": B, "home": home.name, "wf": "w", "id": "n1",
                           "data": "{}", "priority": {"high": True}})  # fmt: skip
    handle = app.submit(group(echo.s(1), echo.options(queue=B).s(2)), workflow_id="after")
    r.lpush(home.outbox, broken)  # ahead of nothing: the submit's message was relayed
    r.rpush(home.outbox, orjson.dumps({"op": "cancel", "queue": B, "wf": "after",
                                       "id": handle.info().nodes[1].id}))  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="redwork.workflow"):
        # The refused one, the cancel, and the end of the job it cancelled (from B).
        assert app.client.relay([home.name]) == 3
    assert r.lrange(home.refused, 0, -1) == [broken]
    assert outbox_sizes(r) == [0, 0, 0]
    assert any("the server refused an outbox message" in m for m in caplog.messages)
    node = handle.info().nodes[1]
    assert node.state is JobState.CANCELLED
    assert app.client.job(B, node.id).state is JobState.CANCELLED
