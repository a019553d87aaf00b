"""The Redis side of a queue: its keys, and one typed operation per script.

An operation is data (what to send, and how to read the reply), so that the sync and
the async clients share every line of it; `run` and `arun` send one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from redwork.connection import AsyncRedis, SyncRedis
from redwork.errors import NotDurable
from redwork.job import Envelope, JobRecord, check_name
from redwork.scripts import Code, Script, load

if TYPE_CHECKING:
    from redwork.settings import Settings

T = TypeVar("T")
KEY_ROOT = "rw"
QUEUES_KEY = f"{KEY_ROOT}:queues"
# Seconds an ended job is kept, where a caller gives no other (Settings.result_ttl).
DEFAULT_TTL = 86_400


@dataclass(frozen=True, slots=True)
class Op(Generic[T]):
    """One round trip: a script call (or a plain command) and the parser of its reply."""

    parse: Callable[[Any], T]
    script: Script | None = None
    keys: Sequence[str] = ()
    args: Sequence[str | bytes | int | float] = ()
    command: Sequence[str | bytes | int] = ()


def _command(op: Op[Any]) -> Sequence[Any]:
    if op.script is None:
        return op.command
    return ("EVALSHA", op.script.sha, len(op.keys), *op.keys, *op.args)


def run(client: SyncRedis, op: Op[T]) -> T:
    if op.script is None:
        return op.parse(client.execute_command(*op.command))  # type: ignore[no-untyped-call]
    try:
        reply = client.evalsha(op.script.sha, len(op.keys), *op.keys, *op.args)
    except redis.exceptions.NoScriptError:
        reply = client.eval(op.script.source, len(op.keys), *op.keys, *op.args)
    return op.parse(reply)


async def arun(client: AsyncRedis, op: Op[T]) -> T:
    if op.script is None:
        return op.parse(await client.execute_command(*op.command))
    try:
        reply = await client.evalsha(op.script.sha, len(op.keys), *op.keys, *op.args)
    except redis.exceptions.NoScriptError:
        reply = await client.eval(op.script.source, len(op.keys), *op.keys, *op.args)
    return op.parse(reply)


# Calls in flight on one connection in run_many: enough to keep the server busy while
# the caller builds the next call, few enough to bound the replies waiting to be read.
WINDOW = 8


def run_many(client: SyncRedis, ops: Iterable[Op[T]]) -> list[T]:
    """Send ops over one connection without waiting for each reply, so that building
    the next op (ops may be a generator) overlaps the server running the last."""
    if isinstance(client, redis.cluster.RedisCluster):
        return _run_on_cluster(client, ops)
    pool = client.connection_pool
    conn = pool.get_connection()
    pending: deque[Op[T]] = deque()
    results: list[T] = []

    def read_one() -> None:
        op = pending.popleft()
        try:
            results.append(op.parse(conn.read_response()))
        except redis.exceptions.NoScriptError:
            results.append(run(client, op))  # loads the script for the calls that follow

    try:
        for op in ops:
            conn.send_command(*_command(op))  # type: ignore[no-untyped-call]
            pending.append(op)
            if len(pending) >= WINDOW:
                read_one()
        while pending:
            read_one()
    except BaseException:
        conn.disconnect()  # type: ignore[no-untyped-call]  # replies may be left unread
        raise
    finally:
        pool.release(conn)
    return results


async def arun_many(client: AsyncRedis, ops: Iterable[Op[T]]) -> list[T]:
    """The async twin of run_many()."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        return await _arun_on_cluster(client, ops)
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    pending: deque[Op[T]] = deque()
    results: list[T] = []

    async def read_one() -> None:
        op = pending.popleft()
        try:
            results.append(op.parse(await conn.read_response()))
        except redis.exceptions.NoScriptError:
            results.append(await arun(client, op))

    try:
        for op in ops:
            await conn.send_command(*_command(op))
            pending.append(op)
            if len(pending) >= WINDOW:
                await read_one()
        while pending:
            await read_one()
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    return results


