"""Model-based test of the Lua scripts (reliability plan M1): a Hypothesis state machine
calls enqueue, fetch, heartbeat, complete, fail, handback, recover, cancel, retry_failed
and purge_failed through redwork.queue.Queue on the real server, and after every step
compares the keys with a small pure-Python model of the queue.

After every step: each job is in the state the model expects, with the attempt, token
and losses it expects; tokens never go down, attempts only where handback gives one back
or retry_failed resets them; the wait lists and each key's line hold the model's jobs in
the model's order; at most one job of a key circulates (waiting, active or delayed);
check_invariants finds nothing. A report for a delivery that is not the job's current one
gets LEASE_LOST, a repeat for one that was completed, failed or retried ALREADY_DONE, and
either leaves the job's hash as it was.

The scripts read the server's clock, which nothing here sleeps on or overrides: each
script call waits until the server's clock has moved past the previous call's
millisecond. So ties in a ZSET (equal scores sort by id) only happen within one call,
where the model mirrors them, and a lease of 1 ms has run out by the next call, which is
how leases expire."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from redwork.queue import Completion, Failure, NewJob, Op, Queue, run
from redwork.scripts import Code
from tests.chaos.harness import check_invariants
from tests.conftest import DAY_MS
from tests.test_queue import BIG, doc, enqueue, fetch_one, server_ms

T = TypeVar("T")
Q = Queue("q")
KEYS = ("a",)
PRIORITIES = (7, 3, 0)
"""The priorities used, in the order fetch takes them."""
LEASE = 60_000
"""ms: a lease that does not run out during a test."""
EXPIRED = 1
"""ms: a lease that has run out by the next call."""
RETRY_LATER = 3_600_000
"""ms: a retry that does not fall due during a test (0: due at the next fetch)."""
RETRIES = (-1, 0, RETRY_LATER)
MAX_LOSSES = 2
TTL = 600
WORKERS = ("w1", "w2")
GONE = "gone"
"""The model's state of a purged job: it has no hash."""
CIRCULATING = frozenset({"waiting", "active", "delayed"})

Lease = tuple[str, int]

MODEL_SETTINGS = settings(
    max_examples=20,
    stateful_step_count=80,
    deadline=None,
    derandomize=True,
    database=None,
)


@dataclass
class Job:
    id: str
    key: str | None
    priority: int
    enqueued: int
    """The enqueue call: calls have distinct server ms, so this orders `enqueued_at`."""
    state: str = "waiting"
    attempt: int = 0
    token: int = 0
    losses: int = 0
    worker: str | None = None
    expired: bool = False
    """Active under a lease of EXPIRED ms: recover takes it back."""
    abort: bool = False
    due: bool = False
    """Delayed for a retry that the next fetch promotes."""
    scored: int = 0
    """The call that last put it in a ZSET (active, delayed or failed): the jobs of one
    call share a score there, and a ZSET orders equal scores by member."""

    def order(self) -> tuple[int, str]:
        return self.scored, self.id


