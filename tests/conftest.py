"""Fixtures: one real Valkey server per test session (the embedded binary on a free
loopback port), a clean database per test, apps and worker processes bound to it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from redwork import Redwork, Settings, Worker
from redwork.queue import Queue
from redwork.server import LocalCluster, ServerProcess, wait_listening

ROOT = Path(__file__).resolve().parent.parent
# Short leases and waits keep fault tests fast; every wait in them is an event.
DAY_MS = 86_400_000
"""Idempotency window for scripts called directly."""
TEST_SETTINGS = {"lease": 1.0, "block_timeout": 0.5, "grace": 2.0, "concurrency": 10}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("valkey"), fsync="always") as proc:
        yield proc


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Valkey Cluster of 3 primaries with a replica each, started on first use."""
    with LocalCluster(tmp_path_factory.mktemp("cluster"), fsync="always") as nodes:
        yield nodes


@pytest.fixture
def shape() -> str:
    """Where a test's server runs: `server`; a test marked `cluster` runs once on the
    server and once on the cluster (see pytest_generate_tests)."""
    return "server"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("cluster") and "shape" in metafunc.fixturenames:
        metafunc.parametrize("shape", ["server", "cluster"])


@pytest.fixture
def redis_url(shape: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if shape == "cluster":
        nodes: LocalCluster = request.getfixturevalue("cluster")
        nodes.flush()
        yield nodes.url
        return
    server: ServerProcess = request.getfixturevalue("server")
    if not server.running:
        server.restart()
    client = redis.Redis.from_url(server.url)
    client.flushall()
    client.close()
    yield server.url


@pytest.fixture
def r(redis_url: str, shape: str, request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A plain client of the test's server (on a cluster, one that routes each command
    to the node serving its keys). No socket timeout: redis-py's default (5 s) would cut
    short the longer blocking waits tests ask for (XREAD, BLPOP)."""
    if shape == "cluster":
        seed = request.getfixturevalue("cluster").nodes[0].port
        client: Any = redis.cluster.RedisCluster(host="127.0.0.1", port=seed, socket_timeout=None)
    else:
        client = redis.Redis.from_url(redis_url, socket_timeout=None)
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings.load(env={}, redis_url=redis_url, **TEST_SETTINGS)


@pytest.fixture
def app(settings: Settings) -> Redwork:
    from tests import tasks

    tasks.app.configure(settings)
    return tasks.app


@pytest.fixture
async def worker(app: Redwork) -> AsyncIterator[Worker]:
    """A worker running in the test's event loop."""
    running = Worker(app)
    task = asyncio.create_task(running.run())
    yield running
    stopped = await stop_worker(running, task)
    await app.client.aclose()
    assert stopped, "Worker.run() did not return after stop()"


async def stop_worker(
    worker: Worker, task: asyncio.Task[None], timeout: float = 3.0, *, hard: bool = True
) -> bool:
    """Stop a worker running in this loop as `task`: stop() twice (hand back at once), or
    once if not `hard` (let running jobs finish within the grace period). Returns whether
    run() returned by itself within `timeout`; if not, its task is cancelled until it ends
    (never asyncio.wait_for(task): on a timeout that waits for the cancelled task)."""
    worker.stop()
    if hard:
        worker.stop()
    await asyncio.wait({task}, timeout=timeout)
    if task.done():
        task.result()
        return True
    logging.getLogger("tests").error("worker %s ignored stop(); cancelling it", worker.id)
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    return False


def worker_env(settings: Settings, **overrides: Any) -> dict[str, str]:
    from redwork.settings import to_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("REDWORK_")}
    env.update(to_env(settings.replace(**overrides)))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


