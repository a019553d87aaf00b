"""The reporter: gathers how a worker's jobs ended and sends the outcomes in batches (one
complete and one fail call per queue per round trip). An outcome leaves the buffer only
once the server has it; a repeat after a lost reply is ALREADY_DONE, so none is lost.
The end of a node of a workflow across queues is then relayed to the other queues, by
run_relays(), a role of its own, so that reporting never waits for a relay."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable
from functools import partial
from typing import TypeVar

from redwork import logs
from redwork.connection import REFUSED, TRANSIENT, AsyncRedis, Backoff
from redwork.queue import (
    Completion,
    Durability,
    Failure,
    Op,
    Queue,
    arun,
    arun_durably,
    arun_many,
)
from redwork.scripts import Code
from redwork.workflow import adrive, relay

log = logging.getLogger("redwork.worker")
T = TypeVar("T")


class Reporter:
    def __init__(
        self, queues: list[Queue], result_ttl: int, give_up_after: float,
        durability: Durability | None = None,
    ) -> None:  # fmt: skip
        self.queues = queues
        self.result_ttl = result_ttl
        self.give_up_after = give_up_after
        """Seconds a closing reporter keeps trying while the server is away."""
        self.durability = durability
        """When set, outcomes count as reported only once durable (sent again if not)."""
        self.fenced = 0
        self.conflicts = 0
        self._completed: dict[str, list[Completion]] = defaultdict(list)
        self._failed: dict[str, list[Failure]] = defaultdict(list)
        self._wants_relay: set[str] = set()
        """Queues with buffered outcomes of nodes of workflows across queues."""
        self._to_relay: set[str] = set()
        """Queues whose outbox the outcomes sent may have written to."""
        self._relay_due = asyncio.Event()
        self._reported = False
        """run() has ended: no outcome will ask for a relay any more."""
        self._pending = asyncio.Event()
        self._closing = False

    def completed(self, queue: str, completion: Completion, relay: bool = False) -> None:
        """`relay`: the job is a node of a workflow across queues (see relay())."""
        self._completed[queue].append(completion)
        if relay:
            self._wants_relay.add(queue)
        self._pending.set()

    def failed(self, queue: str, failure: Failure, relay: bool = False) -> None:
        self._failed[queue].append(failure)
        if relay:
            self._wants_relay.add(queue)
        self._pending.set()

    def unsent(self, queue: str) -> list[tuple[str, int]]:
        """(id, token) of the outcomes of `queue` the server does not have yet: their
        leases must be kept alive until it does."""
        leases = [(c.id, c.token) for c in self._completed.get(queue, ())]
        return leases + [(f.id, f.token) for f in self._failed.get(queue, ())]

    def _backlog(self) -> int:
        return sum(map(len, self._completed.values())) + sum(map(len, self._failed.values()))

    def close(self) -> None:
        """Send what is left, then end run()."""
        self._closing = True
        self._pending.set()

    async def run(self, client: AsyncRedis, hard_stop: asyncio.Event) -> None:
        try:
            await self._report(client, hard_stop)
        finally:
            self._reported = True  # run_relays() ends once it has relayed what is left
            self._relay_due.set()

    async def _report(self, client: AsyncRedis, hard_stop: asyncio.Event) -> None:
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                await self._flush(client)
                backoff.reset()
                failing_since = None
            except TRANSIENT as exc:
                failing_since = failing_since or loop.time()
                # A stopping worker waits for the server a bounded time (one lease): by
                # then the jobs are someone else's anyway.
                given_up = self._closing and loop.time() - failing_since > self.give_up_after
                if hard_stop.is_set() or given_up:
                    log.error(
                        "server away while stopping: %d outcomes not reported; their jobs "
                        "run again once their lease ends",
                        self._backlog(),
                    )
                    return
                self._pending.set()
                await asyncio.sleep(backoff.next("report results", exc))
                continue
            # Outcomes that arrived while a flush was in flight are still to send.
            if self._closing and not self._backlog():
                return

    async def _flush(self, client: AsyncRedis) -> None:
        # Taken first: an outcome buffered from here on marks its queue again, for the
        # flush that sends it.
        relay_after = self._wants_relay
        self._wants_relay = set()
        try:
            await self._send_all(client)
        except BaseException:
            self._wants_relay |= relay_after
            raise
        if relay_after:
            self._to_relay |= relay_after
            self._relay_due.set()

    async def _send_all(self, client: AsyncRedis) -> None:
        for queue in self.queues:
            completed = self._completed.get(queue.name)
            if completed:
                batch = completed[:]
                try:
                    codes = await self._send(client, queue.complete(batch, self.result_ttl))
                except REFUSED as exc:
                    if isinstance(exc, TRANSIENT):
                        raise
                    codes = await self._complete_one_by_one(client, queue, batch)
                del completed[: len(batch)]
                self._note_fenced(queue, [c.id for c in batch], codes)
            failed = self._failed.get(queue.name)
            if failed:
                failures = failed[:]
                codes = await self._send(client, queue.fail(failures, self.result_ttl))
                del failed[: len(failures)]
                self._note_fenced(queue, [f.id for f in failures], codes)

    async def run_relays(self, client: AsyncRedis) -> None:
        """Relay the outboxes that reported outcomes wrote to, until run() has ended and
        nothing is left (what a stopped worker leaves, others' sweeps deliver)."""
        backoff = Backoff()
        while True:
            if not self._to_relay:
                if self._reported:
                    return
                await self._relay_due.wait()
                self._relay_due.clear()
                continue
            queues, self._to_relay = self._to_relay, set()
            try:
                await self.relay(client, queues)
                backoff.reset()
            except TRANSIENT as exc:
                self._to_relay |= queues
                if self._reported:
                    log.warning("relaying workflow messages failed: %s; left to others", exc)
                    return
                await asyncio.sleep(backoff.next("relay workflow messages", exc))

    async def relay(self, client: AsyncRedis, queues: Iterable[str]) -> None:
        """Deliver what the queues' outboxes hold (redwork.workflow.relay), durably when
        outcomes are."""
        await adrive(relay(queues, self.result_ttl), partial(self._send_many, client))

    async def _send_many(self, client: AsyncRedis, ops: list[Op[T]]) -> list[T]:
        if self.durability is None:
            return await arun_many(client, ops)
        return await arun_durably(client, ops, self.durability)

    async def _complete_one_by_one(
        self, client: AsyncRedis, queue: Queue, batch: list[Completion]
    ) -> list[Code]:
        """After the server refused a batch (a script error, such as a state key in
        another cluster slot): send each completion alone, and report the ones it still
        refuses as failed, so that one bad job cannot stop the worker or its batch."""
        codes: list[Code] = []
        for completion in batch:
            try:
                reply = await self._send(client, queue.complete([completion], self.result_ttl))
                codes += reply
            except REFUSED as exc:
                if isinstance(exc, TRANSIENT):
                    raise
                log.error(
                    "job %s of %s: the server refused its result: %s",
                    completion.id,
                    queue.name,
                    exc,
                    extra=logs.about_job(completion.id, queue.name),
                )
                error = f"the server refused this job's result: {exc}"
                self.failed(
                    queue.name, Failure(completion.id, completion.token, "exception", error)
                )
                codes.append(Code.OK)
        return codes

    async def _send(self, client: AsyncRedis, op: Op[T]) -> T:
        if self.durability is None:
            return await arun(client, op)
        return (await arun_durably(client, [op], self.durability))[0]

    def _note_fenced(self, queue: Queue, job_ids: list[str], codes: list[Code]) -> None:
        for job_id, code in zip(job_ids, codes, strict=True):
            if code is Code.LEASE_LOST:
                self.fenced += 1
                log.warning(
                    "job %s of %s: result refused, the lease was lost to another worker (fenced)",
                    job_id,
                    queue.name,
                    extra=logs.about_job(job_id, queue.name),
                )
            elif code is Code.CONFLICT:
                self.conflicts += 1
                log.warning(
                    "job %s of %s: its staged state writes conflicted at commit (an etag no "
                    "longer matched); nothing was written and the run counts as failed",
                    job_id,
                    queue.name,
                    extra=logs.about_job(job_id, queue.name),
                )