# Ops a cluster pipeline sends at once: it splits them by node and writes each node's
# share in one go, so a batch bounds the replies held in memory, not the round trips.
CLUSTER_BATCH = 1000


def _batches(ops: Iterable[Op[T]]) -> Iterator[list[Op[T]]]:
    batch: list[Op[T]] = []
    for op in ops:
        batch.append(op)
        if len(batch) == CLUSTER_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _cluster_reply(op: Op[T], reply: Any) -> T | None:
    """The parsed reply, or None where the node did not have the script yet."""
    if isinstance(reply, redis.exceptions.NoScriptError):
        return None
    if isinstance(reply, Exception):
        raise reply
    return op.parse(reply)


def _run_on_cluster(client: redis.cluster.RedisCluster, ops: Iterable[Op[T]]) -> list[T]:
    results: list[T] = []
    for batch in _batches(ops):
        pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for op in batch:
            pipe.execute_command(*_command(op))
        for op, reply in zip(batch, pipe.execute(raise_on_error=False), strict=True):
            parsed = _cluster_reply(op, reply)
            results.append(run(client, op) if parsed is None else parsed)
    return results


async def _arun_on_cluster(
    client: redis.asyncio.cluster.RedisCluster, ops: Iterable[Op[T]]
) -> list[T]:
    results: list[T] = []
    for batch in _batches(ops):
        pipe = client.pipeline(transaction=False)
        for op in batch:
            pipe.execute_command(*_command(op))
        for op, reply in zip(batch, await pipe.execute(raise_on_error=False), strict=True):
            parsed = _cluster_reply(op, reply)
            results.append(await arun(client, op) if parsed is None else parsed)
    return results


@dataclass(frozen=True, slots=True)
class Durability:
    """Wait after writes until `replicas` replicas have them (WAIT) and, with `fsync`,
    until they are in the AOF on disk here and on those replicas (WAITAOF)."""

    replicas: int
    fsync: bool
    timeout_ms: int

    @classmethod
    def asked(cls, settings: Settings) -> Durability | None:
        """The durability the settings ask for; None when they ask for none."""
        if settings.ack_replicas == 0 and not settings.ack_fsync:
            return None
        timeout_ms = max(1, int(settings.ack_timeout * 1000))
        return cls(settings.ack_replicas, settings.ack_fsync, timeout_ms)

    def command(self) -> tuple[str | int, ...]:
        if self.fsync:
            return ("WAITAOF", 1, self.replicas, self.timeout_ms)
        return ("WAIT", self.replicas, self.timeout_ms)

    def check(self, reply: Any) -> None:
        if isinstance(reply, redis.exceptions.ResponseError):
            # Such as a wait sent to a node that was the primary when the slot map was
            # read and is a replica now (its writes were redirected): try again.
            raise NotDurable(f"the server could not confirm a write: {reply}")
        if isinstance(reply, Exception):
            raise reply
        local, replicas = (int(reply[0]), int(reply[1])) if self.fsync else (1, int(reply))
        if local < 1 or replicas < self.replicas:
            where = f"{replicas} of {self.replicas} replicas"
            if self.fsync:
                where += ", the local AOF" if local else ", not the local AOF"
            raise NotDurable(f"a write reached {where} within {self.timeout_ms} ms")


def _durable_round(
    client: SyncRedis | AsyncRedis, pipe: Any, ops: list[Op[T]], durability: Durability
) -> None:
    """Queue `ops` and the wait on `pipe`. WAIT counts the writes of its own connection,
    so it must travel with them: on a cluster, one per node, addressed to that node.
    Plain commands (reads, and writes safe to lose such as an outbox's LREM) need none."""
    for op in ops:
        pipe.execute_command(*_command(op))
    scripts = [op for op in ops if op.script is not None]
    if not scripts:
        return
    if isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster):
        nodes: dict[str, Any] = {}
        for op in scripts:
            node = client.get_node_from_key(op.keys[0])
            if node is not None:  # None: a slot map being rebuilt; the writes fail too
                nodes[node.name] = node
        for node in nodes.values():
            pipe.execute_command(*durability.command(), target_nodes=node)
    else:
        pipe.execute_command(*durability.command())


