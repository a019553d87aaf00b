"""Structured logs and OpenTelemetry tracing, with real worker processes: JSON log lines
carry a job's fields; a job's run span is the child of its enqueue span across processes."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from redwork import JobCancelled, JobFailed, JobState, Redwork, Settings, chain
from redwork.client import Client
from redwork.errors import ConfigurationError
from redwork.logs import JsonFormatter
from redwork.queue import Queue
from redwork.tracing import tracer
from tests import tasks, traced_tasks
from tests.conftest import ROOT, until, worker_env

PRODUCER_SPANS = InMemorySpanExporter()
PRODUCER_BUG = traced_tasks.BrokenProcessor()


@pytest.fixture(scope="module", autouse=True)
def producer_tracing() -> None:
    """The test process is the producer: its spans go to PRODUCER_SPANS (the global
    provider can be set once per process)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(PRODUCER_SPANS))
        provider.add_span_processor(PRODUCER_BUG)
        trace.set_tracer_provider(provider)


def start_worker(
    settings: Settings, app_path: str, stderr: Path, *cli_args: str, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "redwork", *cli_args, "worker", app_path],
            env={**worker_env(settings, processes=1), **env},
            cwd=ROOT,
            stderr=out,
        )


@pytest.fixture
def stopping() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def traced(settings: Settings) -> Redwork:
    traced_tasks.app.configure(settings.replace(tracing=True))
    return traced_tasks.app


def start_traced_worker(
    settings: Settings, tmp_path: Path, stopping: list[subprocess.Popen[bytes]], **env: str
) -> Path:
    """A traced worker process writing its spans to the returned file."""
    path = tmp_path / "spans.jsonl"
    stopping.append(
        start_worker(
            settings.replace(tracing=True),
            "tests.traced_tasks:app",
            tmp_path / "worker.log",
            env={"REDWORK_TEST_SPANS": str(path), **env},
        )
    )
    return path


@pytest.fixture
def spans_file(tmp_path: Path, settings: Settings, stopping: list[subprocess.Popen[bytes]]) -> Path:
    return start_traced_worker(settings, tmp_path, stopping)


def worker_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def producer_span(name: str) -> dict[str, Any]:
    found = [traced_tasks.span_facts(s) for s in PRODUCER_SPANS.get_finished_spans()]
    matching = [s for s in found if s["name"] == name]
    assert len(matching) == 1, found
    return matching[0]


def test_a_run_span_is_the_child_of_the_enqueue_span_across_processes(
    traced: Redwork, spans_file: Path, r: redis.Redis
) -> None:
    PRODUCER_SPANS.clear()
    handle = traced_tasks.add.enqueue(2, 3)
    assert handle.result(timeout=20) == 5
    sent = producer_span("enqueue traced.add")
    assert sent["kind"] == "PRODUCER"
    assert sent["attributes"]["messaging.message.id"] == handle.id
    document = orjson.loads(r.hget(Queue("default").job_key(handle.id), "data") or b"")
    assert document["trace"]["traceparent"].split("-")[1:3] == [
        sent["trace_id"],
        sent["span_id"],
    ]
    run, inner = worker_spans(spans_file)[-2:][::-1]
    assert run["name"] == "run traced.add" and run["kind"] == "CONSUMER"
    assert (run["trace_id"], run["parent_id"]) == (sent["trace_id"], sent["span_id"])
    assert run["status"] == "OK"
    assert run["attributes"]["messaging.message.id"] == handle.id
    assert run["attributes"]["redwork.attempt"] == 1
    # The task's own span nests under the run span.
    assert inner["name"] == "inner async"
    assert (inner["trace_id"], inner["parent_id"]) == (run["trace_id"], run["span_id"])


def test_a_plain_function_task_s_spans_nest_under_its_run_span_in_its_thread(
    traced: Redwork, spans_file: Path
) -> None:
    assert traced_tasks.sync_add.enqueue(4, 5).result(timeout=20) == 9
    spans = worker_spans(spans_file)
    inner = next(s for s in spans if s["name"] == "inner sync")
    run = next(s for s in spans if s["name"] == "run traced.sync_add")
    assert (inner["trace_id"], inner["parent_id"]) == (run["trace_id"], run["span_id"])


def test_a_failed_run_s_span_has_the_error_status_and_reason(
    traced: Redwork, spans_file: Path
) -> None:
    handle = traced_tasks.fail.enqueue()
    with pytest.raises(JobFailed):
        handle.result(timeout=20)
    run = next(s for s in worker_spans(spans_file) if s["name"] == "run traced.fail")
    assert run["status"] == "ERROR"
    assert run["description"] == "exception: ValueError: no luck"
    assert run["attributes"]["redwork.failure.reason"] == "exception"


def test_a_batch_is_one_enqueue_span_whose_context_every_job_carries(
    traced: Redwork, spans_file: Path, r: redis.Redis
) -> None:
    PRODUCER_SPANS.clear()
    handles = traced.enqueue_many([traced_tasks.add.prepare(i, i) for i in range(5)])
    assert [h.result(timeout=20) for h in handles] == [0, 2, 4, 6, 8]
    sent = producer_span("enqueue traced.add")
    assert sent["attributes"]["messaging.batch.message_count"] == 5
    runs = [s for s in worker_spans(spans_file) if s["name"] == "run traced.add"]
    assert {run["attributes"]["messaging.message.id"] for run in runs} == {h.id for h in handles}
    assert {(run["trace_id"], run["parent_id"]) for run in runs} == {
        (sent["trace_id"], sent["span_id"])
    }


