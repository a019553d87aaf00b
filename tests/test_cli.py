"""The `redwork` command, run as a real process (`python -m redwork ...`) against the
test server (REDWORK_REDIS_URL), or on its own embedded server where that is the point."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis
from click.testing import CliRunner

from redwork import JobState, Redwork
from redwork.cli import cli
from redwork.queue import Queue, run
from redwork.registry import WORKERS_CHANNEL
from redwork.scripts import Code
from redwork.server import EmbeddedServer
from tests import tasks
from tests.conftest import ROOT, WorkerProcess, valkey_servers_under, wait_for_event


def run_cli(
    *args: str, redis_url: str | None = None, cwd: Path | None = None, timeout: float = 60.0,
    **env: str,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`python -m redwork *args` with no REDWORK_* variable but the URL, if given."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REDWORK_")}
    environ["COLUMNS"] = "200"  # rich tables wide enough not to wrap ids
    if redis_url is not None:
        environ["REDWORK_REDIS_URL"] = redis_url
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "redwork", *args],
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def table_row(output: str, first_cell: str) -> list[str]:
    """The cells of the rich table row whose first cell is `first_cell`."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


def test_demo_runs_end_to_end_on_its_own_embedded_server(tmp_path: Path) -> None:
    # TMPDIR places the demo's private data dir under tmp_path, to check it is cleaned up.
    result = run_cli(
        "demo", "--iterations", "20", "--workers", "2", "--seed", "1",
        cwd=tmp_path, timeout=90, TMPDIR=str(tmp_path),
    )  # fmt: skip
    out = ok(result)
    assert "embedded Valkey server at" in out
    assert "per worker" in out
    assert "jobs: 20 completed, 0 failed" in out
    rows = [table_row(out, f"worker {n}") for n in (1, 2) if re.search(rf"│ *worker {n} *│", out)]
    assert sum(int(jobs_done) for _, jobs_done, _ in rows) == 20
    assert valkey_servers_under(tmp_path) == []


