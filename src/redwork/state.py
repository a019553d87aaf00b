"""Versioned state: JSON values under keys, each with a version (its etag) that grows by
one on every save; a write that names an etag applies only while it still matches, so
of two writers that read the same version, the first wins and the second gets a
StateConflict. The layout is Dapr's Redis state store: a hash `<prefix>||<key>` with
the fields `data` (the JSON text) and `version`.

Inside a running job every write is fenced by the job's lease: once the lease is lost
(another delivery owns the job), the write is refused with LeaseLost. `staged()` gives
a view whose writes wait and commit with the job's completion, atomically: a job that
runs twice (crash after the work, before the acknowledgement) applies them once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from redis.crc import key_slot

from redwork.context import JobContext, running_job
from redwork.errors import LeaseLost, RedworkError, StateConflict
from redwork.job import check_key, to_json
from redwork.queue import Op, Queue, StateWrite, text
from redwork.scripts import Code, load

if TYPE_CHECKING:
    from redwork.app import Redwork
    from redwork.client import Client


@dataclass(frozen=True, slots=True)
class StateItem:
    key: str
    value: Any
    etag: int | None
    """The entry's version; None for a value this job staged and has not committed."""


def _item(key: str, reply: list[bytes | None]) -> StateItem | None:
    data, version = reply
    if data is None:
        return None
    return StateItem(key, orjson.loads(data), int(version or 0))


def _encode(key: str, value: Any) -> bytes:
    return to_json(value, f"state {key!r}: the value")


class StateStore:
    """`app.state("name")`: sync methods, and async twins prefixed with `a`."""

    def __init__(self, app: Redwork, name: str, key_prefix: str) -> None:
        self.app = app
        self.name = name
        self.key_prefix = key_prefix

    @property
    def client(self) -> Client:
        # Looked up on each call: a store made at import time follows app.configure().
        return self.app.client

    def redis_key(self, key: str) -> str:
        return f"{self.key_prefix}||{check_key('state key', key)}"

    def check_slot(self, redis_key: str, job: JobContext) -> None:
        """A fenced or staged write runs in one script with the job's hash: on a cluster
        its entry must be in the queue's slot. Refused here, in the task, by name."""
        job_key = Queue(job.queue).job_key(job.id)
        if self.client.cluster and key_slot(redis_key.encode()) != key_slot(job_key.encode()):
            raise RedworkError(
                f"state store {self.name!r}: entry {redis_key!r} is in another Redis Cluster "
                f"slot than queue {job.queue!r}, so a job of that queue cannot write it "
                f"atomically; give the store key_prefix='{{{job.queue}}}' (see docs/deployment.md)"
            )

    # -- operations as data, shared by the sync and async methods ----------------------

    def _read(self, key: str) -> Op[StateItem | None]:
        return Op(partial(_item, key), command=("HMGET", self.redis_key(key), "data", "version"))

    def _write(self, keys: list[str], writes: list[StateWrite]) -> Op[list[int]]:
        job = running_job()
        args: list[str | bytes] = ["" if job is None else str(job.token)]
        for write in writes:
            args += write.as_args()
        # KEYS[1] is the job's hash when fenced; otherwise any key of the call will do.
        fence = writes[0].key if job is None else Queue(job.queue).job_key(job.id)
        if job is not None:
            for write in writes:
                self.check_slot(write.key, job)
        elif self.client.cluster and len({key_slot(w.key.encode()) for w in writes}) > 1:
            raise RedworkError(
                f"state store {self.name!r}: the entries {', '.join(map(repr, keys))} are in "
                "different Redis Cluster slots and cannot be written all or none; give the "
                "store a key_prefix with a hash tag, such as '{orders}'"
            )

        def parse(reply: list[Any]) -> list[int]:
            code = Code(reply[0])
            if code is Code.OK:
                return [int(version) for version in reply[1:]]
            if code is Code.CONFLICT:
                index = int(reply[1]) - 1
                actual = int(reply[2]) if reply[2] not in (b"", "") else None
                holds = text(reply[3]) if len(reply) > 3 else None
                raise StateConflict(keys[index], writes[index].etag, actual, holds)
            assert job is not None
            raise LeaseLost(
                f"job {job.id} lost its lease (another delivery owns it now), so its "
                f"write to {', '.join(map(repr, keys))} was refused"
            )

        return Op(parse, load("state_write"), (fence, *(w.key for w in writes)), args)

    def _saves(self, values: Mapping[str, Any], etags: Mapping[str, int]) -> Op[list[int]]:
        keys = list(values)
        writes = [StateWrite(self.redis_key(k), _encode(k, values[k]), etags.get(k)) for k in keys]
        return self._write(keys, writes)

    def _delete(self, key: str, etag: int | None) -> Op[list[int]]:
        return self._write([key], [StateWrite(self.redis_key(key), None, etag)])

    # -- sync -------------------------------------------------------------------------

    def get(self, key: str) -> StateItem | None:
        return self.get_many([key])[key]

    def get_many(self, keys: Iterable[str]) -> dict[str, StateItem | None]:
        """Read many entries over one connection, pipelined. Reads ride out a server
        that is away for up to reconnect_for; writes raise (a write whose reply was lost
        may have been applied, which only its caller can judge)."""
        wanted = list(keys)
        items = self.client.read([self._read(k) for k in wanted], "read state")
        return dict(zip(wanted, items, strict=True))

    def save(self, key: str, value: Any, etag: int | None = None) -> int:
        """Save `value`; returns its new version (etag). With `etag`, only if the entry
        is still at that version (StateConflict otherwise)."""
        return self.save_many({key: value}, {} if etag is None else {key: etag})[0]

    def save_many(
        self, values: Mapping[str, Any], etags: Mapping[str, int] | None = None
    ) -> list[int]:
        """Save several entries, all or none; `etags` gives the expected version of some
        (0: the entry must not exist yet)."""
        if not values:
            return []
        versions: list[int] = self.client.run(self._saves(values, etags or {}))
        return versions

    def delete(self, key: str, etag: int | None = None) -> None:
        """Delete the entry (nothing happens if it is absent and no etag is given)."""
        self.client.run(self._delete(key, etag))

    # -- async ------------------------------------------------------------------------

    async def aget(self, key: str) -> StateItem | None:
        return (await self.aget_many([key]))[key]

    async def aget_many(self, keys: Iterable[str]) -> dict[str, StateItem | None]:
        wanted = list(keys)
        items = await self.client.aread([self._read(k) for k in wanted], "read state")
        return dict(zip(wanted, items, strict=True))

    async def asave(self, key: str, value: Any, etag: int | None = None) -> int:
        return (await self.asave_many({key: value}, {} if etag is None else {key: etag}))[0]

    async def asave_many(
        self, values: Mapping[str, Any], etags: Mapping[str, int] | None = None
    ) -> list[int]:
        if not values:
            return []
        versions: list[int] = await self.client.arun(self._saves(values, etags or {}))
        return versions

    async def adelete(self, key: str, etag: int | None = None) -> None:
        await self.client.arun(self._delete(key, etag))

    # -- staged -----------------------------------------------------------------------

    def staged(self) -> StagedState:
        """This store as seen by the running job, whose writes commit with its
        completion (see StagedState)."""
        job = running_job()
        if job is None:
            raise RedworkError("staged() is for code running in a job; elsewhere, write directly")
        return StagedState(self, job.staged)


