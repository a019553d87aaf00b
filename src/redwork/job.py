"""The job: its JSON document (the language-neutral wire format), its states, and the
record a job leaves in Redis. See docs/protocol.md for every field."""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from redwork.errors import InvalidName, PayloadTooLarge, SerializationError

PROTOCOL_VERSION = 1
# Job ids and queue names go into Redis keys and into events built by the scripts
# without escaping, so they are limited to characters that need none.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class JobState(StrEnum):
    PENDING = "pending"
    """A workflow's node waiting for its dependencies."""
    WAITING = "waiting"
    ACTIVE = "active"
    DELAYED = "delayed"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    """A workflow's node that never ran: a dependency of it did not succeed."""

    @property
    def is_final(self) -> bool:
        return self in _FINAL_STATES


_FINAL_STATES = frozenset(
    (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.SKIPPED)
)


class FailureReason(StrEnum):
    """Why a run failed; the first four are never retried, as retrying cannot help."""

    DECODE_ERROR = "decode_error"
    UNKNOWN_TASK = "unknown_task"
    BAD_ARGUMENTS = "bad_arguments"
    RESULT_ENCODE_ERROR = "result_encode_error"
    EXCEPTION = "exception"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    CONFLICT = "conflict"
    """A state write staged by the job named an etag that no longer matched at commit."""
    CANCELLED = "cancelled"
    """The job was cancelled while running: the run ends it as cancelled, not failed."""

    @property
    def is_retryable(self) -> bool:
        return self in (FailureReason.EXCEPTION, FailureReason.TIMEOUT, FailureReason.CONFLICT)


MAX_DELAY = 10 * 365 * 86_400
"""Longest a job may wait to start, in seconds: a countdown, an eta ahead of now, a retry's
backoff."""


def to_json(value: Any, what: str) -> bytes:
    """JSON of value, or SerializationError naming `what`. NaN and infinities are refused:
    JSON has neither, and orjson would write null, changing the value silently."""
    try:
        data = orjson.dumps(value)
    except TypeError as exc:
        raise SerializationError(f"{what} is not JSON: {exc}") from exc
    # Only a document with a null can hide a non-finite float: most are checked for free.
    if b"null" in data and (path := _non_finite(value, "")) is not None:
        raise SerializationError(f"{what} holds {path or 'a value'} that is not a finite number")
    return data


def _non_finite(value: Any, path: str) -> str | None:
    """Where in value a NaN or infinite float is (a path like [0]['x']), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} = {value!r}".lstrip()
    items: Any
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}[{key!r}]")
        if found is not None:
            return found
    return None


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidName(
            f"{kind} {name!r} is invalid: use 1 to 128 characters from A-Z a-z 0-9 _ . : -"
        )
    return name


# Keys (per-key ordering, idempotency) are free text, but bounded: they become part of
# Redis key names.
MAX_KEY_LENGTH = 512


def check_key(kind: str, key: str) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise InvalidName(
            f"{kind} {key!r} is invalid: use a string of 1 to {MAX_KEY_LENGTH} characters"
        )
    return key


MAX_PRIORITY = 9
UNIQUE_POLICIES = ("reject", "replace")


def check_priority(kind: str, priority: int) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"{kind} {priority!r} is invalid: use an integer from 0 to {MAX_PRIORITY}")
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"{kind} {priority} is out of range: use 0 to {MAX_PRIORITY}")
    return priority


def check_unique_policy(policy: str) -> str:
    if policy not in UNIQUE_POLICIES:
        raise ValueError(f"unique policy {policy!r} is invalid: use reject or replace")
    return policy


def new_job_id() -> str:
    """96 random bits as 24 hex digits: a collision among a billion jobs has odds of
    about 1 in 10^11, and the id is stored three times per waiting job (its key, the wait
    list, the document), so every byte counts."""
    return os.urandom(12).hex()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: the n-th retry waits up to backoff * 2**(n-1) seconds, capped
    at backoff_max, with jitter taking a random part of that away (spreads a burst)."""

    max_attempts: int = 1
    backoff: float = 1.0
    backoff_max: float = 300.0
    jitter: float = 0.5

    @classmethod
    def of(cls, document: dict[str, Any]) -> RetryPolicy:
        """The policy a job document states (ValueError or TypeError when malformed)."""
        return cls(
            max_attempts=int(document.get("max_attempts", 1)),
            backoff=float(document.get("backoff", 1.0)),
            backoff_max=float(document.get("backoff_max", 300.0)),
            jitter=float(document.get("jitter", 0.5)),
        )

    def delay(self, attempt: int, random: float) -> float:
        """Seconds to wait before the retry that follows `attempt`; `random` in [0, 1)."""
        # 2.0 ** 1024 overflows; past 2 ** 1000 any backoff is beyond any ceiling anyway.
        growth = 2.0 ** min(1000, max(0, attempt - 1))
        # MAX_DELAY first: min() keeps it against a NaN from a foreign document.
        ceiling: float = min(MAX_DELAY, self.backoff_max, self.backoff * growth)
        delay = ceiling * (1.0 - self.jitter * random)
        return delay if 0.0 <= delay <= ceiling else max(0.0, ceiling)


