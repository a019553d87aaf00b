"""Workflows through the CLI (`redwork workflow ...`) and the HTTP API."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
import pytest
import redis

from redwork import Redwork, Workflow, chain
from tests.conftest import ApiProcess, WorkerProcess
from tests.tasks import add, boom, echo
from tests.test_cli import ok, run_cli, table_row


@pytest.fixture
def http(api: ApiProcess) -> httpx.Client:
    with httpx.Client(base_url=api.url, timeout=30) as client:
        yield client  # type: ignore[misc]


def test_workflow_show_draws_levels_with_states(
    app: Redwork, redis_url: str, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    graph = Workflow()
    top = graph.add(echo.options(job_id="top").s(1))
    fails = graph.add(boom.options(job_id="fails", retries=0).s(), depends_on=[top])
    graph.add(add.options(job_id="after-fails").s(1, 2), depends_on=[fails])
    graph.add(add.options(job_id="side").s(2, 3), depends_on=[top])
    handle = app.submit(graph, name="nightly")
    spawn_worker()
    app.client.wait_workflow(handle.queue, handle.id, 30)

    out = ok(run_cli("workflow", "show", handle.id, redis_url=redis_url))
    lines = out.splitlines()
    assert f"workflow {handle.id} (nightly) - failed" in lines[0]
    assert "4/4 ended: 2 succeeded, 1 failed, 1 skipped, 0 cancelled" in lines[0]
    level_of = {}
    for line in lines[1:]:
        if line.startswith("level "):
            level = int(line.split()[1])
        else:
            level_of[line.split()[1]] = (level, line)
    assert level_of["top"][0] == 0 and "completed  = 1" in level_of["top"][1]
    assert level_of["fails"][0] == 1 and "<- top" in level_of["fails"][1]
    assert "failed" in level_of["fails"][1] and "ValueError: boom" in level_of["fails"][1]
    assert level_of["side"][0] == 1 and "= 5" in level_of["side"][1]
    assert level_of["after-fails"][0] == 2 and "skipped" in level_of["after-fails"][1]

    as_json = orjson.loads(
        ok(run_cli("workflow", "show", handle.id, "--json", redis_url=redis_url))
    )
    assert [n["state"] for n in as_json["nodes"]] == ["completed", "failed", "skipped", "completed"]

    listed = ok(run_cli("workflow", "list", redis_url=redis_url))
    assert table_row(listed, handle.id)[1:4] == ["nightly", "failed", "4"]

    missing = run_cli("workflow", "show", "nope", redis_url=redis_url)
    assert missing.returncode == 1 and "no workflow nope" in missing.stderr


def test_workflow_cancel_from_the_cli(app: Redwork, redis_url: str) -> None:
    handle = app.submit(chain(echo.s(1), echo.s(), echo.s()))
    assert ok(run_cli("workflow", "cancel", handle.id, redis_url=redis_url)).strip() == (
        "cancelled 3 jobs"
    )
    assert handle.status().value == "cancelled"


def test_submit_follow_and_cancel_workflows_over_http(
    http: httpx.Client, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    body = {
        "name": "sum",
        "nodes": [
            {"task": "add", "args": [1, 2], "job_id": "a"},
            {"task": "add", "args": [3, 4], "job_id": "b"},
            {"task": "total", "job_id": "c", "depends_on": ["a", "b"], "pass_results": "list"},
        ],
    }
    created = http.post("/api/workflows", json=body)
    assert created.status_code == 201, created.text
    workflow_id = created.json()["id"]
    assert created.json()["nodes"] == ["a", "b", "c"]
    view = http.get(f"/api/workflows/{workflow_id}").json()
    assert view["status"] == "pending"
    assert [n["state"] for n in view["nodes"]] == ["waiting", "waiting", "pending"]
    assert view["nodes"][2]["depends_on"] == ["a", "b"]

    spawn_worker()
    final = _wait_workflow(http, workflow_id)
    assert final["status"] == "succeeded"
    assert final["nodes"][2]["result"] == 10

    listed = http.get("/api/workflows").json()
    assert [w["id"] for w in listed] == [workflow_id]
    assert listed[0]["counts"]["succeeded"] == 3

    ended = http.post(f"/api/workflows/{workflow_id}/cancel")
    assert ended.status_code == 409 and "succeeded" in ended.json()["error"]


def test_bad_workflows_over_http_are_4xx_and_store_nothing(
    http: httpx.Client, r: redis.Redis
) -> None:
    cycle = {
        "nodes": [
            {"task": "echo", "args": [1], "job_id": "a", "depends_on": ["b"]},
            {"task": "echo", "args": [1], "job_id": "b", "depends_on": ["a"]},
        ]
    }
    refused = http.post("/api/workflows", json=cycle)
    assert refused.status_code == 422 and "cycle" in refused.json()["error"]
    unknown = http.post(
        "/api/workflows", json={"nodes": [{"task": "echo", "args": [1], "depends_on": ["x"]}]}
    )
    assert unknown.status_code == 422 and "depends on x" in unknown.json()["error"]
    empty = http.post("/api/workflows", json={"nodes": []})
    assert empty.status_code == 422
    not_a_task = http.post("/api/workflows", json={"nodes": [{"task": "nope"}]})
    assert not_a_task.status_code == 422 and "nope" in not_a_task.json()["error"]
    assert not [k for k in r.keys("rw:{default}:*") if b":wf:" in k or b":job:" in k]
    assert http.get("/api/workflows/none").status_code == 404


def _wait_workflow(http: httpx.Client, workflow_id: str) -> dict:  # type: ignore[type-arg]
    """Follow the event stream until the workflow's final event; then its view."""
    with http.stream("GET", "/api/events") as stream:
        view = http.get(f"/api/workflows/{workflow_id}").json()
        if view["status"] in ("succeeded", "failed", "cancelled"):
            return view  # type: ignore[no-any-return]
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = orjson.loads(line[6:])
                if (
                    event.get("event", "").startswith("workflow_")
                    and workflow_id in event.get("jobs", [])
                    and event["event"] != "workflow_running"
                ):
                    break
    return http.get(f"/api/workflows/{workflow_id}").json()  # type: ignore[no-any-return]


def test_resubmitting_a_workflow_over_http_answers_its_stored_jobs(http: httpx.Client) -> None:
    body = {"workflow_id": "wf1", "nodes": [{"task": "echo", "args": [1]}, {"task": "echo"}]}
    body["nodes"][1]["args"] = [2]
    first = http.post("/api/workflows", json=body)
    again = http.post("/api/workflows", json=body)
    assert first.status_code == 201 and first.json()["duplicate"] is False
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["nodes"] == first.json()["nodes"]
    job = http.get(f"/api/jobs/{first.json()['nodes'][0]}").json()
    assert job["workflow"] == "wf1"


def test_pass_results_without_fitting_dependencies_is_refused(http: httpx.Client) -> None:
    alone = http.post("/api/workflows", json={"nodes": [{"task": "echo", "pass_results": "one"}]})
    assert alone.status_code == 422 and "needs dependencies" in alone.json()["error"]
    two = {
        "nodes": [
            {"task": "echo", "args": [1], "job_id": "a"},
            {"task": "echo", "args": [2], "job_id": "b"},
            {"task": "echo", "depends_on": ["a", "b"], "pass_results": "one"},
        ]
    }
    refused = http.post("/api/workflows", json=two)
    assert refused.status_code == 422 and "there are 2" in refused.json()["error"]
