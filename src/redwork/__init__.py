"""redwork: a reliable, fast job queue and worker system for Python on Redis and Valkey."""

from redwork.app import JobHandle, Redwork, Task, WorkflowHandle
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
    WorkflowError,
    WorkflowFailed,
    WorkflowNotFound,
)
from redwork.job import JobEvent, JobState
from redwork.limits import Limit, LimitError
from redwork.queue import Counts
from redwork.registry import WorkerInfo
from redwork.schedule import Schedule, ScheduleError, ScheduleState
from redwork.settings import Settings
from redwork.state import StagedState, StateItem, StateStore
from redwork.worker import Worker
from redwork.workflow import Ref, Workflow, WorkflowRecord, WorkflowStatus, chain, chord, group

__version__ = "0.1.0"

__all__ = [
    "Counts",
    "JobCancelled",
    "JobContext",
    "JobEvent",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobState",
    "LeaseLost",
    "Limit",
    "LimitError",
    "NotCancellable",
    "PayloadTooLarge",
    "Redwork",
    "RedworkError",
    "Ref",
    "ResultTimeout",
    "Schedule",
    "ScheduleError",
    "ScheduleState",
    "SerializationError",
    "Settings",
    "StagedState",
    "StateConflict",
    "StateItem",
    "StateStore",
    "Task",
    "Worker",
    "WorkerInfo",
    "Workflow",
    "WorkflowError",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowNotFound",
    "WorkflowRecord",
    "WorkflowStatus",
    "chain",
    "chord",
    "current_job",
    "group",
]
