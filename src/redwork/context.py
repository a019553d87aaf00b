"""What a running task knows about its job: `redwork.current_job()`."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

from redwork.queue import StateWrite


@dataclass(frozen=True, slots=True, eq=False)
class JobContext:
    id: str
    queue: str
    attempt: int
    max_attempts: int
    worker_id: str
    token: int = 0
    """The delivery's fencing token: state writes made with it are refused once the
    lease is lost."""
    staged: dict[str, StateWrite] = field(default_factory=dict)
    """State writes to apply with the job's completion (see StateStore.staged)."""


_current_job: contextvars.ContextVar[JobContext] = contextvars.ContextVar("redwork_job")


def current_job() -> JobContext:
    """The job being run by this task; raises LookupError outside a task."""
    return _current_job.get()


def running_job() -> JobContext | None:
    return _current_job.get(None)


def enter_job(context: JobContext) -> contextvars.Token[JobContext]:
    return _current_job.set(context)


def leave_job(token: contextvars.Token[JobContext]) -> None:
    _current_job.reset(token)
