"""The wire format is language-neutral: a producer in Node.js (examples/node_producer),
written from docs/protocol.md, enqueues jobs that real Python worker processes run, and
gets every outcome back."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import redwork.scripts
from redwork import Settings
from redwork.client import Client
from redwork.job import JobState
from redwork.scripts import load
from tests.conftest import ROOT, worker_env

EXAMPLE = ROOT / "examples" / "node_producer"
SCRIPTS = Path(redwork.scripts.__file__).parent
QUEUE = "node-jobs"
NODE_MAJOR = 20
"""The oldest Node.js the example's client (npm's redis 6) supports."""
# `<id> <call> -> <outcome>`, one line per ended job.
OUTCOME = re.compile(r"^(\S+) (.+?) -> (.*)$")


@pytest.fixture(scope="session")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's dependencies, installed from its package-lock.json once per session
    (a lock: the test processes share the example's directory)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (Debian: apt-get install nodejs npm)")
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    if int(version.stdout.strip().lstrip("v").split(".")[0]) < NODE_MAJOR:
        pytest.skip(f"node {version.stdout.strip()} is too old: npm's redis 6 needs {NODE_MAJOR}+")
    installed = EXAMPLE / "node_modules"
    lock = tmp_path_factory.getbasetemp().parent / "npm-ci.lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        # npm writes this file last: a node_modules without it is an interrupted install.
        if not (installed / ".package-lock.json").is_file():
            done = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=EXAMPLE,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, f"npm ci failed:\n{done.stdout}{done.stderr}"
    return installed


@pytest.fixture
def python_worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A `redwork worker tasks:app` process (the example's tasks) serving QUEUE."""
    env = worker_env(settings, queues=(QUEUE,), processes=1)
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE), env["PYTHONPATH"]])
    command = [sys.executable, "-m", "redwork", "worker", "tasks:app"]
    proc = subprocess.Popen(command, env=env, cwd=EXAMPLE)
    yield proc
    proc.terminate()
    proc.wait(timeout=30)


def node_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDWORK_")}
    env["REDWORK_REDIS_URL"] = redis_url
    return env