def _durable_replies(
    ops: list[Op[T]], replies: list[Any], durability: Durability, results: dict[int, T],
    indexes: list[int],
) -> list[int]:  # fmt: skip
    """Record the parsed replies; returns the indexes of ops whose script the server did
    not have (not applied: to send again once it is loaded)."""
    for wait in replies[len(ops) :]:
        durability.check(wait)
    missing = []
    for index, op, reply in zip(indexes, ops, replies, strict=False):
        parsed = _cluster_reply(op, reply)
        if parsed is None:
            missing.append(index)
        else:
            results[index] = parsed
    return missing


def run_durably(client: SyncRedis, ops: Sequence[Op[T]], durability: Durability) -> list[T]:
    """run_many() for script ops whose writes must be durable before this returns;
    NotDurable if the server could not make them so in time (they stay applied)."""
    results: dict[int, T] = {}
    for start in range(0, len(ops), CLUSTER_BATCH):
        indexes = list(range(start, min(start + CLUSTER_BATCH, len(ops))))
        while indexes:
            batch = [ops[i] for i in indexes]
            pipe = client.pipeline(transaction=False)
            try:
                _durable_round(client, pipe, batch, durability)
            except redis.exceptions.SlotNotCoveredError:
                # Our own look-up, not the client's commands, found a slot without a
                # node: nothing else would make the client read the map again.
                assert isinstance(client, redis.cluster.RedisCluster)
                client.nodes_manager.initialize()
                raise
            replies = pipe.execute(raise_on_error=False)
            indexes = _durable_replies(batch, replies, durability, results, indexes)
            for script in {ops[i].script for i in indexes}:
                if script is not None:
                    client.script_load(script.source)
    return [results[i] for i in range(len(ops))]


async def arun_durably(client: AsyncRedis, ops: Sequence[Op[T]], durability: Durability) -> list[T]:
    """The async twin of run_durably()."""
    results: dict[int, T] = {}
    for start in range(0, len(ops), CLUSTER_BATCH):
        indexes = list(range(start, min(start + CLUSTER_BATCH, len(ops))))
        while indexes:
            batch = [ops[i] for i in indexes]
            pipe = client.pipeline(transaction=False)
            try:
                _durable_round(client, pipe, batch, durability)
            except redis.exceptions.SlotNotCoveredError:
                assert isinstance(client, redis.asyncio.cluster.RedisCluster)
                await client.nodes_manager.initialize()
                raise
            replies = await pipe.execute(raise_on_error=False)
            indexes = _durable_replies(batch, replies, durability, results, indexes)
            for script in {ops[i].script for i in indexes}:
                if script is not None:
                    await client.script_load(script.source)
    return [results[i] for i in range(len(ops))]


@dataclass(frozen=True, slots=True)
class Delivery:
    """A job leased to this worker: the token fences everything it reports."""

    queue: str
    id: str
    token: int
    attempt: int
    data: bytes
    inputs: bytes = b""
    """For a workflow's node given its dependencies' results: their JSON array."""


@dataclass(frozen=True, slots=True)
class Fetched:
    deliveries: list[Delivery]
    next_due_in_ms: int | None
    """Milliseconds until the queue's next delayed job is due, if it has one."""


@dataclass(frozen=True, slots=True)
class NewJob:
    id: str
    data: bytes
    key: str | None = None
    """Per-key ordering: jobs of one key run one at a time, in enqueue order."""
    idempotency_key: str | None = None
    priority: int = 0
    retry_priority: int | None = None
    delay_ms: int | None = None
    """Runnable this many ms after the server stores it (delayed until then)."""
    unique_key: str | None = None
    unique_policy: str = "reject"

    @classmethod
    def of(cls, envelope: Envelope, max_bytes: int) -> NewJob:
        """The job to store for a job document (PayloadTooLarge beyond max_bytes)."""
        e = envelope
        return cls(
            check_name("job id", e.id),
            e.encode(max_bytes),
            e.key,
            e.idempotency_key,
            e.priority,
            e.retry_priority,
            e.delay_ms,
            e.unique_key,
            e.unique_policy,
        )

    def as_args(self) -> tuple[str | bytes | int, ...]:
        """The nine fields of enqueue.lua, '' for each one not given."""

        def given(value: str | int | None) -> str | int:
            return "" if value is None else value

        return (
            self.id,
            self.data,
            given(self.key),
            given(self.idempotency_key),
            self.priority,
            given(self.retry_priority),
            given(self.delay_ms),
            given(self.unique_key),
            self.unique_policy if self.unique_key is not None else "",
        )


