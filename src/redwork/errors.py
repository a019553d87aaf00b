"""The exception hierarchy: every error redwork raises on purpose is a RedworkError."""

from __future__ import annotations


class RedworkError(Exception):
    """Base of every redwork error."""


class ConfigurationError(RedworkError):
    """A setting is missing, malformed or contradicts another."""


class ServerVersionError(RedworkError):
    """The server is older than redwork supports (Redis 7.0, Valkey 7.2)."""


class ServerPolicyError(RedworkError):
    """The server evicts keys (maxmemory-policy), which would silently lose jobs."""


class SerializationError(RedworkError):
    """Arguments or a result cannot be encoded as JSON."""


class PayloadTooLarge(RedworkError):
    """An encoded job is larger than the queue accepts."""


class InvalidName(RedworkError):
    """A queue or task name cannot be used in a Redis key."""


class UnknownTask(RedworkError):
    """No task of that name is registered with the app."""


class JobNotFound(RedworkError):
    """No job with that id exists (it never did, or its record expired)."""


class JobFailed(RedworkError):
    """The job ended in the failed store; the message carries its error."""

    def __init__(self, job_id: str, error: str) -> None:
        super().__init__(self._describe(job_id, error))
        self.job_id = job_id
        self.error = error

    @staticmethod
    def _describe(job_id: str, error: str) -> str:
        return f"job {job_id} failed: {error}"


class WorkflowFailed(JobFailed):
    """A workflow ended without succeeding (a JobFailed, so that one `except` catches
    both): `job_id` is the workflow's id, `error` names the first job that did not."""

    @staticmethod
    def _describe(job_id: str, error: str) -> str:
        return f"{error} (workflow {job_id})"


class JobCancelled(RedworkError):
    """The job was cancelled (before it started, or aborted while running). A running
    task may raise it itself: `current_job().raise_if_cancelled()`."""


class NotCancellable(RedworkError):
    """The job (or workflow) has ended, so it cannot be cancelled."""


class ResultTimeout(RedworkError, TimeoutError):
    """Waiting for a job's result took longer than the caller allowed."""


class StateConflict(RedworkError):
    """A state write named an etag (version) that is no longer the entry's version (or
    its key holds something that is not a state entry)."""

    def __init__(
        self, key: str, expected: int | None, actual: int | None, holds: str | None = None
    ) -> None:
        if holds is not None:
            message = f"state {key!r}: its Redis key holds a {holds}, not a state entry"
        else:
            found = "absent" if actual is None else f"at version {actual}"
            message = f"state {key!r} is {found}; the write expected version {expected}"
        super().__init__(message)
        self.key, self.expected, self.actual = key, expected, actual


class LeaseLost(RedworkError):
    """A running job wrote state after its lease was lost: another delivery owns the job
    now, so the write was refused (fencing)."""


class WorkflowError(RedworkError):
    """A workflow cannot be submitted as given (a cycle, an unknown dependency, a job id
    used twice...); nothing was stored."""


class WorkflowNotFound(RedworkError):
    """No workflow with that id exists (it never did, or it expired after ending)."""


class NotDurable(RedworkError):
    """A write was applied but not confirmed on as many replicas (or AOF files) as the
    durable acknowledgement settings ask within ack_timeout. Safe to repeat: callers
    retry it like a server that is away."""
