"""The examples run end to end, each with one command, against the test server."""

from __future__ import annotations

import os
import subprocess
import sys

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
