"""Live updates over WebSocket and Server-Sent Events, from a real `redwork serve`."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import redis
import websockets

from redwork import Redwork
from tests import tasks
from tests.conftest import ApiProcess, WorkerProcess


def ws_url(api: ApiProcess, path: str) -> str:
    return api.url.replace("http://", "ws://") + path


async def ws_messages(api: ApiProcess, path: str) -> list[dict[str, Any]]:
    """Every message until the server closes the socket."""
    messages = []
    async with websockets.connect(ws_url(api, path)) as socket:
        async for raw in socket:
            messages.append(orjson.loads(raw))
    return messages


def states(messages: list[dict[str, Any]]) -> list[str]:
    return [m["state"] for m in messages if m["type"] == "job"]


@pytest.mark.cluster
async def test_a_job_is_followed_over_websocket_from_queued_to_done(
    app: Redwork, api: ApiProcess, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    handle = tasks.sleep.enqueue(0.05)
    async with websockets.connect(ws_url(api, f"/api/jobs/{handle.id}/ws")) as socket:
        snapshot = orjson.loads(await socket.recv())
        assert (snapshot["event"], snapshot["state"]) == ("snapshot", "waiting")
        spawn_worker()
        rest = [orjson.loads(raw) async for raw in socket]
    assert states(rest) == ["active", "completed"]
    assert rest[-1]["job"]["result"] == handle.result(timeout=5)
    await app.client.aclose()


def test_a_job_is_followed_over_sse_in_order(
    app: Redwork, api: ApiProcess, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    handle = tasks.add.enqueue(20, 22)
    seen: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=api.url, timeout=30) as http,
        http.stream("GET", f"/api/jobs/{handle.id}/events") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                seen.append(orjson.loads(line[6:]))
                if len(seen) == 1:
                    spawn_worker()  # only once the snapshot is in
    assert states(seen) == ["waiting", "active", "completed"]
    assert seen[-1]["job"]["result"] == 42


async def test_a_late_subscriber_gets_the_final_state_at_once(
    app: Redwork, api: ApiProcess, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    spawn_worker()
    handle = tasks.add.enqueue(1, 1)
    handle.result(timeout=30)
    messages = await ws_messages(api, f"/api/jobs/{handle.id}/ws")
    assert [(m["event"], m["state"]) for m in messages] == [("snapshot", "completed")]
    assert messages[0]["job"]["result"] == 2
    with httpx.Client(base_url=api.url) as http:
        sse = http.get(f"/api/jobs/{handle.id}/events").text
    assert sse.count("data: ") == 1 and '"state":"completed"' in sse
    await app.client.aclose()


@pytest.mark.cluster
async def test_a_set_of_jobs_and_the_firehose(
    app: Redwork, api: ApiProcess, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    handles = [tasks.add.enqueue(i, i) for i in range(3)]
    ids = ",".join(h.id for h in handles)
    async with (
        websockets.connect(ws_url(api, f"/api/ws?jobs={ids}")) as some,
        websockets.connect(ws_url(api, "/api/ws")) as everything,
    ):
        snapshots = [orjson.loads(await some.recv()) for _ in handles]
        assert {m["id"] for m in snapshots} == {h.id for h in handles}
        spawn_worker()
        completed: set[str] = set()
        while completed != {h.id for h in handles}:
            message = orjson.loads(await asyncio.wait_for(some.recv(), 30))
            if message["state"] == "completed":
                completed.add(message["id"])
        firehose_jobs: set[str] = set()
        while not {h.id for h in handles} <= firehose_jobs:
            message = orjson.loads(await asyncio.wait_for(everything.recv(), 30))
            if message["type"] == "event" and message["event"] == "completed":
                firehose_jobs.update(message["jobs"])
    await app.client.aclose()


async def test_200_subscribers_on_one_process_all_get_every_update_over_one_subscription(
    app: Redwork, r: redis.Redis, api: ApiProcess, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    handle = tasks.sleep.enqueue(0.05)

    async def follow(ready: asyncio.Event, count: list[int]) -> list[str]:
        async with websockets.connect(ws_url(api, f"/api/jobs/{handle.id}/ws")) as socket:
            first = orjson.loads(await socket.recv())
            count[0] += 1
            if count[0] == 200:
                ready.set()
            rest = [orjson.loads(raw) async for raw in socket]
            return states([first, *rest])

    ready, count = asyncio.Event(), [0]
    followers = [asyncio.create_task(follow(ready, count)) for _ in range(200)]
    await asyncio.wait_for(ready.wait(), 60)
    # The API process holds one pattern subscription, however many clients it serves.
    pattern_subscribers = [c for c in r.client_list() if int(c.get("psub", 0)) > 0]
    assert len(pattern_subscribers) == 1
    spawn_worker()
    results = await asyncio.wait_for(asyncio.gather(*followers), 60)
    assert all(seen == ["waiting", "active", "completed"] for seen in results), results[:3]
    await app.client.aclose()


async def test_idle_streams_get_keep_alive_pings(
    app: Redwork, spawn_api: Callable[..., ApiProcess]
) -> None:
    api = spawn_api(api_ping_interval=0.2)
    handle = tasks.add.enqueue(1, 1)  # no worker: it stays queued
    async with websockets.connect(ws_url(api, f"/api/jobs/{handle.id}/ws")) as socket:
        assert orjson.loads(await socket.recv())["type"] == "job"
        assert orjson.loads(await asyncio.wait_for(socket.recv(), 10)) == {"type": "ping"}
    async with (
        httpx.AsyncClient(base_url=api.url, timeout=10) as http,
        http.stream("GET", f"/api/jobs/{handle.id}/events") as stream,
    ):
        lines = stream.aiter_lines()
        while await anext(lines) != ": ping":
            pass
    await app.client.aclose()


def silent_websocket(api: ApiProcess, path: str) -> socket.socket:
    """A WebSocket client that opens the connection, then reads nothing (a small
    receive buffer, so that the server soon has to wait for it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", api.port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sock


async def test_a_slow_client_is_dropped_and_the_others_carry_on(
    app: Redwork, spawn_api: Callable[..., ApiProcess], spawn_worker: Callable[..., WorkerProcess]
) -> None:
    api = spawn_api(api_client_buffer=100)
    # 200 jobs with 50 kB arguments: their snapshots alone are 10 MB, more than socket
    # buffers hold, so the server's sending to a client that reads nothing is stuck.
    handles = app.enqueue_many(tasks.echo.prepare("x" * 50_000) for _ in range(200))
    light = tasks.add.enqueue(2, 2)
    slow = silent_websocket(api, "/api/ws?jobs=" + ",".join(h.id for h in handles))
    try:
        async with websockets.connect(ws_url(api, f"/api/jobs/{light.id}/ws")) as other:
            assert orjson.loads(await other.recv())["state"] == "waiting"
            spawn_worker()
            # 400 updates of the 200 jobs pile up for the stuck client; the other one gets
            # its job's updates all the same.
            others = [orjson.loads(raw) async for raw in other]
        assert states(others) == ["active", "completed"]
        for handle in handles:
            handle.result(timeout=60)
        # Now read what the stuck client was sent: the snapshots, then word that it was
        # dropped (the server closes it after that).
        slow.settimeout(30)
        received = bytearray()
        while b'"type":"dropped"' not in received:
            chunk = slow.recv(1 << 20)
            assert chunk, "closed without saying why"
            received += chunk
        assert b"too slow" in received
    finally:
        slow.close()
    await app.client.aclose()


async def test_unknown_or_malformed_jobs_are_refused(api: ApiProcess) -> None:
    for path, code in (("/api/jobs/nope/ws", 4404), ("/api/jobs/bad%20id/ws", 4422)):
        try:
            async with websockets.connect(ws_url(api, path)) as socket:
                await socket.recv()
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == code
        except websockets.InvalidStatus as refused:
            assert refused.response.status_code == 403, path  # closed before accepting
    async with httpx.AsyncClient(base_url=api.url) as http:
        assert (await http.get("/api/jobs/nope/events")).status_code == 404
        assert (await http.get("/api/events", params={"jobs": "a b"})).status_code == 422


async def test_progress_reaches_followers_in_order(
    app: Redwork, api: ApiProcess, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    handle = tasks.progress_steps.enqueue(5)
    async with websockets.connect(ws_url(api, f"/api/jobs/{handle.id}/ws")) as socket:
        assert orjson.loads(await socket.recv())["state"] == "waiting"
        spawn_worker()
        updates = [orjson.loads(raw) async for raw in socket]
    progress = [m["progress"]["done"] for m in updates if m["event"] == "progress"]
    assert progress == [1, 2, 3, 4, 5]
    assert updates[-1]["job"]["progress"] == {"done": 5, "of": 5}  # in the final record
    sync = tasks.sync_progress.enqueue(["half", 0.5])
    sync.result(timeout=30)
    async with httpx.AsyncClient(base_url=api.url) as http:
        job = (await http.get(f"/api/jobs/{sync.id}")).json()
    assert job["progress"] == ["half", 0.5]
    await app.client.aclose()


async def test_a_client_that_leaves_releases_its_subscription_at_once(
    app: Redwork, spawn_api: Callable[..., ApiProcess]
) -> None:
    api = spawn_api(api_ping_interval=60)  # no ping comes to notice the departure
    handle = tasks.add.enqueue(1, 1)  # no worker: no update comes either

    async def live_clients(http: httpx.AsyncClient) -> float:
        for line in (await http.get("/metrics")).text.splitlines():
            if line.startswith("redwork_live_clients "):
                return float(line.split()[1])
        raise AssertionError("no redwork_live_clients in /metrics")

    async with httpx.AsyncClient(base_url=api.url) as http:
        async with websockets.connect(ws_url(api, f"/api/jobs/{handle.id}/ws")) as socket:
            await socket.recv()
            assert await live_clients(http) == 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30  # half the ping interval
        while await live_clients(http) != 0:
            assert loop.time() < deadline, "the subscription outlived its client"
    api.proc.terminate()  # nothing holds the server up any more: it exits well within a ping
    # Uvicorn shuts down, then re-raises the signal it caught, as its exit status.
    assert await asyncio.to_thread(api.proc.wait, 30) == -signal.SIGTERM
    await app.client.aclose()
