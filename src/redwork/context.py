"""What a running task knows about its job: `redwork.current_job()`."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redwork.errors import JobCancelled
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
    reporter: Callable[[Any], None] | None = None
    """Records progress (the app's report_progress)."""
    # Appended to once when cancelled: a list rather than a threading.Event, which would
    # cost a lock and a condition per job (3% of a no-op job's time) for a flag that
    # threads only read.
    _cancelled: list[bool] = field(default_factory=list, repr=False)

    @property
    def cancel_requested(self) -> bool:
        """True once the job was cancelled while running. An async task is cancelled
        (CancelledError) at its next await; a plain function cannot be stopped from
        outside, so it should look here between steps, or call raise_if_cancelled()."""
        return bool(self._cancelled)

    def raise_if_cancelled(self) -> None:
        """Raise JobCancelled if the job was cancelled: the run then ends as cancelled,
        without a retry."""
        if self._cancelled:
            raise JobCancelled(f"job {self.id} was cancelled while running")

    def request_cancel(self) -> None:
        if not self._cancelled:
            self._cancelled.append(True)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Record how far the job has got, `fraction` from 0 to 1 with an optional
        message: `ctx.progress(0.4, "step 2 of 5")`. Shown in the job's status, the
        event stream, `redwork job show` and the dashboard. From a coroutine it blocks
        the loop for one round trip; use app.areport_progress() there if that matters."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"progress {fraction!r} is not a fraction from 0 to 1")
        if self.reporter is None:
            raise RuntimeError("this job context cannot report progress")
        self.reporter({"fraction": fraction, "message": message})


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
