"""Workflows against a real server and a real worker: chains, groups, chords, graphs,
failure and skip propagation, cancellation, reopening by retry, submit checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from redwork import (
    JobFailed,
    JobState,
    NotCancellable,
    Redwork,
    Worker,
    Workflow,
    WorkflowError,
    WorkflowFailed,
    WorkflowStatus,
    chain,
    chord,
    group,
)
from redwork.queue import Completion, Failure, Queue
from redwork.scripts import Code
from tests.tasks import add, boom, echo, flaky, needs_file, outcomes, sleep, total

WAIT = 20.0


def states(handle: object) -> list[JobState]:
    return [n.state for n in handle.info().nodes]  # type: ignore[attr-defined]


@pytest.mark.cluster
async def test_chain_passes_each_result_to_the_next_step(app: Redwork, worker: Worker) -> None:
    handle = app.submit(chain(add.s(1, 2), add.s(10), add.s(100)))
    assert await handle.aresult(WAIT) == 113
    info = await handle.ainfo()
    assert info.status is WorkflowStatus.SUCCEEDED
    assert [n.result_value() for n in info.nodes] == [3, 13, 113]
    assert info.counts["succeeded"] == 3 and info.counts["ended"] == 3


async def test_a_step_failing_for_good_skips_the_rest_of_the_chain(
    app: Redwork, worker: Worker
) -> None:
    handle = app.submit(chain(echo.s("a"), boom.s(), echo.s(), echo.s()))
    with pytest.raises(WorkflowFailed, match=r"^workflow failed; first: job ") as failed:
        await handle.aresult(WAIT)
    assert str(failed.value).endswith(f"(workflow {handle.id})")
    assert isinstance(failed.value, JobFailed) and failed.value.job_id == handle.id
    info = await handle.ainfo()
    assert info.status is WorkflowStatus.FAILED
    assert [n.state for n in info.nodes] == [
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.SKIPPED,
        JobState.SKIPPED,
    ]
    failed = info.nodes[1]
    for skipped in info.nodes[2:]:
        assert skipped.reason == "dependency_failed"
        record = await app.job(skipped.id).ainfo()
        assert record.attempt == 0 and record.started_at is None  # never ran
    assert f"dependency {failed.id} did not succeed" == info.nodes[2].error
    assert (await app.job(failed.id).ainfo()).attempt == 3  # its retries ran first
    assert info.counts == {
        "total": 4,
        "ended": 4,
        "succeeded": 1,
        "failed": 1,
        "skipped": 2,
        "cancelled": 0,
    }


async def test_a_step_that_succeeds_on_a_retry_continues_the_chain(
    app: Redwork, worker: Worker
) -> None:
    # flaky is given 2 (the first step's result): attempt 1 fails, attempt 2 returns 2.
    handle = app.submit(chain(add.s(1, 1), flaky.s(), add.s(40)))
    assert await handle.aresult(WAIT) == 42
    assert (await app.job(handle.info().nodes[1].id).ainfo()).attempt == 2


async def test_group_results_come_in_member_order(app: Redwork, worker: Worker) -> None:
    handle = app.submit(group(add.s(i, i) for i in range(20)))
    assert await handle.aresult(WAIT) == [2 * i for i in range(20)]


@pytest.mark.cluster
async def test_chord_callback_gets_the_members_results(app: Redwork, worker: Worker) -> None:
    handle = app.submit(chord(group(add.s(i, 1) for i in range(10)), total.s(plus=1000)))
    assert await handle.aresult(WAIT) == sum(range(1, 11)) + 1000


async def test_fail_fast_chord_skips_its_callback(app: Redwork, worker: Worker) -> None:
    handle = app.submit(chord([echo.s(1), boom.s(), echo.s(3)], outcomes.s()))
    with pytest.raises(JobFailed):
        await handle.aresult(WAIT)
    assert states(handle) == [
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.COMPLETED,
        JobState.SKIPPED,
    ]


async def test_collecting_chord_gets_results_and_errors(app: Redwork, worker: Worker) -> None:
    failing = boom.s()
    handle = app.submit(
        chord([echo.s(1), failing, echo.s("c")], outcomes.s(), on_failure="collect")
    )
    info = await app.client.await_workflow(handle.queue, handle.id, WAIT)
    # One member failed, so the workflow has failed; the callback still ran.
    assert info.status is WorkflowStatus.FAILED
    assert info.nodes[-1].state is JobState.COMPLETED
    assert info.nodes[-1].result_value() == ["1", f"failed:{failing.id}", "'c'"]


async def test_a_failed_branch_skips_only_what_depends_on_it(app: Redwork, worker: Worker) -> None:
    graph = Workflow()
    top = graph.add(echo.s(1))
    left = graph.add(add.s(10), depends_on=[top], pass_results=False)
    right = graph.add(chain(echo.s(2), add.s(20)), depends_on=[top])
    graph.add(total.s(), depends_on=[left, right], pass_results=True)
    # left is not given its input, so it is add(10): bad arguments, a failure.
    handle = app.submit(graph)
    info = await app.client.await_workflow(handle.queue, handle.id, WAIT)
    assert [n.state for n in info.nodes] == [
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.COMPLETED,
        JobState.COMPLETED,
        JobState.SKIPPED,
    ]
    assert info.nodes[1].reason == "bad_arguments"


@pytest.mark.cluster
async def test_diamond_gives_the_join_its_inputs_in_dependency_order(
    app: Redwork, worker: Worker
) -> None:
    graph = Workflow()
    top = graph.add(echo.s(5))
    a = graph.add(add.s(1), depends_on=[top], pass_results=True)
    b = graph.add(echo.s(), depends_on=[top], pass_results=True)
    graph.add(outcomes.s(), depends_on=[b, a], pass_results=True)
    handle = app.submit(graph)
    # a: add([5], 1) fails (a list plus an int); b: echo([5]) = [5].
    info = await app.client.await_workflow(handle.queue, handle.id, WAIT)
    assert info.nodes[2].result_value() == [5]
    assert info.nodes[1].state is JobState.FAILED
    assert info.nodes[3].state is JobState.SKIPPED


async def test_a_retried_failed_node_reopens_its_workflow(
    app: Redwork, worker: Worker, tmp_path: Path
) -> None:
    flag = tmp_path / "fixed"
    handle = app.submit(chain(echo.s(7), needs_file.s(str(flag)), add.s(1)))
    with pytest.raises(JobFailed):
        await handle.aresult(WAIT)
    assert states(handle) == [JobState.COMPLETED, JobState.FAILED, JobState.SKIPPED]
    flag.touch()
    queue = Queue(handle.queue)
    assert app.client.run(queue.retry_failed([handle.info().nodes[1].id])) == 1
    assert await handle.aresult(WAIT) == 8
    assert (await handle.ainfo()).counts["skipped"] == 0


@pytest.mark.cluster
async def test_cancelling_a_workflow_cancels_what_has_not_started(
    app: Redwork, worker: Worker, r: redis.Redis
) -> None:
    handle = app.submit(chain(sleep.s(0.5), echo.s(), echo.s()))
    cancelled = handle.cancel()
    assert cancelled in (2, 3)  # 3 if the first step had not started yet
    info = await app.client.await_workflow(handle.queue, handle.id, WAIT)
    assert info.status is WorkflowStatus.CANCELLED
    assert [n.state for n in info.nodes][1:] == [JobState.CANCELLED, JobState.CANCELLED]
    with pytest.raises(NotCancellable):
        handle.cancel()


def test_a_cycle_is_refused_with_the_cycle_named(app: Redwork, r: redis.Redis) -> None:
    graph = Workflow()
    graph.add(echo.options(job_id="a").s(1), depends_on=["c"])
    graph.add(echo.options(job_id="b").s(1), depends_on=["a"])
    graph.add(echo.options(job_id="c").s(1), depends_on=["b"])
    graph.add(echo.options(job_id="d").s(1))
    cycles = r"cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"
    with pytest.raises(WorkflowError, match=cycles):
        app.submit(graph)
    assert r.dbsize() == 0  # nothing stored


def test_bad_workflows_are_refused_before_anything_is_stored(app: Redwork, r: redis.Redis) -> None:
    unknown = Workflow()
    unknown.add(echo.s(1), depends_on=["nope"])
    with pytest.raises(WorkflowError, match="depends on nope, not in the workflow"):
        app.submit(unknown)
    same = echo.s(1)
    with pytest.raises(WorkflowError, match="appears twice"):
        app.submit(chain(same, same))
    with pytest.raises(WorkflowError, match="at least one"):
        chain()
    assert r.dbsize() == 0


def test_ten_thousand_members_are_accepted_in_one_call(app: Redwork, r: redis.Redis) -> None:
    # The scripts loaded first (a fresh server answers NOSCRIPT, and the retry is EVAL).
    app.submit(chain(echo.s(1), echo.s()), queue="warm-up").info()
    members = group(echo.s(i) for i in range(10_000))
    before = r.info("commandstats")["cmdstat_evalsha"]["calls"]
    handle = app.submit(chord(members, total.s()))
    info = handle.info()
    assert info.counts["total"] == 10_001 and info.status is WorkflowStatus.PENDING
    assert r.llen(Queue("default").wait) == 10_000
    calls = r.info("commandstats")["cmdstat_evalsha"]["calls"] - before
    assert calls == 2  # the submit and the read


def test_resubmitting_a_workflow_id_adds_nothing(app: Redwork, r: redis.Redis) -> None:
    first = app.submit(chain(echo.s(1), echo.s()), workflow_id="nightly-2026-11-27")
    again = app.submit(chain(echo.s(1), echo.s()), workflow_id="nightly-2026-11-27")
    assert again.id == first.id
    assert r.llen(Queue("default").wait) == 1
    assert first.info().counts["total"] == 2


def test_a_stale_delivery_can_neither_complete_a_node_nor_release_its_dependants_twice(
    app: Redwork, r: redis.Redis
) -> None:
    handle = app.submit(chain(echo.s(1), echo.s()))
    first, second = (n.id for n in handle.info().nodes)
    queue = Queue(handle.queue)
    # Delivery 1's lease runs out at once (0 ms): recovered, then leased again.
    (stale,) = app.client.run(queue.fetch(1, 0, "w1", 1 << 20)).deliveries
    assert app.client.run(queue.recover(max_losses=10)) == (1, 0)
    (fresh,) = app.client.run(queue.fetch(1, 60_000, "w2", 1 << 20)).deliveries
    assert fresh.token > stale.token

    refused = app.client.run(queue.complete([Completion(first, stale.token, b"1")], 60))
    assert refused == [Code.LEASE_LOST]
    assert app.client.job(handle.queue, second).state is JobState.PENDING
    assert r.llen(queue.wait) == 0

    done = app.client.run(queue.complete([Completion(first, fresh.token, b"1")], 60))
    assert done == [Code.OK]
    again = app.client.run(queue.complete([Completion(first, fresh.token, b"1")], 60))
    assert again == [Code.ALREADY_DONE]
    assert r.lrange(queue.wait, 0, -1) == [second.encode()]  # released once
    assert handle.info().counts["succeeded"] == 1
    late_failure = app.client.run(queue.fail([Failure(first, stale.token, "exception", "x")]))
    assert late_failure == [Code.LEASE_LOST]
    assert app.client.job(handle.queue, second).state is JobState.WAITING
