"""Log output of redwork's commands: readable lines, or one JSON object per line
(`log_format = json`) for log collectors, with a job's id, queue, task and attempt as
fields of their own in the records about one job."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
JOB_FIELDS = ("job_id", "queue", "task", "attempt", "reason")
"""The `extra` fields a record about a job may carry (see about_job)."""


def about_job(
    job_id: str, queue: str, task: str | None = None, attempt: int | None = None, **more: Any
) -> dict[str, Any]:
    """`extra=` for a log call about one job."""
    fields = {"job_id": job_id, "queue": queue, "task": task, "attempt": attempt, **more}
    return {name: value for name, value in fields.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, pid, message,
    the job fields the record has, and the exception's traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name in JOB_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except TypeError:
            # What orjson refuses (lone surrogates from os.fsdecode, integers beyond 64
            # bits, keys that are not strings), the standard library escapes or skips:
            # the record is kept, and the stream stays one JSON object per line.
            return json.dumps(entry, default=str, skipkeys=True)


def setup(level: str, log_format: str) -> None:
    """Send the process's log records to stderr, as `text` or `json`."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
