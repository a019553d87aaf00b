"""The examples run end to end, each with one command, against the test server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta

import redis

from redwork import Redwork
from tests.conftest import ROOT


def run_example(redis_url: str, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDWORK_")}
    env["REDWORK_REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, str(ROOT / path), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_append_message_ends_as_hello_gopher_at_version_8(redis_url: str) -> None:
    done = run_example(redis_url, "examples/append_message/run.py", "--step", "0.01")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "version=8" in done.stdout
    assert "# final: {'id': 'm-1', 'message': 'hello! gopher'} at version 8" in done.stdout
    # Run again on the same server: e-1 is a duplicate now, and nothing runs.
    again = run_example(redis_url, "examples/append_message/run.py", "--step", "0.01")
    assert again.returncode == 1
    assert "# e-1 was handled before on this server: nothing runs again" in again.stdout
    assert "version=2" not in again.stdout


def test_uppercase_follows_a_job_from_queued_to_done(redis_url: str) -> None:
    done = run_example(redis_url, "examples/uppercase/run.py")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith('POST /submit -> {"id": ')
    assert '"input": "hello world", "status": "queued", "result": ""' in lines[0]
    assert lines[1:] == [
        'GET /status -> {"status": "queued"}',
        'websocket -> {"status": "queued"}',
        'websocket -> {"status": "running"}',
        'websocket -> {"status": "done", "result": "HELLO WORLD"}',
        'GET /status -> {"status": "done", "result": "HELLO WORLD"}',
    ]


def test_orchestrator_splits_a_task_into_subtasks_that_workers_store_for_24h(
    redis_url: str, r: redis.Redis, app: Redwork
) -> None:
    done = run_example(redis_url, "examples/orchestrator/run.py", "--work", "0.2")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    request = '{"description": "Build a user authentication system", "priority": 1}'
    assert lines[0].startswith(f"POST /tasks {request} -> 201 ")
    created = json.loads(lines[0].split(" -> 201 ", 1)[1])
    task_id = created["task_id"]
    assert created["status"] == "pending"
    assert created["subtasks"] == [f"{task_id}-{i}" for i in range(4)]
    before = json.loads(lines[1].split(f"GET /tasks/{task_id} -> 200 ", 1)[1])
    assert before["status"] == "pending"  # the workers start after the first look
    assert [s["state"] for s in before["subtasks"]] == ["waiting"] * 4
    descriptions = [
        "Design user database schema",
        "Implement JWT token generation",
        "Create login/logout endpoints",
        "Add password hashing with bcrypt",
    ]
    assert [s["description"] for s in before["subtasks"]] == descriptions

    # Each subtask ran, then the summary, which waits for all four (the chord).
    watched = lines[2:12]
    for description in descriptions:
        assert f"Processing: {description} (Task: {task_id})" in watched
    completed = [line for line in watched if "] Completed: " in line]
    assert sorted(line.split("] Completed: ")[1] for line in completed[:4]) == sorted(descriptions)
    assert watched[-2:] == [
        f"Processing: Summarize the results (Task: {task_id})",
        completed[-1],
    ]
    assert completed[-1].endswith("] Completed: Summarize the results")

    after = json.loads(lines[12].split(f"GET /tasks/{task_id} -> 200 ", 1)[1])
    assert after["status"] == "succeeded" and after["priority"] == 1
    assert after["description"] == "Build a user authentication system"
    assert [s["state"] for s in after["subtasks"]] == ["completed"] * 4
    assert after["summary"]["completed"] == created["subtasks"]

    # In Redis: result:<subtask id> as the seed stores it, for 24 h.
    assert sorted(k.decode() for k in r.scan_iter("result:*")) == [
        f"result:{i}" for i in created["subtasks"]
    ]
    for subtask, description in zip(after["subtasks"], descriptions, strict=True):
        key = f"result:{subtask['id']}"
        stored = json.loads(r.get(key) or b"null")
        assert stored == subtask["result"]
        assert set(stored) == {
            "subtask_id",
            "task_id",
            "status",
            "worker_id",
            "completed_at",
            "description",
        }
        assert (stored["subtask_id"], stored["task_id"]) == (subtask["id"], task_id)
        assert (stored["status"], stored["description"]) == ("completed", description)
        assert stored["worker_id"] in after["summary"]["workers"]
        assert datetime.fromisoformat(stored["completed_at"]).utcoffset() == timedelta(0)
        assert 0 < r.ttl(key) <= 86_400
        envelope = app.job(subtask["id"]).info().envelope
        assert envelope is not None and envelope.meta == {"priority": 1}
    assert f"TTL result:{task_id}-0 -> " in done.stdout
    assert lines[-2] == (
        "GET /tasks/no-such-task -> 404 "
        '{"error": "no task no-such-task (it never existed, or it expired)"}'
    )
    assert lines[-1].startswith('POST /tasks {"priority": "high"} -> 422 {"error": ')
