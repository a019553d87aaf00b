"""Workflows: jobs that run after other jobs. Shapes (chain, group, chord) and graphs
(Workflow.add with depends_on) compile to one list of nodes, each a job with the ids of
the jobs it depends on; the list is checked here (unknown ids, cycles) and stored by one
script call. The bookkeeping that releases a node runs inside the transition that ends
its last dependency (scripts/includes/workflow.lua), so crashes lose no trigger and
fire none twice. A workflow whose jobs run in several queues is recorded in one (its
home); transitions tell the other side through their queue's outbox, which `relay`
delivers. See docs/workflows.md."""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Literal

import orjson

from redwork.connection import REFUSED, TRANSIENT
from redwork.errors import InvalidName, JobFailed, WorkflowError, WorkflowFailed
from redwork.job import Envelope, JobRecord, JobState, check_name, new_job_id
from redwork.queue import Op, Queue, WorkflowNode, text
from redwork.scripts import Code

Passing = Literal["one", "list"] | None
"""How a node is given its dependencies' results, as its first argument: the single
dependency's result ("one"), a list in dependency order ("list"), or not at all."""

MAX_NODES = 100_000
COUNTS = ("total", "ended", "succeeded", "failed", "skipped", "cancelled")
"""The counters of a workflow's hash."""