@dataclass
class Model:
    """What the keys should hold, by docs/protocol.md."""

    jobs: dict[str, Job] = field(default_factory=dict)
    wait: dict[int, deque[str]] = field(default_factory=lambda: {p: deque() for p in PRIORITIES})
    """Per priority, first to be fetched first."""
    heads: dict[str, str] = field(default_factory=dict)
    lines: dict[str, deque[str]] = field(default_factory=lambda: {k: deque() for k in KEYS})
    calls: int = 0
    tokens: int = 0
    """The queue's counter (`seq`) that every lease takes its fencing token from."""

    def tick(self) -> int:
        self.calls += 1
        return self.calls

    def in_state(self, state: str) -> list[Job]:
        return [job for job in self.jobs.values() if job.state == state]

    def lease_code(self, job_id: str, token: int) -> Code:
        job = self.jobs[job_id]
        if token != job.token:
            return Code.LEASE_LOST
        if job.state == "active":
            return Code.OK
        if job.state in ("completed", "failed", "delayed"):
            return Code.ALREADY_DONE
        return Code.LEASE_LOST

    def to_front(self, ids: Sequence[str]) -> None:
        for job_id in reversed(ids):
            self.wait[self.jobs[job_id].priority].appendleft(job_id)

    def end(self, job: Job, state: str) -> None:
        """The job ends for good: the next job of its key, if any, joins the wait list."""
        job.state = state
        if job.key is None or self.heads.get(job.key) != job.id:
            return
        line = self.lines[job.key]
        if line:
            head = self.heads[job.key] = line.popleft()
            self.wait[self.jobs[head].priority].append(head)
        else:
            del self.heads[job.key]

    def enqueue(self, jobs: Sequence[tuple[str, str | None, int]]) -> list[Code]:
        now = self.tick()
        codes = []
        for job_id, key, priority in jobs:
            if job_id in self.jobs:
                codes.append(Code.DUPLICATE)
                continue
            self.jobs[job_id] = Job(job_id, key, priority, now)
            if key is not None and key in self.heads:
                self.lines[key].append(job_id)
            else:
                if key is not None:
                    self.heads[key] = job_id
                self.wait[priority].append(job_id)
            codes.append(Code.OK)
        return codes

    def fetch(
        self, count: int, worker: str, expire: bool
    ) -> tuple[list[tuple[str, int, int]], bool]:
        """The deliveries (id, token, attempt), and whether no job is left delayed."""
        now = self.tick()
        for job in sorted((j for j in self.in_state("delayed") if j.due), key=Job.order):
            job.state, job.due = "waiting", False
            self.wait[job.priority].append(job.id)
        taken: list[str] = []
        for p in PRIORITIES:
            while len(taken) < count and self.wait[p]:
                taken.append(self.wait[p].popleft())
        delivered = []
        for job_id in taken:
            job = self.jobs[job_id]
            if job.losses and delivered:  # one that lost its worker before travels alone
                break
            job.state, job.worker, job.expired, job.scored = "active", worker, expire, now
            self.tokens += 1
            job.token = self.tokens
            job.attempt += 1
            delivered.append((job.id, job.token, job.attempt))
            if job.losses:
                break
        self.to_front(taken[len(delivered) :])
        return delivered, not self.in_state("delayed")

    def complete(self, leases: Sequence[Lease]) -> list[Code]:
        codes = []
        for job_id, token in leases:
            code = self.lease_code(job_id, token)
            if code == Code.OK:
                self.end(self.jobs[job_id], "completed")
            codes.append(code)
        return codes

    def fail(self, runs: Sequence[tuple[Lease, int]]) -> list[Code]:
        now = self.tick()
        codes = []
        for (job_id, token), retry_in in runs:
            code = self.lease_code(job_id, token)
            codes.append(code)
            if code != Code.OK:
                continue
            job = self.jobs[job_id]
            job.scored = now
            if job.abort:
                self.end(job, "cancelled")
            elif retry_in < 0:
                self.end(job, "failed")
            else:
                job.state, job.due = "delayed", retry_in == 0
        return codes

    def heartbeat(self, leases: Sequence[Lease], expire: bool) -> tuple[list[str], list[str]]:
        now = self.tick()
        lost, aborted = [], []
        for job_id, token in leases:
            if self.lease_code(job_id, token) != Code.OK:
                lost.append(job_id)
                continue
            self.jobs[job_id].expired, self.jobs[job_id].scored = expire, now
            if self.jobs[job_id].abort:
                aborted.append(job_id)
        return lost, aborted

    def handback(self, leases: Sequence[Lease]) -> tuple[list[Code], list[str]]:
        """The codes, and the jobs that were given their attempt back."""
        codes, returned = [], []
        for job_id, token in leases:
            if self.lease_code(job_id, token) != Code.OK:
                codes.append(Code.LEASE_LOST)
                continue
            codes.append(Code.OK)
            job = self.jobs[job_id]
            if job.abort:
                self.end(job, "cancelled")
            else:
                job.state, job.worker = "waiting", None
                job.attempt -= 1
                returned.append(job_id)
        self.to_front(returned)
        return codes, returned

    def recover(self) -> tuple[int, int]:
        now = self.tick()
        recovered, buried = [], 0
        for job in sorted((j for j in self.in_state("active") if j.expired), key=Job.order):
            if job.abort:
                self.end(job, "cancelled")
                continue
            job.losses += 1
            if job.losses >= MAX_LOSSES:
                job.scored = now
                self.end(job, "failed")
                buried += 1
            else:
                job.state = "waiting"
                recovered.append(job.id)
        self.to_front(recovered)
        return len(recovered), buried

    def cancel(self, ids: Sequence[str]) -> list[Code | str]:
        replies: list[Code | str] = []
        for job_id in ids:
            job = self.jobs.get(job_id)
            if job is None or job.state == GONE:
                replies.append("unknown")
            elif job.state == "active":
                job.abort = True
                replies.append("cancelling")
            elif job.state in ("waiting", "delayed"):
                held = self.lines[job.key] if job.key else deque()
                for line in (self.wait[job.priority], held):
                    if job_id in line:
                        line.remove(job_id)
                self.end(job, "cancelled")
                replies.append(Code.OK)
            else:
                replies.append(job.state)
        return replies

    def retry_failed(self, ids: Sequence[str]) -> list[str]:
        """The jobs sent back (none given: every failed one, oldest failure first)."""
        if not ids:
            ids = [job.id for job in sorted(self.in_state("failed"), key=Job.order)]
        moved: list[str] = []
        by_key: dict[str, list[Job]] = {}
        for job_id in ids:
            job = self.jobs[job_id]
            if job.state != "failed":
                continue
            job.state, job.attempt, job.losses, job.abort = "waiting", 0, 0, False
            moved.append(job_id)
            if job.key is None:
                self.wait[job.priority].append(job_id)
            else:
                by_key.setdefault(job.key, []).append(job)
        for key, group in by_key.items():
            # By enqueue time; ties (one enqueue call) keep the order they were given in.
            group.sort(key=lambda j: j.enqueued)
            if key not in self.heads:
                head = group.pop(0)
                self.heads[key] = head.id
                self.wait[head.priority].append(head.id)
            self.lines[key].extendleft(reversed([j.id for j in group]))
        return moved

    def purge_failed(self, ids: Sequence[str]) -> int:
        purged = 0
        for job_id in ids or [job.id for job in self.in_state("failed")]:
            if self.jobs[job_id].state == "failed":
                self.jobs[job_id].state = GONE
                purged += 1
        return purged


