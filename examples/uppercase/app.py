"""Seed 004 with redwork: an HTTP server that takes text, a worker that upper-cases it,
and live status over a WebSocket instead of polling.

    redwork serve app:api     # the HTTP server (this file's `api`)
    redwork worker app:app    # the worker

The seed's own routes (POST /submit, GET /status) are added to redwork's API, which
brings the rest: /api/jobs/<id>/ws for live updates, the dashboard at /, /docs.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

from fastapi import Query
from pydantic import BaseModel

from redwork import Redwork
from redwork.api import check_job_id, create_api

app = Redwork("uppercase")
WORK_SECONDS = float(os.environ.get("UPPERCASE_WORK_SECONDS", "0.5"))

# The seed's statuses for redwork's job states.
STATUS = {
    "waiting": "queued",
    "delayed": "queued",
    "active": "running",
    "completed": "done",
    "failed": "failed",
    "cancelled": "cancelled",
}


@app.task(name="uppercase")
def uppercase(text: str) -> str:
    time.sleep(WORK_SECONDS)  # the work the seed's worker pretends to do
    return text.upper()


api = create_api(app)


class Submission(BaseModel):
    input: str


@api.post("/submit", tags=["seed 004"])
async def submit(submission: Submission) -> dict[str, Any]:
    """Queue the text for upper-casing; answers as the seed's server does."""
    job = await uppercase.aenqueue(submission.input)
    return {
        "id": job.id,
        "input": submission.input,
        "status": "queued",
        "result": "",
        "created": datetime.now().astimezone().isoformat(),
    }


@api.get("/status", tags=["seed 004"])
async def status(id: str = Query(max_length=128)) -> dict[str, Any]:
    """{"status": "queued"}, later {"status": "done", "result": "HELLO WORLD"}."""
    record = await app.job(check_job_id(id)).ainfo()  # unknown: 404; malformed: 422
    answer: dict[str, Any] = {"status": STATUS[record.state.value]}
    if record.state.value == "completed":
        answer["result"] = record.result_value()
    return answer
