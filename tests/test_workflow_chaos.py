"""A random graph of 1,000 jobs run by real worker processes that are SIGKILLed and
restarted throughout: every node runs after all its dependencies, and its effect (a
state entry staged with etag 0, committed with its completion) is applied exactly
once, even for nodes whose task ran more than once. Run in one queue, and spread over
two (every edge between them a message relayed through an outbox, which kills
interrupt too)."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis

from redwork import JobState, Redwork, Workflow, WorkflowStatus
from redwork.queue import Queue, run
from tests import tasks
from tests.conftest import WorkerProcess, job_events

Q = Queue("default")
OTHER = Queue("dag-b")
NODES = 1000
WORKERS = 4
KILLS = 10
WINDOW = 50
"""A node depends on 0-3 of the WINDOW nodes added just before it: a graph about 60
levels deep, with hundreds of nodes ready at once."""


def random_graph(
    rng: random.Random, queues: list[Queue]
) -> tuple[Workflow, dict[str, list[str]], dict[str, Queue]]:
    graph = Workflow()
    deps: dict[str, list[str]] = {}
    runs_in: dict[str, Queue] = {}
    for i in range(NODES):
        node = f"n{i}"
        earlier = range(max(0, i - WINDOW), i)
        deps[node] = [f"n{j}" for j in rng.sample(earlier, min(i, rng.randint(0, 3)))]
        runs_in[node] = queues[0] if i == 0 else rng.choice(queues)
        job = tasks.dag_node.options(job_id=node, queue=runs_in[node].name)
        graph.add(job.s(node, deps[node], rng.uniform(0.002, 0.02)), depends_on=deps[node])
    return graph, deps, runs_in


def holding_jobs(r: redis.Redis, workers: list[WorkerProcess], queues: list[Queue]) -> list[int]:
    """Indexes of the workers that hold a leased job right now."""
    pids = set()
    for queue in queues:
        for job_id in r.zrange(queue.active, 0, -1):
            holder = r.hget(queue.job_key(job_id.decode()), "worker")
            if holder:
                pids.add(int(holder.split(b":")[1]))
    return [index for index, worker in enumerate(workers) if worker.pid in pids]


class Completions:
    """Follows the queues' event streams (XREAD, blocking) and counts completed jobs."""

    def __init__(self, r: redis.Redis, queues: list[Queue]) -> None:
        self.r = r
        self.count = 0
        self.last = {q.events: "0" for q in queues}

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.count} jobs completed in time, not {count}")
            reply = self.r.xread(self.last, block=max(1, int(remaining * 1000)))
            for stream, entries in reply or []:
                for entry_id, raw in entries:
                    self.last[stream.decode()] = entry_id
                    self.count += sum(e["event"] == "completed" for e in job_events(raw))


@pytest.mark.parametrize("queues", [[Q], [Q, OTHER]], ids=["one-queue", "two-queues"])
def test_a_random_dag_runs_in_order_and_applies_each_effect_once_under_sigkills(
    app: Redwork,
    r: redis.Redis,
    spawn_worker: Callable[..., WorkerProcess],
    queues: list[Queue],
) -> None:
    rng = random.Random(1000)
    graph, deps, runs_in = random_graph(rng, queues)
    served = tuple(q.name for q in queues)
    # max_losses: a node lost with its worker again and again must still run, not fail.
    workers = [spawn_worker(max_losses=1000, queues=served) for _ in range(WORKERS)]
    handle = app.submit(graph, workflow_id="chaos")
    completions = Completions(r, queues)
    aimed = 0
    for kill in range(1, KILLS + 1):
        # Kills are spread over the run by its progress, each at a random moment.
        completions.wait_for(kill * NODES // (KILLS + 2))
        time.sleep(rng.uniform(0, 0.05))  # chaos pacing, not synchronisation
        busy = holding_jobs(r, workers, queues)
        victim = rng.choice(busy) if busy else rng.randrange(WORKERS)
        aimed += bool(busy)
        workers[victim].kill(signal.SIGKILL)
        workers[victim].wait()
        workers[victim] = spawn_worker(max_losses=1000, queues=served)

    info = app.client.wait_workflow(handle.queue, handle.id, timeout=60)
    assert info.status is WorkflowStatus.SUCCEEDED, info.counts
    assert info.counts == {
        "total": NODES,
        "ended": NODES,
        "succeeded": NODES,
        "failed": 0,
        "skipped": 0,
        "cancelled": 0,
    }
    assert [n.id for n in info.nodes] == list(deps)
    results: dict[str, int] = {}
    for node in info.nodes:
        assert node.state is JobState.COMPLETED, node.id
        assert node.depends_on == deps[node.id]
        record = app.client.job(runs_in[node.id].name, node.id)
        assert record.state is JobState.COMPLETED, node.id
        results[node.id] = node.result_value()
        assert results[node.id] == record.attempt  # the attempt whose completion counted

    # No run of any node, committed or not, saw a dependency's effect missing.
    assert r.lrange("test:dag:violations", 0, -1) == []
    # Each effect was applied once (version 1), by the run whose completion was recorded,
    # and that run saw each of its dependencies' effects applied once.
    effects = app.state("dag", key_prefix=tasks.STATE_PREFIX).get_many(deps)
    for node_id, item in effects.items():
        assert item is not None, node_id
        assert item.etag == 1, node_id
        saw = {dep: 1 for dep in deps[node_id]}
        assert item.value == {"saw": saw, "attempt": results[node_id]}, node_id

    # The chaos happened: kills took leased jobs from their workers, some tasks ran
    # twice, and none of that applied an effect twice (no conflict, nothing failed).
    runs = {k.decode(): int(v) for k, v in r.hgetall("test:dag:runs").items()}
    assert set(runs) == set(deps)
    stats: Counter[str] = Counter()
    for queue in queues:
        counts = run(r, queue.counts())
        stats.update(counts.stats)
        assert (counts.waiting, counts.active, counts.delayed, counts.failed) == (0, 0, 0, 0)
        assert r.llen(queue.outbox) == 0
    assert stats["recovered"] > 0, f"{aimed} of {KILLS} kills hit a busy worker"
    assert sum(runs.values()) > NODES
    assert stats["conflicts"] == 0 and stats["failed"] == 0
    assert stats["completed"] == NODES
    if len(queues) > 1:
        assert {q.name for q in runs_in.values()} == set(served)
        for node in info.nodes:
            name = runs_in[node.id].name
            assert node.queue == (None if name == Q.name else name)