class StagedState:
    """A store seen from a running job: saves and deletes are kept until the job
    completes, then applied atomically with its completion, fenced by its lease; reads
    see the job's own staged writes. One write per key commits: the last value, checked
    against the first etag given for that key. If an etag no longer matches at commit,
    nothing is applied and the run fails with reason `conflict` (retried as the task's
    retry policy says). A failed run applies nothing."""

    def __init__(self, store: StateStore, staged: dict[str, StateWrite]) -> None:
        self.store = store
        self._staged = staged

    def _staged_item(self, key: str) -> tuple[bool, StateItem | None]:
        write = self._staged.get(self.store.redis_key(key))
        if write is None:
            return False, None
        return True, None if write.value is None else StateItem(
            key, orjson.loads(write.value), None
        )

    def get(self, key: str) -> StateItem | None:
        staged, item = self._staged_item(key)
        return item if staged else self.store.get(key)

    async def aget(self, key: str) -> StateItem | None:
        staged, item = self._staged_item(key)
        return item if staged else await self.store.aget(key)

    def save(self, key: str, value: Any, etag: int | None = None) -> None:
        self._stage(key, _encode(key, value), etag)

    def delete(self, key: str, etag: int | None = None) -> None:
        self._stage(key, None, etag)

    def _stage(self, key: str, value: bytes | None, etag: int | None) -> None:
        redis_key = self.store.redis_key(key)
        job = running_job()
        if job is not None:
            self.store.check_slot(redis_key, job)
        earlier = self._staged.get(redis_key)
        if earlier is not None and earlier.etag is not None:
            etag = earlier.etag
        self._staged[redis_key] = StateWrite(redis_key, value, etag)
