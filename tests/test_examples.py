"""The examples run end to end, each with one command, against the test server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta

import redis

from redwork import JobState, Redwork, Settings
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


def test_worker_pattern_runs_each_iteration_once_and_stops_a_chain_at_its_failed_step(
    redis_url: str, settings: Settings
) -> None:
    done = run_example(
        redis_url, "examples/worker_pattern/run.py", "--iterations", "30", "--workers", "2"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "# 2 worker processes, 1 job at a time each: "
        "redwork worker app:app -p 2 -c 1 -q worker_pattern"
    )
    enqueued = re.fullmatch(r"# enqueued 30 sleep jobs of 10-60 ms \((\d+) ms in all\)", lines[1])
    assert enqueued is not None
    assert lines[2].split() == ["worker", "jobs", "slept"]
    end = next(i for i, line in enumerate(lines) if line.startswith("all "))
    rows = [line.split() for line in lines[3:end]]
    # Two processes of one slot each: at most two workers ran jobs, and between them all.
    assert 1 <= len(rows) <= 2
    assert sum(int(row[1]) for row in rows) == 30
    assert sum(int(row[2]) for row in rows) == int(enqueued[1])
    assert lines[end].split() == ["all", "30", enqueued[1], "ms"]
    once = "iterations: all 30 completed, each exactly once (on its first attempt)"
    assert lines[end + 1] == once
    assert re.fullmatch(
        r"wall time \d+ ms from the first start to the last finish; ideal \d+ ms "
        rf"\({enqueued[1]} ms / 2 slots\): [\d.]+% efficient",
        lines[end + 2],
    )

    # The chain whose B fails once runs to its end; the one whose B always fails stops.
    notes = lines[end + 3 :]
    assert notes[1] == "ideal scenario, B retried once: 'A -> B -> C'"
    assert notes[2] == "Job A (completed) -> Job B (completed) -> Job C (completed)"
    assert re.fullmatch(
        r"  B: attempt 1 at \+0 ms: failed, retry scheduled, attempt 2 at \+\d+ ms: completed",
        notes[3],
    )
    failure = re.fullmatch(
        r"failure scenario, B fails 3 times: workflow failed; first: job (\w+) failed "
        r"\(exception: RuntimeError: step B failed on attempt 3\)",
        notes[4],
    )
    assert failure is not None
    assert notes[5] == "Job A (completed) -> Job B (failed) -> Job C (not executed: skipped)"
    assert re.fullmatch(
        r"  B: attempt 1 at \+0 ms: failed, retry scheduled, "
        r"attempt 2 at \+\d+ ms: failed, retry scheduled, attempt 3 at \+\d+ ms: failed",
        notes[6],
    )
    assert notes[7] == "# a job over its timeout: slow(2.0) with timeout=0.2"
    timed_out = re.fullmatch(r"job (\w+): timeout: timed out after 0.2s", notes[8])
    assert timed_out is not None
    assert notes[9] == "# the failed store: redwork failed list -q worker_pattern"
    listing = "\n".join(notes[10:])
    assert failure[1] in listing and timed_out[1] in listing

    client = Redwork("check", settings=settings).client
    failed = client.run(client.queue("worker_pattern").failed_ids())
    assert sorted(failed) == sorted([failure[1], timed_out[1]])  # and nothing else failed
    step_b = client.job("worker_pattern", failure[1])
    assert (step_b.state, step_b.attempt, step_b.reason) == (JobState.FAILED, 3, "exception")
    assert client.job("worker_pattern", timed_out[1]).reason == "timeout"
    client.close()


def finished_lines(lines: list[str]) -> list[tuple[str, int]]:
    """(job id, attempt) of each "finished" line of the work_server listener."""
    found = [re.fullmatch(r"listener: finished: (\S+) \(attempt (\d+)\)", line) for line in lines]
    return [(match[1], int(match[2])) for match in found if match]


def per_worker(lines: list[str]) -> dict[str, str]:
    """The work_server's jobs-per-worker lines: worker id -> what follows it."""
    start = lines.index("# jobs per worker (each job's hash names the worker that ran it)")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("all: "))
    return dict(line.split(": ", 1) for line in lines[start + 1 : end])


def test_work_server_listener_hears_each_job_finish_once(redis_url: str) -> None:
    done = run_example(redis_url, "examples/work_server/run.py", "--jobs", "20")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "# stored 20 jobs, a hash each, with one app.enqueue_many call"
    first = re.fullmatch(
        r"app\.job\('(\w+-0)', queue='work_server'\)\.info\(\): waiting, task work\(0, \d+\)",
        lines[1],
    )
    assert first is not None
    workers = max(1, (os.cpu_count() or 2) - 1)  # cores - 1
    processes = "1 worker process" if workers == 1 else f"{workers} worker processes"
    assert lines[2] == (
        f"# {processes}, 10 jobs at a time each: "
        f"redwork worker app:app -p {workers} --concurrency 10 --queues work_server"
    )
    finished = finished_lines(lines)
    batch = first[1].removesuffix("-0")
    assert sorted(finished) == sorted((f"{batch}-{i}", 1) for i in range(20))  # each once
    assert "recovered" not in done.stdout

    start = lines.index(f"$ redwork job show {first[1]} -q work_server")
    end = lines.index("# jobs per worker (each job's hash names the worker that ran it)")
    job = json.loads("\n".join(lines[start + 1 : end]))
    assert (job["id"], job["task"], job["args"][0]) == (first[1], "work", 0)
    assert (job["state"], job["attempt"]) == ("completed", 1)
    assert job["result"] == {"task": 0, "slept_ms": job["args"][1]}
    counts = per_worker(lines)
    assert 1 <= len(counts) <= workers
    assert job["worker"] in counts
    assert sum(int(count) for count in counts.values()) == 20
    assert lines[-2:] == ["all: 20", "finished messages: 20 for 20 jobs, one each: True"]


def test_work_server_takes_back_the_jobs_of_a_killed_worker(redis_url: str) -> None:
    done = run_example(
        redis_url, "examples/work_server/run.py", "--jobs", "20", "--kill-a-worker", "--seed", "7"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    finished = finished_lines(lines)
    ids = [job_id for job_id, _ in finished]
    assert len(ids) == len(set(ids)) == 20  # one "finished" per job, the killed ones too
    killed = re.findall(r"# kill -9 \d+: the worker (\S+), with", done.stdout)
    assert len(killed) == 1
    # The jobs the killed worker was running came back, and finished on their 2nd attempt.
    recovered = re.findall(r"listener: recovered \(.*\): (\S+) \(attempt 1\)", done.stdout)
    assert recovered
    assert {job_id: attempt for job_id, attempt in finished if job_id in recovered} == {
        job_id: 2 for job_id in recovered
    }
    counts = per_worker(lines)
    assert [worker for worker, count in counts.items() if count.endswith(" (killed)")] == [
        killed[0]
    ]
    assert sum(int(count.split()[0]) for count in counts.values()) == 20
    assert lines[-1] == "finished messages: 20 for 20 jobs, one each: True"