class ScriptMachine(RuleBasedStateMachine):
    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        self.r = client
        client.flushdb()
        self.model = Model()
        self.deliveries: list[Lease] = []
        self.seen: dict[str, tuple[int, int]] = {}
        """(attempt, token) of each job at the last check."""
        self.given_back: set[str] = set()
        """Jobs whose attempt this step may lower (handback, retry_failed)."""
        self.last_ms = 0

    def call(self, op: Op[T]) -> T:
        """Run a script in a millisecond of the server's clock that no earlier call had."""
        while server_ms(self.r) <= self.last_ms:
            pass  # each check is a round trip: the server's clock moves on within a few
        reply = run(self.r, op)
        self.last_ms = server_ms(self.r)
        return reply

    def leases(self) -> st.SearchStrategy[Lease]:
        """A delivery, more often one still holding its lease than any other."""
        every = st.sampled_from(self.deliveries)
        held = [d for d in self.deliveries if self.model.lease_code(*d) == Code.OK]
        return st.sampled_from(held) | every if held else every

    def hashes(self, ids: Iterable[str]) -> dict[str, dict[bytes, bytes]]:
        return {job_id: self.r.hgetall(Q.job_key(job_id)) for job_id in ids}

    def fenced(self, op: Op[list[Code]], leases: Sequence[Lease], expected: list[Code]) -> None:
        """Run a report: replies as the model says, and a job only stale tokens named is
        left as it was."""
        applied = {
            job_id for (job_id, _), code in zip(leases, expected, strict=True) if code == Code.OK
        }
        stale = {job_id for job_id, _ in leases} - applied
        before = self.hashes(stale)
        assert self.call(op) == expected
        assert self.hashes(stale) == before

    def ids_in(self, *states: str) -> list[str]:
        return [job.id for job in self.model.jobs.values() if job.state in states]

    # A few jobs at a time: steps go to moving them through their states, not to adding more.
    @precondition(lambda self: len(self.ids_in(*CIRCULATING)) < 6)
    @rule(
        data=st.data(),
        new=st.lists(
            st.tuples(st.sampled_from((None, *KEYS)), st.sampled_from(PRIORITIES)),
            min_size=1,
            max_size=3,
        ),
    )
    def enqueue(self, data: st.DataObject, new: list[tuple[str | None, int]]) -> None:
        first = len(self.model.jobs)
        jobs = [(f"j{first + n}", key, priority) for n, (key, priority) in enumerate(new)]
        # A duplicate is an id that still has a hash (an id enqueued again after its purge
        # is a new job; the plain test at the end covers its fencing).
        live = [job.id for job in self.model.jobs.values() if job.state != GONE]
        if live and data.draw(st.booleans(), label="with a duplicate"):
            jobs.insert(
                data.draw(st.integers(0, len(jobs))), (data.draw(st.sampled_from(live)), None, 0)
            )
        expected = self.model.enqueue(jobs)
        sent = [NewJob(i, doc(i, Q.name, key=k, priority=p), k, priority=p) for i, k, p in jobs]
        assert self.call(Q.enqueue(sent, DAY_MS)) == expected

    @precondition(lambda self: self.ids_in("waiting", "delayed"))
    @rule(count=st.integers(1, 3), worker=st.sampled_from(WORKERS), expire=st.booleans())
    def fetch(self, count: int, worker: str, expire: bool) -> None:
        expected, none_delayed = self.model.fetch(count, worker, expire)
        fetched = self.call(Q.fetch(count, EXPIRED if expire else LEASE, worker, BIG))
        assert [(d.id, d.token, d.attempt) for d in fetched.deliveries] == expected
        assert (fetched.next_due_in_ms is None) == none_delayed
        self.deliveries += [(d.id, d.token) for d in fetched.deliveries]

    @precondition(lambda self: self.deliveries)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        leases = data.draw(st.lists(self.leases(), min_size=1, max_size=2))
        expected = self.model.complete(leases)
        self.fenced(Q.complete([Completion(i, t, b"1") for i, t in leases], TTL), leases, expected)

    @precondition(lambda self: self.deliveries)
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        runs = data.draw(
            st.lists(st.tuples(self.leases(), st.sampled_from(RETRIES)), min_size=1, max_size=2)
        )
        expected = self.model.fail(runs)
        failures = [Failure(i, t, "exception", "boom", retry_in) for (i, t), retry_in in runs]
        self.fenced(Q.fail(failures, TTL), [lease for lease, _ in runs], expected)

    @precondition(lambda self: self.deliveries)
    @rule(data=st.data(), expire=st.booleans())
    def heartbeat(self, data: st.DataObject, expire: bool) -> None:
        leases = data.draw(st.lists(self.leases(), min_size=1, max_size=2))
        expected = self.model.heartbeat(leases, expire)
        assert self.call(Q.heartbeat(leases, EXPIRED if expire else LEASE)) == expected

    @precondition(lambda self: self.deliveries)
    @rule(data=st.data())
    def handback(self, data: st.DataObject) -> None:
        leases = data.draw(st.lists(self.leases(), min_size=1, max_size=2))
        expected, returned = self.model.handback(leases)
        self.fenced(Q.handback(leases, TTL), leases, expected)
        self.given_back.update(returned)

    @precondition(lambda self: any(job.expired for job in self.model.in_state("active")))
    @rule()
    def expire_leases(self) -> None:
        # Every lease of EXPIRED ms ran out before this call's millisecond (see call).
        expected = self.model.recover()
        assert self.call(Q.recover(MAX_LOSSES, TTL)) == expected

    @precondition(lambda self: self.ids_in(*CIRCULATING))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        # Jobs of each kind as often: a running one (asked to abort: its next report, or
        # recover, carries it out), a delayed one, a waiting or held one, any id at all.
        kinds = [self.ids_in("active"), self.ids_in("delayed"), self.ids_in("waiting")]
        anyone = st.sampled_from([*self.model.jobs, "nope"])
        some = st.one_of([st.sampled_from(ids) for ids in kinds if ids] + [anyone])
        ids = data.draw(st.lists(some, min_size=1, max_size=2))
        expected = self.model.cancel(ids)
        assert self.call(Q.cancel(ids, TTL)) == expected

    @precondition(lambda self: self.ids_in("failed"))
    @rule(data=st.data())
    def retry_failed(self, data: st.DataObject) -> None:
        some = st.sampled_from(self.ids_in("failed")) | st.sampled_from(sorted(self.model.jobs))
        ids = data.draw(st.just([]) | st.lists(some, min_size=1, max_size=3))
        moved = self.model.retry_failed(ids)
        assert self.call(Q.retry_failed(ids)) == len(moved)
        self.given_back.update(moved)

    @precondition(lambda self: self.ids_in("failed"))
    @rule(data=st.data())
    def purge_failed(self, data: st.DataObject) -> None:
        ids = data.draw(st.just([]) | st.lists(st.sampled_from(self.ids_in("failed")), min_size=1))
        expected = self.model.purge_failed(ids)
        assert self.call(Q.purge_failed(ids)) == expected

    @invariant()
    def keys_hold_what_the_model_says(self) -> None:
        census = check_invariants(self.r, Q.name)
        assert census.problems == []
        live = [job for job in self.model.jobs.values() if job.state != GONE]
        assert census.job_states == {job.id: job.state for job in live}
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(Q.prefix + "keys")
        for p in PRIORITIES:
            pipe.lrange(Q.wait if p == 0 else f"{Q.wait}:{p}", 0, -1)
        for key in KEYS:
            pipe.lrange(f"{Q.prefix}key:{key}", 0, -1)
        for job in live:
            pipe.hmget(Q.job_key(job.id), "attempt", "token", "losses", "worker")
        replies = iter(pipe.execute())
        heads = {k.decode(): v.decode() for k, v in next(replies).items()}
        assert heads == self.model.heads
        for p in PRIORITIES:  # a wait list is fetched from its right end
            assert [i.decode() for i in reversed(next(replies))] == list(self.model.wait[p])
        for key in KEYS:
            line = [i.decode() for i in next(replies)]
            assert line == list(self.model.lines[key])
            # Of the key's jobs only its head circulates: the others wait in its line.
            circulating = [
                job.id
                for job in live
                if job.key == key
                and job.id not in line
                and census.job_states[job.id] in CIRCULATING
            ]
            assert circulating == ([heads[key]] if key in heads else [])
            assert key in heads or not line
        for job, (attempt, token, losses, worker) in zip(live, replies, strict=True):
            found = int(attempt or 0), int(token or 0), int(losses or 0)
            assert found == (job.attempt, job.token, job.losses), job.id
            if job.state == "active":
                assert worker.decode() == job.worker
            last_attempt, last_token = self.seen.get(job.id, (0, 0))
            assert found[1] >= last_token, job.id
            assert found[0] >= last_attempt or job.id in self.given_back, job.id
            self.seen[job.id] = found[:2]
        self.given_back.clear()


def test_scripts_do_what_the_model_says(r: redis.Redis) -> None:
    run_state_machine_as_test(lambda: ScriptMachine(r), settings=MODEL_SETTINGS)


def test_a_delivery_taken_back_stays_fenced_when_its_id_is_purged_and_enqueued_again(
    r: redis.Redis,
) -> None:
    """guarantees.md (Fencing): once a job was taken back from a worker, what that
    delivery reports is refused. A producer may choose its own ids, and enqueue one again
    once its job is gone: when tokens were counted per job, the new job's first token was
    the paused worker's. They come from the queue's counter now."""
    enqueue(r, Q, "j")
    paused = fetch_one(r, Q, lease_ms=0)
    assert run(r, Q.recover(MAX_LOSSES)) == (1, 0)
    second = fetch_one(r, Q)
    assert run(r, Q.fail([Failure("j", second.token, "exception", "boom")])) == [Code.OK]
    assert run(r, Q.purge_failed(["j"])) == 1
    enqueue(r, Q, "j")
    fetch_one(r, Q)  # the new job runs on some worker

    stale = Completion("j", paused.token, b'"from the paused worker"')
    assert run(r, Q.complete([stale], TTL)) == [Code.LEASE_LOST]
