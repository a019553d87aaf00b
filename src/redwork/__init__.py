"""redwork: a reliable, fast job queue and worker system for Python on Redis and Valkey."""

from redwork.app import JobHandle, Redwork, Task
from redwork.errors import (
    JobFailed,
    JobNotFound,
    PayloadTooLarge,
    RedworkError,
    ResultTimeout,
    SerializationError,
)
from redwork.job import JobState
from redwork.settings import Settings
from redwork.worker import JobContext, Worker, current_job

__version__ = "0.1.0"

__all__ = [
    "JobContext",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobState",
    "PayloadTooLarge",
    "Redwork",
    "RedworkError",
    "ResultTimeout",
    "SerializationError",
    "Settings",
    "Task",
    "Worker",
    "current_job",
]
