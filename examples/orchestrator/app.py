"""Seed 003 with redwork: an orchestrator that splits a task into subtasks, workers that
process them in parallel and store each result as `result:<subtask_id>` for 24 hours.

    redwork serve app:api     # the orchestrator's HTTP server (this file's `api`)
    redwork worker app:app    # the workers (-p 3 for three processes, as the seed's three)

POST /tasks submits the subtasks as one workflow whose id is the task's id: a chord of
`process_subtask` jobs (ids `<task id>-0`, `-1`, ...) and a `summarize` callback
(`<task id>-summary`) that runs once they have all completed. GET /tasks/{id} shows the
task's state and each subtask's state and result. The rest of redwork's API comes with
it: /api/workflows/{id} (and its cancel), live updates, the dashboard at /, /docs.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import HTTPException, Path
from pydantic import BaseModel, Field

from redwork import JobNotFound, Redwork, WorkflowNotFound, chord, current_job
from redwork.api import create_api
from redwork.job import NAME_PATTERN, Envelope

app = Redwork("orchestrator")
WORK_SECONDS = float(os.environ.get("ORCHESTRATOR_WORK_SECONDS", "1.0"))
RESULT_TTL = 24 * 60 * 60  # seconds: the seed's `Set(..., 24*time.Hour)`

# How known tasks split, by their description (lower case, no final full stop).
PLANS: dict[str, list[str]] = {
    "build a user authentication system": [
        "Design user database schema",
        "Implement JWT token generation",
        "Create login/logout endpoints",
        "Add password hashing with bcrypt",
    ],
    "build api endpoints": [
        "Define API endpoints and routes",
        "Implement request validation",
        "Write the endpoint handlers",
        "Add API tests",
    ],
}
GENERIC_STEPS = ("Plan", "Implement", "Test", "Document")


def split(description: str) -> list[str]:
    """The subtasks of a task: a known task's plan, else plan/implement/test/document."""
    plan = PLANS.get(description.strip().rstrip(".").lower())
    if plan is not None:
        return list(plan)
    return [f"{step}: {description.strip()}" for step in GENERIC_STEPS]


def result_key(subtask_id: str) -> str:
    return f"result:{subtask_id}"


@app.task(name="process_subtask")
def process_subtask(task_id: str, subtask_id: str, description: str) -> dict[str, Any]:
    """The seed's executeJob: do the work, store the result for 24 h, return it."""
    time.sleep(WORK_SECONDS)  # the work the seed's worker pretends to do
    result = {
        "subtask_id": subtask_id,
        "task_id": task_id,
        "status": "completed",
        "worker_id": current_job().worker_id,
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "description": description,
    }
    app.client.redis().set(result_key(subtask_id), json.dumps(result), ex=RESULT_TTL)
    return result


@app.task(name="summarize")
def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The chord's callback: given every subtask's result, in subtask order."""
    return {
        "task_id": results[0]["task_id"],
        "completed": [r["subtask_id"] for r in results],
        "workers": sorted({r["worker_id"] for r in results}),
    }


api = create_api(app)


class NewTask(BaseModel):
    description: str = Field(min_length=1, max_length=200)
    priority: int = Field(default=1, ge=0, le=10, description="stored, not yet honoured")


TaskId = Annotated[str, Path(pattern=f"^{NAME_PATTERN.pattern}$")]  # else 422


@api.post("/tasks", status_code=201, tags=["seed 003"])
async def create_task(task: NewTask) -> dict[str, Any]:
    """Split the task into subtasks and queue them for the workers, as one workflow."""
    task_id = uuid.uuid4().hex
    subtasks = [
        process_subtask.options(job_id=f"{task_id}-{i}", meta={"priority": task.priority}).s(
            task_id, f"{task_id}-{i}", description
        )
        for i, description in enumerate(split(task.description))
    ]
    # The chord gives summarize the subtasks' results as its first argument.
    callback = summarize.options(job_id=f"{task_id}-summary").s()
    handle = await app.asubmit(
        chord(subtasks, callback), workflow_id=task_id, name=task.description
    )
    return {
        "task_id": task_id,
        "subtasks": [s.id for s in subtasks],
        "status": (await handle.astatus()).value,
    }


@api.get("/tasks/{task_id}", tags=["seed 003"])
async def get_task(task_id: TaskId) -> dict[str, Any]:
    """The task's state (pending, running, succeeded, failed, cancelled), each subtask's
    state and result (the stored `result:<subtask id>`), and the summary once done."""
    try:
        workflow = await app.workflow(task_id).ainfo()
    except WorkflowNotFound:
        raise HTTPException(404, f"no task {task_id} (it never existed, or it expired)") from None
    nodes = [n for n in workflow.nodes if n.task == process_subtask.name]
    summary = next((n for n in workflow.nodes if n.task == summarize.name), None)
    envelopes = await asyncio.gather(*(_envelope(n.id) for n in nodes))
    stored = await (await app.client.aredis()).mget([result_key(n.id) for n in nodes])
    subtasks = [
        {
            "id": node.id,
            "description": envelope.args[2] if envelope else None,
            "state": node.state.value,
            "result": json.loads(raw) if raw is not None else node.result_value(),
        }
        for node, envelope, raw in zip(nodes, envelopes, stored, strict=True)
    ]
    first = envelopes[0] if envelopes else None
    return {
        "task_id": task_id,
        "description": workflow.name,
        "priority": first.meta.get("priority") if first else None,
        "status": workflow.status.value,
        "subtasks": subtasks,
        "summary": summary.result_value() if summary else None,
    }


async def _envelope(job_id: str) -> Envelope | None:
    """The job's document (its arguments and meta), None if it expired meanwhile."""
    try:
        return (await app.job(job_id).ainfo()).envelope
    except JobNotFound:
        return None