@dataclass(slots=True)
class Envelope:
    """The job document, written once at enqueue and never changed afterwards (not a
    frozen dataclass only because those are slower to build, and producers build many)."""

    id: str
    task: str
    queue: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    """0 to 9: a job of a higher priority starts before any of a lower one."""
    retry_priority: int | None = None
    """The priority of the job's retries, when they should run at another (seed 001:
    retried jobs go first)."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    key: str | None = None
    """Per-key ordering: jobs of one key never run at once, and start in enqueue order."""
    workflow: dict[str, Any] | None = None
    idempotency_key: str | None = None
    group: str | None = None
    """The group the job counts in for the queue's `group` limit (e.g. a customer id)."""
    unique_key: str | None = None
    """At most one job per uniqueness key is queued or running (see unique_policy)."""
    unique_policy: str = "reject"
    """What a second enqueue of a uniqueness key does: reject (nothing is added, the
    existing job's id comes back) or replace (a job that has not started is cancelled and
    this one takes its place; a running one still rejects)."""
    meta: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, str] | None = None
    """W3C trace context of the enqueue span (set when tracing is on)."""
    delay_ms: int | None = None
    """Not part of the document: the job becomes runnable this many ms after the server
    stores it (countdown, or an eta turned into one)."""

    def encode(self, max_bytes: int) -> bytes:
        """The JSON document; optional fields at their default are left out."""
        document: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
        }
        if self.args:
            document["args"] = self.args
        if self.kwargs:
            document["kwargs"] = self.kwargs
        if self.priority:
            document["priority"] = self.priority
        if self.retry_priority is not None:
            document["retry_priority"] = self.retry_priority
        retry = self.retry
        if retry != _DEFAULT_RETRY:
            document["max_attempts"] = retry.max_attempts
            document["backoff"] = retry.backoff
            document["backoff_max"] = retry.backoff_max
            document["jitter"] = retry.jitter
        if self.timeout is not None:
            document["timeout"] = self.timeout
        if self.key is not None:
            document["key"] = self.key
        if self.workflow is not None:
            document["workflow"] = self.workflow
        if self.idempotency_key is not None:
            document["idempotency_key"] = self.idempotency_key
        if self.group is not None:
            document["group"] = self.group
        if self.unique_key is not None:
            document["unique_key"] = self.unique_key
            document["unique_policy"] = self.unique_policy
        if self.meta:
            document["meta"] = self.meta
        if self.trace:
            document["trace"] = self.trace
        data = to_json(document, f"job {self.task}: its arguments")
        if len(data) > max_bytes:
            raise PayloadTooLarge(
                f"job {self.task} encodes to {len(data)} bytes, over the limit of {max_bytes}"
            )
        return data

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """Parse a job document; raises ValueError with the reason when it is malformed."""
        call = Call.decode(data)
        doc = call.document
        try:
            return cls(
                id=str(doc["id"]),
                task=call.task,
                queue=str(doc["queue"]),
                args=call.args,
                kwargs=call.kwargs,
                priority=int(doc.get("priority", 0)),
                retry_priority=doc.get("retry_priority"),
                retry=RetryPolicy.of(doc),
                timeout=call.timeout,
                key=doc.get("key"),
                workflow=doc.get("workflow"),
                idempotency_key=doc.get("idempotency_key"),
                group=doc.get("group"),
                unique_key=doc.get("unique_key"),
                unique_policy=doc.get("unique_policy", "reject"),
                meta=doc.get("meta") or {},
                trace=doc.get("trace"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad field: {exc}") from exc


_DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class Call:
    """The part of a job document a worker reads on every run; the rest (the retry
    policy, say) is read from `document` only when needed."""

    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    timeout: float | None
    document: dict[str, Any]

    @classmethod
    def decode(cls, data: bytes) -> Call:
        """Raises ValueError with the reason when the document is malformed."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValueError("the job document is not a JSON object")
        version = doc.get("v")
        # `true` and 1.0 equal 1 in Python, but they are not the version number 1.
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise ValueError(f"unsupported protocol version {doc.get('v')!r}")
        task, args, kwargs = doc.get("task"), doc.get("args", []), doc.get("kwargs", {})
        if not isinstance(task, str) or "id" not in doc or "queue" not in doc:
            raise ValueError("bad field: id, task and queue are required, task a string")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("bad field: args must be a list and kwargs an object")
        timeout = doc.get("timeout")
        try:
            return cls(task, args, kwargs, None if timeout is None else float(timeout), doc)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad field: timeout {timeout!r}") from exc


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One event of a queue (docs/protocol.md#events): a transition that one script
    call made for one or more jobs (for `workflow_*` events, `jobs` holds the
    workflow's id)."""

    event: str
    queue: str
    jobs: list[str]
    attempts: list[int]
    at: int
    """Server time, Unix ms."""
    progress: Any = None
    """The value reported, for a `progress` event."""

    @classmethod
    def decode(cls, data: bytes | str) -> JobEvent:
        """From the JSON published on the queue's events channel; ValueError if malformed."""
        try:
            message = orjson.loads(data)
            return cls(
                str(message["event"]),
                str(message["queue"]),
                [str(j) for j in message["jobs"]],
                [int(a) for a in message.get("attempts", [])],
                int(message["at"]),
                message.get("progress"),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a job event: {exc}") from exc


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What Redis holds about a job: its document plus its mutable state."""

    id: str
    queue: str
    state: JobState
    attempt: int
    token: int
    losses: int
    data: bytes
    worker: str | None
    enqueued_at: int | None
    started_at: int | None
    finished_at: int | None
    result: bytes | None
    reason: str | None
    error: str | None
    key: str | None = None
    progress: bytes | None = None
    """What the task last reported with app.report_progress() (JSON)."""
    workflow: str | None = None
    """The id of the workflow the job belongs to, if any."""
    priority: int = 0
    due_at: int | None = None
    """For a job enqueued with a delay: when it becomes runnable (server ms)."""
    cancel_requested: bool = False
    """Set on a running job asked to stop (see Worker: abort)."""

    @classmethod
    def from_hash(cls, queue: str, job_id: str, fields: dict[bytes, bytes]) -> JobRecord:
        def text(name: str) -> str | None:
            value = fields.get(name.encode())
            return None if value is None else value.decode(errors="replace")

        def number(name: str) -> int | None:
            value = fields.get(name.encode())
            return None if value is None else int(value)

        return cls(
            id=job_id,
            queue=queue,
            state=JobState(text("state") or "waiting"),
            attempt=number("attempt") or 0,
            token=number("token") or 0,
            losses=number("losses") or 0,
            data=fields.get(b"data", b""),
            worker=text("worker"),
            enqueued_at=number("enqueued_at"),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            result=fields.get(b"result"),
            reason=text("reason"),
            error=text("error"),
            key=text("key"),
            progress=fields.get(b"progress"),
            workflow=text("wf"),
            priority=number("priority") or 0,
            due_at=number("due_at"),
            cancel_requested=b"abort" in fields,
        )

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    @property
    def status_text(self) -> str:
        return self.state.value

    @property
    def envelope(self) -> Envelope | None:
        try:
            return Envelope.decode(self.data)
        except ValueError:
            return None

    def result_value(self) -> Any:
        return None if self.result is None else orjson.loads(self.result)

    def progress_value(self) -> Any:
        """The progress the task last reported, decoded (None before any)."""
        return None if self.progress is None else orjson.loads(self.progress)

    def as_dict(self) -> dict[str, Any]:
        envelope = self.envelope
        return {
            "id": self.id,
            "queue": self.queue,
            "state": self.state.value,
            "key": self.key,
            "workflow": self.workflow,
            "priority": self.priority,
            "due_at": self.due_at,
            "cancel_requested": self.cancel_requested,
            "task": envelope.task if envelope else None,
            "args": envelope.args if envelope else None,
            "kwargs": envelope.kwargs if envelope else None,
            "attempt": self.attempt,
            "max_attempts": envelope.retry.max_attempts if envelope else None,
            "losses": self.losses,
            "worker": self.worker,
            "enqueued_at": self.enqueued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": self.progress_value(),
            "result": self.result_value() if self.state is JobState.COMPLETED else None,
            "reason": self.reason,
            "error": self.error,
            "raw": None if envelope else self.data[:4096].decode(errors="replace"),
        }