class WorkflowStatus(StrEnum):
    PENDING = "pending"
    """No job of it has started yet."""
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    """Every job completed."""
    FAILED = "failed"
    """Every job ended, and at least one failed or was skipped."""
    CANCELLED = "cancelled"
    """Cancelled as a whole; jobs that were running when it was may still be."""

    @property
    def is_final(self) -> bool:
        return self in (WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class Node:
    """One job of a workflow and what it waits for (node ids)."""

    envelope: Envelope
    depends_on: tuple[str, ...] = ()
    passing: Passing = None
    collect: bool = False
    """Run even if a dependency did not succeed (it is given a JobFailed in its place)."""

    @property
    def id(self) -> str:
        return self.envelope.id


@dataclass(frozen=True, slots=True)
class Ref:
    """What Workflow.add returns: the nodes a later node waits for when it depends on
    the item added (a chain's last step, every member of a group)."""

    ids: tuple[str, ...]


Item = Any  # Envelope | chain | group | chord | Workflow; see _attach


class chain:  # lower case like the functions of Celery's canvas, which users know
    """Steps run one after another, each given the previous step's result (a list when
    the previous step is a group) as its first argument. A step that fails for good
    skips the rest."""

    def __init__(self, *steps: Item) -> None:
        if not steps:
            raise WorkflowError("a chain needs at least one step")
        self.steps = steps

    def _attach(
        self, graph: Workflow, after: Sequence[str], passing: Passing, collect: bool
    ) -> Ref:
        ref = _attach(graph, self.steps[0], after, passing, collect)
        for step in self.steps[1:]:
            ref = _attach(graph, step, ref.ids, "one" if len(ref.ids) == 1 else "list", False)
        return ref


class group:
    """Members run in parallel; what follows a group waits for all of them and is given
    their results as a list, in member order."""

    def __init__(self, *members: Item) -> None:
        if len(members) == 1 and not isinstance(members[0], Envelope | chain | group | chord):
            members = tuple(members[0])  # group(task.s(i) for i in ...)
        if not members:
            raise WorkflowError("a group needs at least one member")
        self.members = members

    def _attach(
        self, graph: Workflow, after: Sequence[str], passing: Passing, collect: bool
    ) -> Ref:
        ids: list[str] = []
        for member in self.members:
            ids += _attach(graph, member, after, passing, collect).ids
        return Ref(tuple(ids))


class chord:
    """A group and a callback given the list of its results, in member order.

    on_failure="fail_fast" (the default): a member that fails for good skips the
    callback. on_failure="collect": the callback runs once every member has ended, and
    is given a JobFailed in place of each result that is missing."""

    def __init__(
        self,
        header: Item,
        callback: Item,
        *,
        on_failure: Literal["fail_fast", "collect"] = "fail_fast",
    ) -> None:
        if on_failure not in ("fail_fast", "collect"):
            raise WorkflowError(f"on_failure must be 'fail_fast' or 'collect', not {on_failure!r}")
        self.header = header if isinstance(header, group) else group(header)
        self.callback = callback
        self.collect = on_failure == "collect"

    def _attach(
        self, graph: Workflow, after: Sequence[str], passing: Passing, collect: bool
    ) -> Ref:
        members = self.header._attach(graph, after, passing, collect)
        return _attach(graph, self.callback, members.ids, "list", self.collect)


def _attach(
    graph: Workflow, item: Item, after: Sequence[str], passing: Passing, collect: bool
) -> Ref:
    if isinstance(item, Envelope):
        graph.nodes.append(Node(item, tuple(after), passing if after else None, collect))
        return Ref((item.id,))
    if isinstance(item, chain | group | chord):
        return item._attach(graph, after, passing, collect)
    if isinstance(item, Workflow):
        for node in item.nodes:
            if not node.depends_on:  # an entry: it waits for what the workflow waits for
                node = replace(node, depends_on=tuple(after), collect=node.collect or collect)
            graph.nodes.append(node)
        return Ref(tuple(item.exits()))
    raise WorkflowError(
        f"{item!r} is not a workflow item: use task.s(...), chain, group, chord or Workflow"
    )


class Workflow:
    """A graph of jobs: `wf.add(item, depends_on=[...])`, where an item is a job
    (`task.s(...)`) or a shape (chain, group, chord), and depends_on names what was
    added before (the Ref add returned) or node ids."""

    def __init__(self, *items: Item) -> None:
        self.nodes: list[Node] = []
        for item in items:
            self.add(item)

    def add(
        self,
        item: Item,
        *,
        depends_on: Iterable[Ref | str] = (),
        pass_results: bool | Literal["one", "list"] = False,
        collect: bool = False,
    ) -> Ref:
        """Add a job or shape; it starts once everything in depends_on has succeeded.

        pass_results: give it (its first jobs) the list of its dependencies' results,
        in depends_on order, as first argument ("one": the single dependency's result
        itself). collect: run it even when a dependency did not succeed, with a
        JobFailed in that dependency's place."""
        after: list[str] = []
        for dependency in depends_on:
            after += dependency.ids if isinstance(dependency, Ref) else [dependency]
        passing: Passing = "list" if pass_results is True else pass_results or None
        if passing not in (None, "one", "list"):
            raise WorkflowError(f"pass_results must be a bool, 'one' or 'list', not {passing!r}")
        if passing is not None and not after:
            raise WorkflowError("pass_results needs dependencies to take results from")
        if passing == "one" and len(after) != 1:
            raise WorkflowError(
                f"pass_results='one' gives the single dependency's result, and there are "
                f"{len(after)}: use pass_results=True for the list"
            )
        return _attach(self, item, after, passing, collect)

    def exits(self) -> list[str]:
        """Nodes nothing depends on: their results are the workflow's."""
        needed = {d for n in self.nodes for d in n.depends_on}
        return [n.id for n in self.nodes if n.id not in needed]


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked workflow, ready for Queue.submit_workflow."""

    id: str
    queue: str
    """Its home: the queue that records it (see docs/workflows.md)."""
    nodes: list[WorkflowNode]

    @property
    def queues(self) -> list[str]:
        """Every queue its jobs run in, its home first."""
        return list(dict.fromkeys([self.queue, *(n.queue for n in self.nodes if n.queue)]))


def plan(item: Item, workflow_id: str | None, queue: str | None, max_payload: int) -> Plan:
    """Check and encode a workflow; raises WorkflowError (nothing is stored)."""
    graph = item if isinstance(item, Workflow) else Workflow(item)
    nodes = graph.nodes
    if not nodes:
        raise WorkflowError("the workflow has no jobs")
    if len(nodes) > MAX_NODES:
        raise WorkflowError(f"a workflow holds at most {MAX_NODES} jobs, not {len(nodes)}")
    try:
        wid = new_job_id() if workflow_id is None else check_name("workflow id", workflow_id)
    except InvalidName as exc:
        raise WorkflowError(str(exc)) from None
    # queue= runs every job there; else each runs in its own, and the first job's
    # queue is the workflow's home.
    home = check_name("queue name", queue or nodes[0].envelope.queue)
    if queue is not None:
        nodes = [replace(n, envelope=replace(n.envelope, queue=home)) for n in nodes]
    spans_queues = any(n.envelope.queue != home for n in nodes)
    _check_graph(nodes)
    if any(n.envelope.idempotency_key is not None for n in nodes):
        raise WorkflowError(
            "a workflow's jobs take no idempotency key: give the workflow an id of your "
            "own (workflow_id=...), which makes submitting it again add nothing"
        )
    if any(n.envelope.unique_key is not None or n.envelope.delay_ms is not None for n in nodes):
        raise WorkflowError(
            "a workflow's jobs take no unique_key, countdown or eta: a job starts when its "
            "dependencies have ended"
        )
    dependants: dict[str, list[str]] = {n.id: [] for n in nodes}
    for node in nodes:
        for dependency in node.depends_on:
            dependants[dependency].append(node.id)
    stored = []
    for node in nodes:
        document: dict[str, Any] = {"id": wid}
        if node.passing is not None:
            document["pass"] = node.passing
        if spans_queues:
            document["home"] = home
        envelope = replace(node.envelope, workflow=document)
        stored.append(
            WorkflowNode(
                node.id,
                envelope.encode(max_payload),
                envelope.key,
                node.depends_on,
                dependants[node.id],
                node.passing is not None,
                node.collect,
                envelope.priority,
                envelope.retry_priority,
                None if envelope.queue == home else envelope.queue,
            )
        )
    return Plan(wid, home, stored)


def _check_graph(nodes: Sequence[Node]) -> None:
    """Every id once, every dependency a node, no cycle (Kahn's algorithm)."""
    index: dict[str, int] = {}
    for position, node in enumerate(nodes):
        if node.id in index:
            raise WorkflowError(
                f"job id {node.id} appears twice in the workflow: make each node with "
                "its own task.s(...)"
            )
        index[node.id] = position
    waiting_on = [0] * len(nodes)
    dependants: list[list[int]] = [[] for _ in nodes]
    for position, node in enumerate(nodes):
        if len(set(node.depends_on)) != len(node.depends_on):
            raise WorkflowError(f"job {node.id} names a dependency twice")
        for dependency in node.depends_on:
            if dependency not in index:
                raise WorkflowError(f"job {node.id} depends on {dependency}, not in the workflow")
            waiting_on[position] += 1
            dependants[index[dependency]].append(position)
    ready = [p for p, count in enumerate(waiting_on) if count == 0]
    heapq.heapify(ready)
    seen = 0
    while ready:
        position = heapq.heappop(ready)
        seen += 1
        for dependant in dependants[position]:
            waiting_on[dependant] -= 1
            if waiting_on[dependant] == 0:
                heapq.heappush(ready, dependant)
    if seen < len(nodes):
        cycle = _find_cycle(nodes, index, waiting_on)
        raise WorkflowError("the workflow has a cycle: " + " -> ".join(cycle))


def _find_cycle(nodes: Sequence[Node], index: dict[str, int], waiting_on: list[int]) -> list[str]:
    """One cycle among the nodes Kahn's algorithm could not order, for the message."""
    start = next(p for p, count in enumerate(waiting_on) if count > 0)
    path: list[int] = []
    on_path: dict[int, int] = {}
    position = start
    while position not in on_path:
        on_path[position] = len(path)
        path.append(position)
        position = next(index[d] for d in nodes[position].depends_on if waiting_on[index[d]] > 0)
    cycle = [*path[on_path[position] :], position]
    return [nodes[p].id for p in reversed(cycle)]


@dataclass(frozen=True, slots=True)
class NodeRecord:
    id: str
    task: str | None
    state: JobState
    depends_on: list[str]
    result: bytes | None
    reason: str | None
    error: str | None
    progress: bytes | None
    queue: str | None = None
    """The queue it runs in, when not its workflow's."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "state": self.state.value,
            "depends_on": self.depends_on,
            "result": self.result_value(),
            "reason": self.reason,
            "error": self.error,
            "progress": None if self.progress is None else orjson.loads(self.progress),
        }

    def result_value(self) -> Any:
        if self.state is not JobState.COMPLETED or self.result is None:
            return None
        return orjson.loads(self.result)


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """A workflow as Redis holds it: its status, counters and nodes in submit order."""

    id: str
    queue: str
    name: str
    status: WorkflowStatus
    counts: dict[str, int]
    created_at: int | None
    started_at: int | None
    finished_at: int | None
    nodes: list[NodeRecord]

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    @property
    def status_text(self) -> str:
        return self.status.value

    @classmethod
    def parse(cls, queue: str, workflow_id: str, reply: list[Any]) -> WorkflowRecord | None:
        if not reply:
            return None
        raw = reply[0]
        fields = {text(k): text(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}
        nodes = []
        for i in range(1, len(reply), 9):
            node_id, state, needs, result, reason, error, data, progress, runs_in = reply[i : i + 9]
            task = None
            if data:
                try:
                    task = orjson.loads(data).get("task")
                except (orjson.JSONDecodeError, AttributeError):
                    task = None
            nodes.append(
                NodeRecord(
                    text(node_id),
                    task,
                    JobState(text(state)) if state else JobState.CANCELLED,
                    text(needs).split(",") if needs else [],
                    result,
                    None if reason is None else text(reason),
                    None if error is None else text(error),
                    progress,
                    None if runs_in is None else text(runs_in),
                )
            )

        def number(name: str) -> int | None:
            return int(fields[name]) if name in fields else None

        return cls(
            id=workflow_id,
            queue=queue,
            name=fields.get("name", ""),
            status=WorkflowStatus(fields.get("status", "pending")),
            counts={name: int(fields.get(name, 0)) for name in COUNTS},
            created_at=number("created_at"),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            nodes=nodes,
        )

    def live_reads(self) -> list[Op[JobRecord | None]]:
        """Reads of the nodes released to other queues that have not ended yet: their
        home knows only that they were sent (they show as waiting there)."""
        return [Queue(n.queue or self.queue).job(n.id) for n in self._sent()]

    def with_live(self, records: Sequence[JobRecord | None]) -> WorkflowRecord:
        """This record with the states live_reads() found."""
        sent = {n.id for n in self._sent()}
        live = {r.id: r for r in records if r is not None and r.id in sent}
        nodes = [
            replace(n, state=live[n.id].state, progress=live[n.id].progress) if n.id in live else n
            for n in self.nodes
        ]
        return replace(self, nodes=nodes)

    def _sent(self) -> list[NodeRecord]:
        return [n for n in self.nodes if n.queue and n.state is JobState.WAITING]

    def result(self) -> Any:
        """The results of the nodes nothing depends on: one value when there is one
        such node (a chain's last step, a chord's callback), else a list in node order.
        WorkflowFailed (a JobFailed) if the workflow did not succeed."""
        if self.status is not WorkflowStatus.SUCCEEDED:
            bad = next((n for n in self.nodes if n.state is not JobState.COMPLETED), None)
            detail = f"; first: job {bad.id} {bad.state.value}" if bad else ""
            if bad is not None and bad.error:
                detail += f" ({bad.reason}: {bad.error.strip().splitlines()[-1]})"
            raise WorkflowFailed(self.id, f"workflow {self.status.value}{detail}")
        needed = {d for n in self.nodes for d in n.depends_on}
        exits = [n.result_value() for n in self.nodes if n.id not in needed]
        return exits[0] if len(exits) == 1 else exits

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "name": self.name,
            "status": self.status.value,
            "counts": self.counts,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "nodes": [n.as_dict() for n in self.nodes],
        }


def node_inputs(document: dict[str, Any], inputs: bytes) -> list[Any]:
    """The arguments to put before a node's own: its dependencies' results as fetched
    (a JSON array), shaped as the node's `workflow.pass` says. A dependency that did
    not succeed becomes a JobFailed."""
    passing = (document.get("workflow") or {}).get("pass")
    if passing is None or not inputs:
        return []
    values = [_input(value) for value in orjson.loads(inputs)]
    if passing == "one":
        return values[:1]
    return [values]


def _input(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1 and "$failed" in value:
        failed = value["$failed"]
        return JobFailed(
            str(failed.get("job")), f"{failed.get('reason')}: {failed.get('error', '')}".strip()
        )
    return value


# -- workflows across queues: the relay --------------------------------------------------

RELAY_BATCH = 100
"""Messages read from an outbox per round trip (and delivered per script call)."""
log = logging.getLogger("redwork.workflow")
Steps = Generator[list[Op[Any]], list[Any], int]
"""Round trips to make (the ops of one are pipelined), each sent by the caller and its
replies sent back in, so that the sync and the async clients share the logic; returns
how many messages were delivered."""
_SCRIPT_OF = {"run": "dispatch", "cancel": "withdraw", "ended": "report", "reopen": "report"}
_REQUIRED: dict[str, tuple[tuple[str, type], ...]] = {
    "run": (("home", str), ("data", str)),
    "cancel": (),
    "ended": (("seq", int), ("outcome", str)),
    "reopen": (("seq", int),),
}


def relay(sources: Iterable[str], ttl: int) -> Steps:
    """Deliver the messages in the outboxes of the queues `sources` (and of the queues
    those deliveries wrote to) to the scripts of their queues, oldest first, removing
    each once delivered. Safe to run at any time, by any number of callers at once: a
    message delivered twice applies once (see includes/workflow.lua). A message that
    cannot be delivered (malformed, or refused by the server) is set aside in its
    queue's `outbox:refused` with a log line, so that it holds up nothing."""
    todo = deque(dict.fromkeys(sources))
    delivered = 0
    while todo:
        source = Queue(todo.popleft())
        (messages,) = yield [source.outbox_messages(RELAY_BATCH)]
        handled: list[bytes] = []
        for target, script, group in _groups(source, messages):
            if script is None:
                yield [source.set_aside(m) for m in group]
                handled += group
                continue
            try:
                (replies,) = yield [_deliver(target, script, group, ttl)]
            except REFUSED as exc:
                if isinstance(exc, TRANSIENT):
                    raise
                replies = yield from _one_by_one(source, target, script, group, ttl, exc)
            codes, wrote = replies
            handled += [m for m, code in zip(group, codes, strict=True) if code is not Code.LATER]
            if wrote and target.name not in todo:
                todo.append(target.name)  # the delivery wrote messages of its own
        if handled:
            yield [source.remove_message(m) for m in handled]
        delivered += len(handled)
        if len(messages) == RELAY_BATCH and handled and source.name not in todo:
            todo.append(source.name)
    return delivered


def _groups(
    source: Queue, messages: list[bytes]
) -> Iterator[tuple[Queue, str | None, list[bytes]]]:
    """Runs of consecutive messages for the same script of the same queue (delivered
    in one call, in order); a malformed message alone, with no script."""
    group: list[bytes] = []
    current = ("", "")
    for message in messages:
        parsed = _parse(source, message)
        if group and parsed != current:
            yield Queue(current[0]), current[1], group
            group = []
        if parsed is None:
            yield source, None, [message]
        else:
            current = parsed
            group.append(message)
    if group:
        yield Queue(current[0]), current[1], group


def _parse(source: Queue, message: bytes) -> tuple[str, str] | None:
    """(queue, script) a message is for; None (logged) when it is not a message redwork
    writes: a script would fail on it, after applying what came before in its call."""
    try:
        fields = orjson.loads(message)
        target = Queue(fields["queue"]).name
        kind = fields["op"]
        if not isinstance(fields["id"], str) or not isinstance(fields["wf"], str):
            raise TypeError("id and wf must be strings")
        for name, kind_of in _REQUIRED[kind]:
            if not isinstance(fields[name], kind_of):
                raise TypeError(f"{name} must be a {kind_of.__name__}")
        if kind == "ended" and fields["outcome"] not in ("succeeded", "failed", "cancelled"):
            raise TypeError(f"no outcome {fields['outcome']!r}")
    except (orjson.JSONDecodeError, TypeError, KeyError, InvalidName) as exc:
        log.error(
            "an outbox message of %s is not one redwork writes (%s); it is kept in %s: %.200r",
            source.name, exc, source.refused, message,
        )  # fmt: skip
        return None
    return target, _SCRIPT_OF[kind]


def _deliver(target: Queue, script: str, messages: list[bytes], ttl: int) -> Op[Any]:
    if script == "dispatch":
        return target.dispatch(messages)
    if script == "withdraw":
        return target.withdraw(messages, ttl)
    return target.report(messages)


def _one_by_one(
    source: Queue, target: Queue, script: str, group: list[bytes], ttl: int, error: Exception
) -> Generator[list[Op[Any]], list[Any], tuple[list[Any], int]]:
    """After the server refused a call of several messages: each alone, setting aside
    the ones it still refuses (those before were applied, and apply once again)."""
    codes: list[Any] = []
    wrote = 0
    for message in group:
        try:
            ((reply, written),) = yield [_deliver(target, script, [message], ttl)]
            codes += reply
            wrote += written
        except REFUSED as exc:
            if isinstance(exc, TRANSIENT):
                raise
            log.error(
                "the server refused an outbox message of %s (%s); it is kept in %s: %.200r",
                source.name, exc if len(group) == 1 else error, source.refused, message,
            )  # fmt: skip
            yield [source.set_aside(message)]
            codes.append(None)
    return codes, wrote


def drive(steps: Steps, send: Callable[[list[Op[Any]]], list[Any]]) -> int:
    """Run `steps`, sending each round trip's ops with `send`; an error is thrown back
    into them."""
    try:
        ops = next(steps)
        while True:
            try:
                replies = send(ops)
            except Exception as exc:
                ops = steps.throw(exc)
            else:
                ops = steps.send(replies)
    except StopIteration as done:
        return int(done.value)


async def adrive(steps: Steps, send: Callable[[list[Op[Any]]], Awaitable[list[Any]]]) -> int:
    try:
        ops = next(steps)
        while True:
            try:
                replies = await send(ops)
            except Exception as exc:
                ops = steps.throw(exc)
            else:
                ops = steps.send(replies)
    except StopIteration as done:
        return int(done.value)
