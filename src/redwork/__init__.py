"""redwork: a reliable, fast job queue and worker system for Python on Redis and Valkey."""

from redwork.app import JobHandle, Redwork, Task
from redwork.context import JobContext, current_job
from redwork.errors import (
    JobCancelled,
    JobFailed,
    JobNotFound,
    LeaseLost,
    NotCancellable,
    PayloadTooLarge,
    RedworkError,
    ResultTimeout,
    SerializationError,
    StateConflict,
)
from redwork.job import JobState
from redwork.settings import Settings
from redwork.state import StagedState, StateItem, StateStore
from redwork.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobState",
    "LeaseLost",
    "NotCancellable",
    "PayloadTooLarge",
    "Redwork",
    "RedworkError",
    "ResultTimeout",
    "SerializationError",
    "Settings",
    "StagedState",
    "StateConflict",
    "StateItem",
    "StateStore",
    "Task",
    "Worker",
    "current_job",
]