@pytest.mark.parametrize("junk", [{"traceparent": 5}, {"traceparent": "00-junk"}, "x", [1]])
def test_a_malformed_trace_context_starts_a_new_trace_and_the_job_runs(
    junk: Any, traced: Redwork, settings: Settings, spans_file: Path
) -> None:
    envelope = traced_tasks.add.prepare(20, 22)
    envelope.trace = junk
    # As a foreign producer writes it: a tracing client would put its own context there.
    producer = Client(settings)
    (job_id,) = producer.enqueue([envelope])
    assert producer.wait("default", job_id, timeout=20).result_value() == 42
    producer.close()
    run = next(s for s in worker_spans(spans_file) if s["name"] == "run traced.add")
    assert run["parent_id"] is None and run["status"] == "OK"


def test_a_workflow_s_runs_are_children_of_its_submit_span(
    traced: Redwork, spans_file: Path
) -> None:
    PRODUCER_SPANS.clear()
    handle = traced.submit(chain(traced_tasks.add.s(1, 2), traced_tasks.add.s(10)))
    assert handle.result(timeout=20) == 13
    sent = producer_span("enqueue traced.add")
    assert sent["attributes"]["messaging.batch.message_count"] == 2
    runs = [s for s in worker_spans(spans_file) if s["name"] == "run traced.add"]
    assert len(runs) == 2
    assert {(run["trace_id"], run["parent_id"]) for run in runs} == {
        (sent["trace_id"], sent["span_id"])
    }


def test_a_broken_tracing_sdk_changes_no_job_s_fate(
    traced: Redwork,
    settings: Settings,
    tmp_path: Path,
    stopping: list[subprocess.Popen[bytes]],
    r: redis.Redis,
) -> None:
    """A span processor that raises (an exporter's bug) on both sides: the enqueue stores
    the job and returns, the run completes once, and the errors are logged."""
    start_traced_worker(settings, tmp_path, stopping, REDWORK_TEST_SPANS_BROKEN="1")
    PRODUCER_BUG.broken = True
    try:
        handle = traced_tasks.nap.enqueue(0)  # a task making no span of its own
    finally:
        PRODUCER_BUG.broken = False
    assert handle.result(timeout=20) is None
    assert handle.info().attempt == 1
    assert "tracing: could not" in (tmp_path / "worker.log").read_text()


def test_a_cancelled_run_s_span_says_so(traced: Redwork, spans_file: Path) -> None:
    handle = traced_tasks.nap.enqueue(30)
    until(lambda: handle.status() is JobState.ACTIVE, what="the nap to start")
    handle.cancel()
    with pytest.raises(JobCancelled):
        handle.result(timeout=20)
    until(lambda: spans_file.exists() and "run traced.nap" in spans_file.read_text())
    run = next(s for s in worker_spans(spans_file) if s["name"] == "run traced.nap")
    assert run["status"] == "ERROR"
    assert run["attributes"]["redwork.failure.reason"] == "cancelled"


def test_without_tracing_documents_carry_no_trace_context(app: Redwork, r: redis.Redis) -> None:
    handle = tasks.add.enqueue(1, 2)
    document = orjson.loads(r.hget(Queue("default").job_key(handle.id), "data") or b"")
    assert "trace" not in document


def test_tracing_without_opentelemetry_installed_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import now fails
    with pytest.raises(ConfigurationError, match=r"pip install 'redwork\[otel\]'"):
        tracer(True)


# -- JSON logs ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["option", "environment"])
def test_json_logs_are_one_object_per_line_with_the_job_s_fields(
    how: str,
    app: Redwork,
    settings: Settings,
    tmp_path: Path,
    stopping: list[subprocess.Popen[bytes]],
) -> None:
    log = tmp_path / "worker.log"
    args, env = (
        (("--log-format", "json"), {}) if how == "option" else ((), {"REDWORK_LOG_FORMAT": "json"})
    )
    worker = start_worker(settings, "tests.tasks:app", log, *args, env=env)
    stopping.append(worker)
    handle = tasks.boom.enqueue("kaput")
    with pytest.raises(JobFailed):
        handle.result(timeout=20)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert records, "the worker logged nothing"
    for record in records:
        assert {"time", "level", "logger", "pid", "message"} <= record.keys(), record
    failures = [r for r in records if r.get("job_id") == handle.id]
    assert [(f["attempt"], f["reason"], f["task"], f["queue"]) for f in failures] == [
        (attempt, "exception", "boom", "default") for attempt in (1, 2, 3)
    ]
    assert all(f["level"] == "WARNING" for f in failures)


def test_an_unknown_log_format_is_refused_with_the_choices(settings: Settings) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "redwork", "--log-format", "xml", "info"],
        env=worker_env(settings),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "'xml' is not one of 'text', 'json'" in done.stderr
    with pytest.raises(ConfigurationError, match="log_format must be text or json"):
        Settings.load(env={"REDWORK_LOG_FORMAT": "xml"})


def test_a_json_log_record_orjson_refuses_is_kept_all_the_same() -> None:
    """Lone surrogates (a file name from os.fsdecode), integers beyond 64 bits: the line
    is still one JSON object, not a logging error in the middle of the stream."""
    record = logging.LogRecord(
        "tasks", logging.INFO, __file__, 1, "resizing %s", ("photo-\udcff.jpg",), None
    )
    record.attempt = 1 << 70
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "resizing photo-\udcff.jpg"
    assert entry["attempt"] == 1 << 70


def test_the_log_format_is_read_in_any_case() -> None:
    assert Settings.load(env={"REDWORK_LOG_FORMAT": "JSON"}).log_format == "json"