class WorkerProcess:
    """`python -m redwork worker tests.tasks:app` as a real child process."""

    def __init__(self, settings: Settings, extra_args: list[str], **overrides: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "redwork", "worker", "tests.tasks:app", *extra_args],
            env=worker_env(settings, **overrides),
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def spawn_worker(settings: Settings) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def spawn(*extra_args: str, **overrides: Any) -> WorkerProcess:
        overrides.setdefault("processes", 1)
        proc = WorkerProcess(settings, list(extra_args), **overrides)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.proc.poll() is None:
            proc.kill(signal.SIGCONT)
            proc.kill(signal.SIGKILL)
            proc.wait()


def blocked_fetchers(r: redis.Redis) -> int:
    """Connections blocked in a worker's wait for work (BZPOPMIN on a marker), on every
    node of a cluster."""
    if isinstance(r, redis.cluster.RedisCluster):
        lists = r.client_list(target_nodes=redis.cluster.RedisCluster.PRIMARIES).values()
        clients = [c for node in lists for c in node]
    else:
        clients = r.client_list()
    return sum(1 for c in clients if c.get("cmd") == "bzpopmin" and "b" in c.get("flags", ""))


def until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll `condition` (a cheap server read) until it holds; TimeoutError past `timeout`.
    For states no event announces; prefer wait_for_event where one does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout}s")
        time.sleep(0.01)


def job_events(raw: dict[bytes, bytes]) -> list[dict[str, str]]:
    """One stream entry (an event of a script call, naming every job it concerned) as
    one dict per job: event, job, attempt, at."""
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    jobs, attempts = fields["jobs"].split(","), fields["attempts"].split(",")
    return [
        {"event": fields["event"], "job": job, "attempt": attempt, "at": fields["at"]}
        for job, attempt in zip(jobs, attempts, strict=True)
    ]


def wait_for_event(
    client: redis.Redis,
    queue: str,
    event: str,
    job_id: str | None = None,
    timeout: float = 15.0,
    after: str = "0",
) -> dict[str, str]:
    """Block (XREAD on the queue's event stream, so nothing is missed) until an event
    of that kind, for that job if given, has been recorded; returns it (event, job,
    attempt, at)."""
    stream = Queue(queue).events
    deadline = time.monotonic() + timeout
    last = after
    while (remaining := deadline - time.monotonic()) > 0:
        reply = client.xread({stream: last}, block=max(1, int(remaining * 1000)), count=100)
        for _, entries in reply or []:
            for entry_id, raw in entries:
                last = entry_id
                for job in job_events(raw):
                    if job["event"] == event and job_id in (None, job["job"]):
                        return job
    raise TimeoutError(f"no {event} event for {job_id or 'any job'} in {queue} in {timeout}s")


def count_events(client: redis.Redis, queue: str, event: str) -> int:
    """How many jobs had an event of that kind (the stream batches them per call)."""
    entries = client.xrange(Queue(queue).events, "-", "+")
    return sum(1 for _, raw in entries for job in job_events(raw) if job["event"] == event)


def valkey_servers_under(root: Path) -> list[int]:
    """Pids of live valkey-server processes whose working directory is under root."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "valkey-server":
                continue
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd.is_relative_to(root.resolve()):
            pids.append(int(entry.name))
    return pids


class ApiProcess:
    """`python -m redwork serve tests.tasks:app` on a free loopback port."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        from redwork.server import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "redwork", "serve", "tests.tasks:app", "--port", str(self.port)],
            env=worker_env(settings, **overrides),
            cwd=ROOT,
        )
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        # Uvicorn listens only once the app's start-up (the hub's subscription) is done.
        wait_listening(self.port, self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def spawn_api(settings: Settings) -> Iterator[Callable[..., ApiProcess]]:
    started: list[ApiProcess] = []

    def spawn(**overrides: Any) -> ApiProcess:
        api = ApiProcess(settings, **overrides)
        started.append(api)
        return api

    yield spawn
    for api in started:
        api.stop()


@pytest.fixture
def api(spawn_api: Callable[..., ApiProcess]) -> ApiProcess:
    return spawn_api()