def produce(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`node producer.js --scripts <redwork's scripts> ARGS` on the test server."""
    return subprocess.run(
        ["node", "producer.js", "--scripts", str(SCRIPTS), *args],
        cwd=EXAMPLE,
        env=node_env(redis_url),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def outcomes(stdout: str) -> dict[str, tuple[str, str]]:
    """Job id -> (call, outcome), from the producer's output."""
    found = {}
    for line in stdout.splitlines():
        match = OUTCOME.match(line)
        assert match, f"not an outcome line: {line!r}"
        found[match[1]] = (match[2], match[3])
    return found


def test_node_made_jobs_run_on_python_workers_and_their_outcomes_come_back(
    node_modules: Path,
    python_worker: subprocess.Popen[bytes],
    settings: Settings,
    redis_url: str,
    r: redis.Redis,
) -> None:
    # An empty script cache: afterwards, redwork's own enqueue script is in it only if
    # the producer expanded the includes exactly as redwork does.
    r.script_flush()
    greet = {"task": "greet", "id": "greet-ada", "args": ["Ada"]}
    greet["kwargs"] = {"greeting": "Hi", "punctuation": "?"}
    divide = {"task": "divide", "id": "divide-by-zero", "args": [1, 0]}
    divide |= {"max_attempts": 2, "backoff": 0.05}
    unknown = {"task": "no_such_task", "id": "unknown-task"}
    jobs = [json.dumps(spec) for spec in (greet, divide, unknown)]
    command = ["--queue", QUEUE, "--task", "square", "--count", "3"]
    command += [arg for job in jobs for arg in ("--job", job)]
    done = produce(redis_url, *command)
    assert done.returncode == 1, done.stdout + done.stderr  # 1: some job failed
    assert done.stderr.strip() == f"enqueued 6 job(s) on queue {QUEUE}"
    seen = outcomes(done.stdout)
    assert len(seen) == 6
    assert seen.pop("greet-ada") == (
        'greet("Ada", greeting="Hi", punctuation="?")',
        'completed: "Hi, Ada?"',
    )
    assert seen.pop("divide-by-zero") == (
        "divide(1, 0)",
        "failed (exception) after 2 attempts: ZeroDivisionError: division by zero",
    )
    unknown_error = r.hget(f"rw:{{{QUEUE}}}:job:unknown-task", "error")
    assert unknown_error is not None
    assert seen.pop("unknown-task") == (
        "no_such_task()",
        f"failed (unknown_task) after 1 attempt: {unknown_error.decode()}",
    )
    squares = {call: outcome for call, outcome in seen.values()}
    assert squares == {f"square({n})": f"completed: {n * n}" for n in (1, 2, 3)}
    assert all(re.fullmatch(r"[0-9a-f]{24}", job_id) for job_id in seen)

    # The Python side sees ordinary jobs.
    assert r.smembers("rw:queues") == {QUEUE.encode()}
    assert r.script_exists(load("enqueue").sha) == [True]
    client = Client(settings)
    for job_id, (call, _) in seen.items():
        record = client.job(QUEUE, job_id)
        envelope = record.envelope
        assert envelope is not None
        assert (record.state, record.attempt) == (JobState.COMPLETED, 1)
        n = int(call.removeprefix("square(").removesuffix(")"))
        assert (envelope.task, envelope.args, envelope.kwargs) == ("square", [n], {})
        assert client.result(QUEUE, job_id, timeout=5) == n * n
        # Optional fields at their defaults are left out of the document.
        assert json.loads(record.data) == {
            "v": 1, "id": job_id, "task": "square", "queue": QUEUE, "args": [n]
        }  # fmt: skip
    greeted = client.job(QUEUE, "greet-ada")
    assert greeted.envelope is not None
    assert greeted.envelope.kwargs == {"greeting": "Hi", "punctuation": "?"}
    assert client.result(QUEUE, "greet-ada", timeout=5) == "Hi, Ada?"
    failed = client.job(QUEUE, "divide-by-zero")
    assert failed.envelope is not None and failed.envelope.retry.max_attempts == 2
    assert (failed.state, failed.reason, failed.attempt) == (JobState.FAILED, "exception", 2)
    assert failed.error is not None and "ZeroDivisionError" in failed.error
    assert client.job(QUEUE, "unknown-task").reason == "unknown_task"
    assert set(r.zrange(f"rw:{{{QUEUE}}}:failed", 0, -1)) == {b"divide-by-zero", b"unknown-task"}


def test_a_second_enqueue_of_an_id_adds_nothing_and_gets_the_first_outcome(
    node_modules: Path,
    python_worker: subprocess.Popen[bytes],
    redis_url: str,
    r: redis.Redis,
) -> None:
    job = json.dumps({"task": "square", "id": "sq-7", "args": [7]})
    first, second = [produce(redis_url, "--queue", QUEUE, "--job", job) for _ in range(2)]
    for done in (first, second):
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout == "sq-7 square(7) -> completed: 49\n"
    assert "sq-7: a job with this id exists already" in second.stderr
    assert r.hget(f"rw:{{{QUEUE}}}:stats", "enqueued") == b"1"


def test_bad_input_is_refused_before_anything_is_stored(
    node_modules: Path, redis_url: str, r: redis.Redis
) -> None:
    bad = {
        "--queue": "no spaces",
        "--job": json.dumps({"task": "square", "id": "bad id"}),
        "--count": "3",  # without --task
    }
    for option, value in bad.items():
        done = produce(redis_url, option, value)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.startswith("producer.js: "), done.stderr
    assert r.dbsize() == 0


def test_run_py_runs_the_demo_with_one_command(node_modules: Path, redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py")],
        env=node_env(redis_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    calls = sorted(call + " -> " + outcome for call, outcome in outcomes(done.stdout).values())
    assert calls == sorted(
        [f"square({n}) -> completed: {n * n}" for n in range(1, 6)]
        + ['greet("Ada", greeting="Hi") -> completed: "Hi, Ada!"']
    )