@dataclass(frozen=True, slots=True)
class WorkflowNode:
    """A job of a workflow, as stored: its dependencies (needs) and dependants (next)."""

    id: str
    data: bytes
    key: str | None
    needs: Sequence[str]
    next: Sequence[str]
    passes_results: bool
    """Given its dependencies' results (see docs/workflows.md)."""
    collects: bool
    """Runs even when a dependency did not succeed, given its error instead."""
    priority: int = 0
    retry_priority: int | None = None
    queue: str | None = None
    """The queue it runs in, when not its workflow's (its home): see docs/workflows.md."""


@dataclass(frozen=True, slots=True)
class StateWrite:
    """A write to a versioned state entry (`key` is its Redis key)."""

    key: str
    value: bytes | None
    """The JSON document to save; None deletes the entry."""
    etag: int | None = None
    """The version the entry must be at for the write to apply; None: any."""

    def as_args(self) -> tuple[str, bytes, str]:
        """(op, value, etag) as the scripts take them (see state_write.lua)."""
        op = "save" if self.value is not None else "delete"
        return op, self.value or b"", "" if self.etag is None else str(self.etag)


@dataclass(frozen=True, slots=True)
class Completion:
    id: str
    token: int
    result: bytes
    writes: Sequence[StateWrite] = ()
    """State writes staged by the job, applied atomically with its completion."""
    retry_in_ms: int = -1
    """Delay before the next attempt if a write's etag does not match (-1: fail)."""

    def effects(self) -> bytes:
        """The effects argument of complete.lua: b"" when the job wrote nothing."""
        if not self.writes:
            return b""
        writes = []
        for write in self.writes:
            op, value, etag = write.as_args()
            writes.append((op, write.key, value.decode(), etag))
        return orjson.dumps({"writes": writes, "retry_in": self.retry_in_ms})


@dataclass(frozen=True, slots=True)
class Failure:
    id: str
    token: int
    reason: str
    error: str
    retry_in_ms: int = -1
    """Delay before the next attempt; -1 sends the job to the failed store."""


@dataclass(frozen=True, slots=True)
class Counts:
    waiting: int
    active: int
    delayed: int
    failed: int
    stats: dict[str, int]
    held: int = 0
    """Keyed jobs waiting behind an earlier job of their key."""
    limited: int = 0
    """Jobs waiting for room under a rate or concurrency limit (parked)."""


_CODES = tuple(Code)  # indexing a tuple is much cheaper than calling the enum


def _codes(reply: list[int]) -> list[Code]:
    return [_CODES[c] for c in reply]


def _code_or_text(reply: list[int | bytes]) -> list[Code | str]:
    """A code per job, or a string: for enqueue, the id of the job an idempotency key
    named first; for cancel, the state that kept the job from being cancelled."""
    return [_CODES[r] if isinstance(r, int) else r.decode() for r in reply]


Delivered = tuple[list[Code | str], int]
"""One reply per outbox message delivered, and how many messages the call wrote to the
outbox of the queue it ran in."""