@pytest.mark.cluster
def test_info_lists_queues_with_counts_and_live_workers(
    app: Redwork,
    redis_url: str,
    r: redis.Redis,
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    pubsub = r.pubsub()
    pubsub.subscribe(WORKERS_CHANNEL)
    assert pubsub.get_message(timeout=10) is not None  # subscribed
    idle = spawn_worker("--queues", "idle")
    started = None
    while started is None:
        message = pubsub.get_message(timeout=30)
        assert message is not None, "the worker did not start"
        if message["type"] == "message":
            started = orjson.loads(message["data"])
    pubsub.close()
    app.enqueue_many(tasks.add.options(queue="cliq").prepare(i, i) for i in range(3))
    keyed = tasks.add.options(queue="cliq", key="k")
    app.enqueue_many([keyed.prepare(1, 1), keyed.prepare(2, 2)])  # the second is held

    out = ok(run_cli("info", redis_url=redis_url))
    _, waiting, held, limited, active, delayed, failed, *_ = table_row(out, "cliq")
    assert (waiting, held, limited, active, delayed, failed) == ("4", "1", "0", "0", "0", "0")
    assert table_row(out, "idle")[1] == "0"
    worker_row = table_row(out, started["id"])
    assert worker_row[1] == "idle"
    assert idle.proc.poll() is None


def test_info_lists_running_jobs_with_their_progress(
    app: Redwork, redis_url: str, r: redis.Redis
) -> None:
    handle = tasks.add.options(queue="cliq").enqueue(1, 2)
    queue = Queue("cliq")
    (delivery,) = run(r, queue.fetch(1, 60_000, "cli-test-worker", 1 << 20)).deliveries
    progress = orjson.dumps({"fraction": 0.4, "message": "step 2 of 5"})
    assert run(r, queue.progress(handle.id, delivery.token, progress)) is Code.OK

    out = ok(run_cli("info", redis_url=redis_url))
    _, queue_name, task, worker, running_for, shown = table_row(out, handle.id)
    assert (queue_name, task, worker) == ("cliq", tasks.add.name, "cli-test-worker")
    assert running_for.endswith("s")
    assert shown == "40% step 2 of 5"


def test_job_show_prints_the_job_as_json(app: Redwork, redis_url: str) -> None:
    handle = tasks.add.options(queue="cliq").enqueue(2, 40)

    shown = orjson.loads(ok(run_cli("job", "show", handle.id, redis_url=redis_url)))
    assert shown["id"] == handle.id
    assert shown["queue"] == "cliq"
    assert shown["state"] == "waiting"
    assert shown["task"] == "add"
    assert shown["args"] == [2, 40]

    missing = run_cli("job", "show", "no-such-job", redis_url=redis_url)
    assert missing.returncode == 1
    assert "no job no-such-job" in missing.stderr


@pytest.mark.cluster
def test_failed_list_show_retry_and_purge(
    app: Redwork,
    redis_url: str,
    r: redis.Redis,
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    worker = spawn_worker()
    doomed = tasks.boom.options(retries=0)
    to_retry, to_purge = doomed.enqueue("cli boom one"), doomed.enqueue("cli boom two")
    for h in (to_retry, to_purge):
        wait_for_event(r, "default", "failed", h.id)
    worker.kill(signal.SIGINT)  # stop it, so that a retried job stays waiting
    assert worker.wait() == 0

    listing = ok(run_cli("failed", "list", redis_url=redis_url))
    for h, message in ((to_retry, "cli boom one"), (to_purge, "cli boom two")):
        _, task, attempt, reason, error = table_row(listing, h.id)
        assert (task, attempt, reason) == ("boom", "1", "exception")
        assert error == f"ValueError: {message}"

    shown = orjson.loads(ok(run_cli("failed", "show", to_retry.id, redis_url=redis_url)))
    assert shown["state"] == "failed"
    assert shown["reason"] == "exception"
    assert "Traceback" in shown["error"] and "ValueError: cli boom one" in shown["error"]

    assert run_cli("failed", "retry", redis_url=redis_url).returncode == 2  # ids or --all
    assert ok(run_cli("failed", "retry", to_retry.id, redis_url=redis_url)).strip() == "requeued 1"
    record = to_retry.info()
    assert record.state is JobState.WAITING
    assert record.attempt == 0
    assert r.lrange(Queue("default").wait, 0, -1) == [to_retry.id.encode()]

    purged = ok(run_cli("failed", "purge", to_purge.id, redis_url=redis_url))
    assert purged.strip() == "deleted 1"
    assert not r.exists(Queue("default").job_key(to_purge.id))
    assert r.zcard(Queue("default").failed) == 0
    assert to_purge.id not in ok(run_cli("failed", "list", redis_url=redis_url))


def test_server_start_status_and_stop_manage_the_embedded_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "srv"
    flags = ("--data-dir", str(data_dir))
    try:
        url = ok(run_cli(*flags, "server", "start", cwd=tmp_path)).strip()
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
        # A second start finds it running and gives the same URL.
        assert ok(run_cli(*flags, "server", "start", cwd=tmp_path)).strip() == url

        status = ok(run_cli(*flags, "server", "status", cwd=tmp_path))
        assert "running: yes" in status
        assert f"url: {url}" in status
        match = re.search(r"^pid: (\d+)$", status, re.MULTILINE)
        assert match is not None
        assert valkey_servers_under(data_dir) == [int(match.group(1))]

        assert ok(run_cli(*flags, "server", "stop", cwd=tmp_path)).strip() == "stopped"
        assert "running: no" in ok(run_cli(*flags, "server", "status", cwd=tmp_path))
        assert valkey_servers_under(data_dir) == []
        assert ok(run_cli(*flags, "server", "stop", cwd=tmp_path)).strip() == "not running"
    finally:
        EmbeddedServer(data_dir).stop()


def test_help_shows_examples() -> None:
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    assert "Examples:" in top.output
    assert "redwork demo --iterations 100 --workers 4" in top.output
    for command in ("worker", "server", "info", "job", "workflow", "failed", "demo"):
        assert re.search(rf"^\s+{command}\s", top.output, re.MULTILINE), command
    # Every command's summary is whole, not a first line click cut short with "...".
    listed = top.output.split("Commands:")[1]
    assert "..." not in listed and len(listed.strip().splitlines()) == len(cli.commands)

    worker = runner.invoke(cli, ["worker", "--help"])
    assert worker.exit_code == 0
    assert "Examples:" in worker.output
    assert "redwork worker myapp.tasks:app -q high,default -c 50 -p 3" in worker.output
    assert "--grace" in worker.output and "--lease" in worker.output


def test_a_single_worker_gives_its_app_the_server_named_on_the_command_line(
    app: Redwork, redis_url: str, tmp_path: Path
) -> None:
    # No REDWORK_* variable: the URL comes only from --redis. The app's own client (what
    # tasks use for state and progress) must talk to that server, not an embedded one.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REDWORK_")}
    environ["REDWORK_DATA_DIR"] = str(tmp_path / "must-stay-unused")
    handle = tasks.client_url.enqueue()
    worker = subprocess.Popen(
        [sys.executable, "-m", "redwork", "--redis", redis_url, "worker", "tests.tasks:app"],
        env=environ,
        cwd=ROOT,
    )
    try:
        assert handle.result(timeout=30) == redis_url
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    assert not (tmp_path / "must-stay-unused").exists()
