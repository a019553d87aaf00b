"""The HTTP API against a real `redwork serve` process, a real server and real workers."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable

import httpx
import pytest
import redis
from fastapi import WebSocket, WebSocketDisconnect
from fastapi.testclient import TestClient

from redwork import Redwork
from redwork.api import create_api
from redwork.cli import SERVE_SHUTDOWN_GRACE
from tests.conftest import ApiProcess, WorkerProcess, wait_for_event


@pytest.fixture
def http(api: ApiProcess) -> httpx.Client:
    with httpx.Client(base_url=api.url, timeout=30) as client:
        yield client  # type: ignore[misc]


def wait_done(http: httpx.Client, job_id: str) -> dict:  # type: ignore[type-arg]
    """Follow the job's SSE stream until it ends; its last message."""
    last: dict = {}  # type: ignore[type-arg]
    with http.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                import orjson

                last = orjson.loads(line[6:])
    return last


@pytest.mark.cluster
def test_submit_runs_and_reports_a_job(
    http: httpx.Client, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    created = http.post("/api/jobs", json={"task": "add", "args": [2, 3]})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert created.json() == {"id": job_id, "queue": "default", "duplicate": False}
    assert http.get(f"/api/jobs/{job_id}").json()["state"] == "waiting"
    spawn_worker()
    final = wait_done(http, job_id)
    assert (final["state"], final["job"]["result"]) == ("completed", 5)
    job = http.get(f"/api/jobs/{job_id}", params={"queue": "default"}).json()
    assert job["state"] == "completed" and job["result"] == 5 and job["attempt"] == 1
    assert job["enqueued_at"] <= job["started_at"] <= job["finished_at"]
    timeline = http.get(f"/api/jobs/{job_id}/timeline").json()
    assert [e["event"] for e in timeline] == ["enqueued", "active", "completed"]


def test_batch_submit_and_idempotency_key_header(http: httpx.Client) -> None:
    batch = http.post(
        "/api/jobs/batch",
        json={"jobs": [{"task": "add", "args": [i, i], "queue": "batchq"} for i in range(5)]},
    )
    assert batch.status_code == 201
    assert [j["queue"] for j in batch.json()["jobs"]] == ["batchq"] * 5
    queues = {q["name"]: q for q in http.get("/api/queues").json()}
    assert queues["batchq"]["waiting"] == 5
    first = http.post(
        "/api/jobs", json={"task": "add", "args": [1, 1]}, headers={"Idempotency-Key": "evt-9"}
    )
    again = http.post(
        "/api/jobs", json={"task": "add", "args": [1, 1]}, headers={"Idempotency-Key": "evt-9"}
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == {"id": first.json()["id"], "queue": "default", "duplicate": True}
    bad = http.post(
        "/api/jobs/batch", json={"jobs": [{"task": "add", "args": [1, 1]}, {"task": "nope"}]}
    )
    assert bad.status_code == 422 and "nope" in bad.json()["error"]
    assert {q["name"]: q for q in http.get("/api/queues").json()}["default"]["waiting"] == 1


def test_cancel_a_queued_job_and_not_a_finished_one(
    http: httpx.Client, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    job_id = http.post("/api/jobs", json={"task": "add", "args": [1, 1]}).json()["id"]
    cancelled = http.post(f"/api/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = http.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["error"]
    spawn_worker()
    done_id = http.post("/api/jobs", json={"task": "add", "args": [1, 1]}).json()["id"]
    wait_done(http, done_id)
    assert http.post(f"/api/jobs/{done_id}/cancel").status_code == 409


@pytest.mark.cluster
def test_failed_jobs_are_listed_retried_and_purged(
    http: httpx.Client, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    spawn_worker()
    ids = [
        http.post("/api/jobs", json={"task": "boom", "args": [f"no {i}"]}).json()["id"]
        for i in range(3)
    ]
    for job_id in ids:
        assert wait_done(http, job_id)["state"] == "failed"
    page = http.get("/api/queues/default/failed", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["jobs"]) == 2
    assert page["jobs"][0]["reason"] == "exception" and "ValueError" in page["jobs"][0]["error"]
    retried = http.post("/api/queues/default/failed/retry", json={"ids": [ids[0]]})
    assert retried.json() == {"count": 1}
    wait_for_event(r, "default", "requeued", ids[0])
    assert wait_done(http, ids[0])["state"] == "failed"  # boom fails again
    purged = http.post("/api/queues/default/failed/purge", json={"all": True})
    assert purged.json() == {"count": 3}
    assert http.get(f"/api/jobs/{ids[1]}").status_code == 404
    neither = http.post("/api/queues/default/failed/purge", json={})
    assert neither.status_code == 422 and "ids or all" in neither.json()["error"]


@pytest.mark.cluster
def test_workers_are_listed(
    http: httpx.Client, r: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    pubsub = r.pubsub()
    pubsub.subscribe("rw:workers")
    worker = spawn_worker("--concurrency", "7")
    while (message := pubsub.get_message(timeout=30)) is None or message["type"] != "message":
        assert message is not None or worker.proc.poll() is None
    pubsub.close()
    listed = http.get("/api/workers").json()
    assert [(w["pid"], w["concurrency"], w["queues"]) for w in listed] == [
        (worker.pid, 7, ["default"])
    ]


def test_bad_requests_get_4xx_with_a_message(http: httpx.Client) -> None:
    answers = {
        "malformed id": http.get("/api/jobs/not a valid id!"),
        "unknown id": http.get("/api/jobs/abc123"),
        "unknown task": http.post("/api/jobs", json={"task": "no.such.task"}),
        "arguments": http.post("/api/jobs", json={"task": "add", "args": [1, 2, 3]}),
        "not json": http.post(
            "/api/jobs", content=b"{nope", headers={"Content-Type": "application/json"}
        ),
        "wrong type": http.post("/api/jobs", json={"task": "add", "args": "1,2"}),
        "bad queue": http.post("/api/jobs", json={"task": "add", "args": [1, 2], "queue": "a b"}),
        "not JSON args": http.post(
            "/api/jobs", json={"task": "add", "args": [1, 2], "timeout": -1}
        ),
        "bad etag": http.post("/v1.0/state/s", json=[{"key": "k", "value": 1, "etag": "x"}]),
    }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "malformed id": 422,
        "unknown id": 404,
        "unknown task": 422,
        "arguments": 422,
        "not json": 422,
        "wrong type": 422,
        "bad queue": 422,
        "not JSON args": 422,
        "bad etag": 422,
    }
    for name, answer in answers.items():
        assert answer.json()["error"], name
    assert "malformed" in answers["malformed id"].json()["error"]
    assert "no job abc123" in answers["unknown id"].json()["error"]


def test_a_body_over_the_limit_is_413(spawn_api: Callable[..., ApiProcess]) -> None:
    api = spawn_api(api_max_body=1000)
    with httpx.Client(base_url=api.url) as http:
        big = http.post("/api/jobs", json={"task": "add", "args": ["x" * 2000, 1]})
        assert big.status_code == 413 and "1000 bytes" in big.json()["error"]

        def chunks() -> object:
            yield b'{"task": "add", "args": ["'
            yield b"x" * 2000
            yield b'", 1]}'

        streamed = http.post(
            "/api/jobs", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413  # no Content-Length: counted as it arrives


def test_a_token_guards_the_api_and_the_dashboard(spawn_api: Callable[..., ApiProcess]) -> None:
    api = spawn_api(api_token="s3cret")
    with httpx.Client(base_url=api.url) as http:
        assert http.post("/api/jobs", json={"task": "add", "args": [1, 1]}).status_code == 401
        assert http.get("/api/queues").status_code == 401
        assert http.get("/metrics").status_code == 401
        assert http.get("/").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert http.get("/api/queues", headers=wrong).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert (
            http.post("/api/jobs", json={"task": "add", "args": [1, 1]}, headers=good).status_code
            == 201
        )
        assert http.get("/healthz").status_code == 200
        login = http.post("/login", data={"token": "s3cret"})
        assert login.status_code == 303 and "redwork_token" in login.headers["set-cookie"]
        assert http.get("/").status_code == 200  # the cookie now
        assert http.get("/api/queues").status_code == 200


def test_cors_is_off_by_default_and_configurable(
    spawn_api: Callable[..., ApiProcess], api: ApiProcess
) -> None:
    preflight = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}
    with httpx.Client(base_url=api.url) as http:
        answer = http.options("/api/jobs", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
    allowed = spawn_api(api_cors_origins=("http://example.test",))
    with httpx.Client(base_url=allowed.url) as http:
        answer = http.options("/api/jobs", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "http://example.test"


def test_dapr_state_api_as_seed_000_uses_it(http: httpx.Client, r: redis.Redis) -> None:
    saved = http.post(
        "/v1.0/state/redis-state",
        json=[{"key": "m-1", "value": {"id": "m-1", "message": "hello!"}}],
    )
    assert saved.status_code == 204
    assert r.hgetall("tests||m-1") == {
        b"data": b'{"id":"m-1","message":"hello!"}',
        b"version": b"1",
    }
    got = http.get("/v1.0/state/redis-state/m-1")
    assert got.json() == {"id": "m-1", "message": "hello!"} and got.headers["etag"] == "1"
    stale = http.post("/v1.0/state/redis-state", json=[{"key": "m-1", "value": {}, "etag": "0"}])
    assert stale.status_code == 409
    bulk = http.post("/v1.0/state/redis-state/bulk", json={"keys": ["m-1", "m-2"]}).json()
    assert bulk == [
        {"key": "m-1", "data": {"id": "m-1", "message": "hello!"}, "etag": "1"},
        {"key": "m-2"},
    ]
    assert http.delete("/v1.0/state/redis-state/m-1", headers={"If-Match": "7"}).status_code == 409
    assert http.delete("/v1.0/state/redis-state/m-1", headers={"If-Match": "1"}).status_code == 204
    assert http.get("/v1.0/state/redis-state/m-1").status_code == 204


def test_metrics_in_prometheus_format(
    http: httpx.Client, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    spawn_worker()
    job_id = http.post("/api/jobs", json={"task": "sleep", "args": [0.01]}).json()["id"]
    wait_done(http, job_id)
    text = http.get("/metrics").text
    for state in ("waiting", "held", "limited", "active", "delayed", "failed"):
        assert f'redwork_queue_jobs{{queue="default",state="{state}"}} 0.0' in text
    assert 'redwork_queue_events_total{event="completed",queue="default"} 1.0' in text
    assert "redwork_workers 1.0" in text
    assert 'redwork_job_duration_seconds_count{outcome="completed",queue="default"} 1.0' in text


def test_openapi_schema_and_docs_are_served(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    for path in ("/api/jobs", "/api/jobs/{job_id}", "/api/queues", "/api/workers", "/api/events"):
        assert path in schema["paths"], path
    assert http.get("/docs").status_code == 200


def test_routes_an_app_adds_need_the_token_too(app: Redwork) -> None:
    api = create_api(app, app.settings.replace(api_token="s3cret"))

    @api.get("/mine")
    async def mine() -> dict[str, bool]:
        return {"ok": True}

    @api.websocket("/mine/live")
    async def mine_live(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    good = {"Authorization": "Bearer s3cret"}
    with TestClient(api) as http:
        assert http.get("/mine").status_code == 401
        assert http.get("/mine", headers=good).json() == {"ok": True}
        assert http.get("/healthz").status_code == 200
        with pytest.raises(WebSocketDisconnect) as refused, http.websocket_connect("/mine/live"):
            pass
        assert refused.value.code == 4401
        with http.websocket_connect("/mine/live", headers=good) as live:
            assert live.receive_text() == "hello"


def test_serve_stops_on_sigterm_while_a_dashboard_stream_is_open(
    spawn_api: Callable[..., ApiProcess],
) -> None:
    api = spawn_api()
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as feed:
        feed.sendall(b"GET /api/stats/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert b"event: stats" in feed.recv(65536) + feed.recv(65536)  # the stream is open
        api.proc.terminate()
        # uvicorn re-raises the SIGTERM once it has shut down: the status says so.
        assert api.proc.wait(SERVE_SHUTDOWN_GRACE + 15) == -signal.SIGTERM