def _delivered(reply: list[Any]) -> Delivered:
    return _code_or_text(reply[0]), int(reply[1])


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Queue:
    """A named queue; every key carries the hash tag {name}, so that each script
    touches a single cluster slot."""

    def __init__(self, name: str) -> None:
        self.name = check_name("queue name", name)
        self.prefix = f"{KEY_ROOT}:{{{name}}}:"
        p = self.prefix
        self.wait, self.active, self.delayed = p + "wait", p + "active", p + "delayed"
        self.failed, self.marker, self.events = p + "failed", p + "marker", p + "events"
        self.stats, self.seq, self.held = p + "stats", p + "seq", p + "held"
        self.tokens = p + "tokens"
        self.workflows, self.levels, self.outbox = p + "workflows", p + "levels", p + "outbox"
        self.refused = p + "outbox:refused"
        self.aborts, self.schedules = p + "aborts", p + "schedules"
        self.limits, self.limited = p + "limits", p + "limited"
        """The channel on which the ids of running jobs to abort are published."""

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def job_channel(self, job_id: str) -> str:
        return self.job_key(job_id)

    def enqueue(
        self,
        jobs: Iterable[NewJob],
        idempotency_ms: int,
        ttl: int = DEFAULT_TTL,
        tick: tuple[str, int] | None = None,
    ) -> Op[list[Code | str]]:
        """`ttl`: seconds a job replaced under its uniqueness key is kept. `tick`:
        (schedule name, tick ms) to claim for a periodic job; the reply is [] when the
        tick was claimed already (nothing is added)."""
        schedule, at = tick or ("", "")
        args: list[str | bytes | int] = [self.prefix, self.name, idempotency_ms, ttl, schedule, at]
        for job in jobs:
            args += job.as_args()
        keys = (self.wait, self.marker, self.events, self.stats, self.delayed, self.schedules)
        return Op(_code_or_text, load("enqueue"), keys, args)

    def fetch(self, count: int, lease_ms: int, worker_id: str, max_bytes: int) -> Op[Fetched]:
        def parse(reply: list[Any]) -> Fetched:
            deliveries = [
                Delivery(
                    self.name,
                    text(reply[i]),
                    int(reply[i + 1]),
                    int(reply[i + 2]),
                    reply[i + 3],
                    reply[i + 4],
                )
                for i in range(1, len(reply), 5)
            ]
            return Fetched(deliveries, None if reply[0] == -1 else int(reply[0]))

        keys = (
            self.wait,
            self.active,
            self.delayed,
            self.failed,
            self.marker,
            self.events,
            self.seq,
            self.stats,
            self.tokens,
        )
        return Op(
            parse,
            load("fetch"),
            keys,
            (self.prefix, self.name, count, lease_ms, worker_id, max_bytes),
        )

    def complete(self, completions: Iterable[Completion], ttl: int) -> Op[list[Code]]:
        args: list[str | bytes | int] = [self.prefix, self.name, ttl]
        state_keys: dict[str, None] = {}
        for c in completions:
            args += (c.id, c.token, c.result, c.effects())
            state_keys.update(dict.fromkeys(w.key for w in c.writes))
        keys = (
            self.active,
            self.events,
            self.stats,
            self.wait,
            self.marker,
            self.delayed,
            self.failed,
            *state_keys,
        )
        return Op(_codes, load("complete"), keys, args)

    def fail(self, failures: Iterable[Failure], ttl: int = DEFAULT_TTL) -> Op[list[Code]]:
        """`ttl`: seconds a job whose run ended because it was cancelled is kept."""
        args: list[str | int] = [self.prefix, self.name, ttl]
        for f in failures:
            args += (f.id, f.token, f.reason, f.error, f.retry_in_ms)
        keys = (
            self.active,
            self.delayed,
            self.failed,
            self.events,
            self.stats,
            self.marker,
            self.wait,
        )
        return Op(_codes, load("fail"), keys, args)

    def heartbeat(
        self, leases: Iterable[tuple[str, int]], lease_ms: int
    ) -> Op[tuple[list[str], list[str]]]:
        """Replies (ids whose lease was lost, ids of jobs asked to abort)."""
        args: list[str | int] = [self.prefix, lease_ms]
        for job_id, token in leases:
            args += (job_id, token)

        def parse(reply: list[list[bytes]]) -> tuple[list[str], list[str]]:
            lost, aborted = reply
            return [text(i) for i in lost], [text(i) for i in aborted]

        return Op(parse, load("heartbeat"), (self.active,), args)

    def progress(self, job_id: str, token: int, progress: bytes) -> Op[Code]:
        return Op(
            lambda reply: _CODES[reply],
            load("progress"),
            (self.events,),
            (self.prefix, self.name, job_id, token, progress),
        )

    def handback(self, leases: Iterable[tuple[str, int]], ttl: int = DEFAULT_TTL) -> Op[list[Code]]:
        """`ttl`: seconds a job asked to abort, cancelled instead, is kept."""
        args: list[str | int] = [self.prefix, self.name, ttl]
        for job_id, token in leases:
            args += (job_id, token)
        keys = (self.wait, self.active, self.marker, self.events)
        return Op(_codes, load("handback"), keys, args)

    def recover(
        self, max_losses: int, ttl: int = DEFAULT_TTL, limit: int = 1000
    ) -> Op[tuple[int, int]]:
        keys = (self.wait, self.active, self.failed, self.marker, self.events, self.stats)
        return Op(
            lambda r: (int(r[0]), int(r[1])),
            load("recover"),
            keys,
            (self.prefix, self.name, max_losses, limit, ttl),
        )

    def cancel(self, job_ids: Sequence[str], ttl: int) -> Op[list[Code | str]]:
        """Replies: OK, 'cancelling' (a running job asked to abort), or the state that
        kept the job from being cancelled."""
        keys = (self.wait, self.delayed, self.marker, self.events, self.stats, self.aborts)
        return Op(_code_or_text, load("cancel"), keys, (self.prefix, self.name, ttl, *job_ids))

    def retry_failed(self, job_ids: Sequence[str] = ()) -> Op[int]:
        keys = (self.wait, self.failed, self.marker, self.events)
        return Op(int, load("retry_failed"), keys, (self.prefix, self.name, *job_ids))

    def purge_failed(self, job_ids: Sequence[str] = ()) -> Op[int]:
        keys = (self.failed, self.events)
        return Op(int, load("purge_failed"), keys, (self.prefix, self.name, *job_ids))

    def job(self, job_id: str) -> Op[JobRecord | None]:
        def parse(reply: Any) -> JobRecord | None:
            fields = as_dict(reply)
            return JobRecord.from_hash(self.name, job_id, fields) if fields else None

        return Op(parse, command=("HGETALL", self.job_key(job_id)))

    def timeline(self, job_id: str, depth: int = 10_000) -> Op[list[tuple[str, int, int]]]:
        """(event, attempt, server ms) of the job, oldest first, from the last `depth`
        entries of the event stream (each entry names the jobs of one script call)."""
        needle = job_id.encode()

        def parse(entries: list[Any]) -> list[tuple[str, int, int]]:
            found = []
            for _, raw in reversed(entries):
                fields = as_dict(raw)
                jobs = fields[b"jobs"].split(b",")
                if needle in jobs:
                    attempt = fields[b"attempts"].split(b",")[jobs.index(needle)]
                    found.append((fields[b"event"].decode(), int(attempt), int(fields[b"at"])))
            return found

        return Op(parse, command=("XREVRANGE", self.events, "+", "-", "COUNT", depth))

    def failed_ids(self, start: int = 0, stop: int = -1) -> Op[list[str]]:
        return Op(lambda r: [text(i) for i in r], command=("ZREVRANGE", self.failed, start, stop))

    def counts(self) -> Op[Counts]:
        def parse(reply: list[Any]) -> Counts:
            waiting, active, delayed, failed, stats, held, limited = reply
            raw = as_dict(stats)
            return Counts(
                int(waiting),
                int(active),
                int(delayed),
                int(failed),
                {text(k): int(v) for k, v in raw.items()},
                int(held),
                int(limited),
            )

        keys = (
            self.wait,
            self.active,
            self.delayed,
            self.failed,
            self.stats,
            self.held,
            self.levels,
            self.limited,
        )
        return Op(parse, load("counts"), keys, ())

    def submit_workflow(
        self, workflow_id: str, name: str, ttl: int, nodes: Iterable[WorkflowNode]
    ) -> Op[Code | str]:
        """Replies OK, DUPLICATE (the workflow exists), or the id of a node that exists
        already as a job."""
        args: list[str | bytes | int] = [self.prefix, self.name, workflow_id, name, ttl]
        for n in nodes:
            args += (
                n.id,
                n.data,
                n.key or "",
                ",".join(n.needs),
                ",".join(n.next),
                "1" if n.passes_results else "",
                "1" if n.collects else "",
                n.priority,
                "" if n.retry_priority is None else n.retry_priority,
                n.queue or "",
            )
        keys = (self.wait, self.marker, self.events, self.stats, self.workflows)
        return Op(
            lambda r: _CODES[r] if isinstance(r, int) else text(r),
            load("workflow_submit"),
            keys,
            args,
        )

    def cancel_workflow(self, workflow_id: str, ttl: int) -> Op[int | str]:
        """Replies the number of nodes cancelled, or the status of a workflow that had
        ended already ('unknown' if there is none)."""
        keys = (self.wait, self.delayed, self.marker, self.events, self.stats)
        return Op(
            lambda r: r if isinstance(r, int) else text(r),
            load("workflow_cancel"),
            keys,
            (self.prefix, self.name, workflow_id, ttl),
        )

    def workflow(self, workflow_id: str) -> Op[list[Any]]:
        """The raw view of workflow_read.lua ([] when there is no such workflow)."""
        return Op(list, load("workflow_read"), (self.workflow_key(workflow_id),), (self.prefix,))

    # -- workflows across queues: the outbox and the scripts of its messages ------------

    def outbox_messages(self, count: int) -> Op[list[bytes]]:
        """The oldest `count` messages this queue's transitions wrote for other queues."""
        return Op(list, command=("LRANGE", self.outbox, 0, count - 1))

    def remove_message(self, message: bytes) -> Op[int]:
        return Op(int, command=("LREM", self.outbox, 1, message))

    def set_aside(self, message: bytes) -> Op[int]:
        """Keep a message the server refused (for inspection), before its removal."""
        return Op(int, command=("RPUSH", self.refused, message))

    def dispatch(self, messages: Sequence[bytes]) -> Op[Delivered]:
        """Add workflows' jobs released at their home ('run' messages)."""
        keys = (self.wait, self.marker, self.events, self.stats, self.outbox)
        return Op(_delivered, load("workflow_dispatch"), keys, (self.prefix, self.name, *messages))

    def withdraw(self, messages: Sequence[bytes], ttl: int) -> Op[Delivered]:
        """Cancel workflows' jobs their home cancelled, if not started ('cancel')."""
        keys = (self.wait, self.delayed, self.marker, self.events, self.stats, self.outbox)
        args: list[str | bytes | int] = [self.prefix, self.name, ttl, *messages]
        return Op(_delivered, load("workflow_withdraw"), keys, args)

    def report(self, messages: Sequence[bytes]) -> Op[Delivered]:
        """Apply at home the ends and reopenings of jobs that run in other queues
        ('ended', 'reopen')."""
        keys = (self.events, self.wait, self.marker, self.outbox)
        return Op(_delivered, load("workflow_report"), keys, (self.prefix, self.name, *messages))

    def workflow_key(self, workflow_id: str) -> str:
        return f"{self.prefix}wf:{workflow_id}"

    def workflow_ids(self, start: int = 0, stop: int = -1) -> Op[list[str]]:
        """Workflows, newest first (some may have expired since)."""
        return Op(
            lambda r: [text(i) for i in r], command=("ZREVRANGE", self.workflows, start, stop)
        )

    def completed_per_minute(self, minutes: Sequence[int]) -> Op[list[int]]:
        keys = [f"{self.prefix}done:{m}" for m in minutes]
        return Op(lambda r: [int(v or 0) for v in r], command=("MGET", *keys))


def as_dict(reply: Any) -> dict[bytes, bytes]:
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))
