"""The shapes of a deployment: connection URLs, Sentinel and Cluster sets (started from
the embedded binary on loopback ports), failover while jobs flow, and durable
acknowledgement."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redwork import JobFailed, Redwork, Settings
from redwork.connection import parse_target
from redwork.errors import ConfigurationError, NotDurable
from redwork.job import JobState
from redwork.queue import Queue
from redwork.server import LocalCluster, LocalSentinel, ServerProcess
from tests import tasks
from tests.conftest import TEST_SETTINGS, WorkerProcess

# -- URLs (pure parsing) -------------------------------------------------------------


def test_plain_urls_are_one_server() -> None:
    for url in ("redis://h:1/0", "rediss://u:p@h:2/3", "unix:///tmp/v.sock?db=1"):
        target = parse_target(url)
        assert (target.shape, target.url) == ("server", url)


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    target = parse_target(
        "rediss+sentinel://app:pw@10.0.0.1:26379,[::1]:26380/orders/2"
        "?ssl_ca_certs=/ca.pem&sentinel_password=sp"
    )
    assert target.shape == "sentinel"
    assert target.nodes == (("10.0.0.1", 26379), ("::1", 26380))
    assert target.service == "orders"
    assert target.sentinel_auth == (("sentinel_password", "sp"),)
    assert target.url == "rediss://app:pw@10.0.0.1:26379/2?ssl_ca_certs=%2Fca.pem"
    options = target.options()
    assert (options["username"], options["password"], options["db"]) == ("app", "pw", 2)
    assert options["ssl"] is True and options["ssl_ca_certs"] == "/ca.pem"


def test_a_cluster_url_names_its_seed_nodes() -> None:
    target = parse_target("redis+cluster://u:p@a:7000,b:7001")
    assert (target.shape, target.nodes) == ("cluster", (("a", 7000), ("b", 7001)))
    options = target.options()
    assert "db" not in options and "ssl" not in options
    assert (options["username"], options["password"]) == ("u", "p")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:6379", "no scheme"),
        ("http://h:1", "is not one of"),
        ("redis+cluster://h:1/0", "no database number"),
        ("redis+sentinel://h:1", "names the service"),
        ("redis+sentinel://u:secret@h/s", "is not host:port"),
        ("redis+cluster://", "names no host"),
    ],
)
def test_a_bad_url_is_refused_naming_the_problem_but_never_the_password(
    url: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as refused:
        parse_target(url)
    assert "secret" not in str(refused.value)


# -- Sentinel ------------------------------------------------------------------------


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[LocalSentinel]:
    """A primary, a replica and three sentinels; per test, as a failover changes it."""
    with LocalSentinel(tmp_path / "sentinel", fsync="always") as nodes:
        yield nodes


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of its own (3 primaries, a replica each), as a failover changes it."""
    with LocalCluster(tmp_path / "cluster", fsync="always") as nodes:
        yield nodes


def configure(url: str, **overrides: Any) -> Settings:
    settings = Settings.load(env={}, redis_url=url, **{**TEST_SETTINGS, **overrides})
    tasks.app.configure(settings)
    return settings


def run_through_failover(
    settings: Settings, old: ServerProcess, promoted: Callable[[], None], jobs: int = 120
) -> None:
    """Two worker processes run jobs from a producer that enqueues one at a time; the
    primary `old` is SIGKILLed after a third of them, and once `promoted` returns (a
    replica took over) it is started again, to come back as a replica (so that durable
    acknowledgement can be met again). Every acknowledged job must end completed with its
    result, and the workers must carry on by themselves."""

    def rejoin() -> None:
        promoted()
        old.start()

    workers = [WorkerProcess(settings, [], processes=1, reconnect_for=120.0) for _ in range(2)]
    handles = []
    try:
        for index in range(jobs):
            if index == jobs // 3:
                old.sigkill()
                threading.Thread(target=rejoin, daemon=True).start()
            handles.append(tasks.add.enqueue(index, 1))  # acknowledged once it returns
        for index, handle in enumerate(handles):
            assert handle.result(timeout=60) == index + 1
            assert handle.status() is JobState.COMPLETED
        assert all(w.proc.poll() is None for w in workers), "a worker died in the failover"
    finally:
        for worker in workers:
            worker.kill(signal.SIGTERM)
        for worker in workers:
            worker.wait()


def test_a_sentinel_url_finds_the_primary_and_runs_jobs(sentinel_set: LocalSentinel) -> None:
    configure(sentinel_set.url)
    worker = WorkerProcess(tasks.app.settings, [], processes=1)
    try:
        assert tasks.add.enqueue(2, 3).result(timeout=20) == 5
        with pytest.raises(JobFailed):
            tasks.boom.options(retries=0).enqueue().result(timeout=20)
    finally:
        worker.kill(signal.SIGTERM)
        worker.wait()
        tasks.app.client.close()


def test_sentinel_failover_with_durable_acks_loses_no_acknowledged_job(
    sentinel_set: LocalSentinel,
) -> None:
    settings = configure(sentinel_set.url, ack_replicas=1, reconnect_for=60.0)
    old = sentinel_set.primary()

    announcer = redis.Redis(port=sentinel_set.sentinels[0].port)
    switches = announcer.pubsub(ignore_subscribe_messages=True)
    switches.subscribe("+switch-master")

    def promoted() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and switches.get_message(timeout=1) is None:
            pass

    try:
        run_through_failover(settings, old, promoted)
        assert sentinel_set.primary() is not old
    finally:
        switches.close()
        announcer.close()
        tasks.app.client.close()


# -- Cluster -------------------------------------------------------------------------


def test_cluster_failover_with_durable_acks_loses_no_acknowledged_job(
    fresh_cluster: LocalCluster,
) -> None:
    settings = configure(fresh_cluster.url, ack_replicas=1, reconnect_for=60.0)
    queue_key = Queue("default").wait
    old = fresh_cluster.primary_of(queue_key)

    def promoted() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # nodes still voting
                if fresh_cluster.primary_of(queue_key) is not old:
                    return
            time.sleep(0.1)  # cluster state changes by gossip, with no event

    try:
        run_through_failover(settings, old, promoted)
        assert fresh_cluster.primary_of(queue_key) is not old
    finally:
        tasks.app.client.close()


@pytest.mark.cluster
def test_a_staged_write_outside_the_queues_slot_fails_the_job_naming_the_fix(
    app: Redwork, shape: str, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    spawn_worker()
    handle = tasks.stage_in_store.enqueue("untagged", "k")
    if shape == "server":
        assert handle.result(timeout=20) == "staged"
        return
    with pytest.raises(JobFailed, match=r"another Redis Cluster slot .* key_prefix='\{default\}'"):
        handle.result(timeout=20)
    # The worker goes on.
    assert tasks.stage_in_store.enqueue(tasks.STATE_PREFIX, "k").result(timeout=20) == "staged"


# -- durable acknowledgement on one server -----------------------------------------


def test_fsynced_acks_work_on_one_server_and_missing_replicas_raise_not_durable(
    server: ServerProcess, redis_url: str
) -> None:
    settings = configure(redis_url, ack_fsync=True)
    worker = WorkerProcess(settings, [], processes=1)
    try:
        assert tasks.add.enqueue(1, 2).result(timeout=20) == 3
    finally:
        worker.kill(signal.SIGTERM)
        worker.wait()
        tasks.app.client.close()
    configure(redis_url, ack_replicas=1, ack_timeout=0.05, reconnect_for=0.3)
    with pytest.raises(NotDurable, match="0 of 1 replicas"):
        tasks.add.enqueue(1, 2)
    # Stored all the same: a retry with the same id would add nothing.
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(Queue("default").wait) == 1
    finally:
        client.close()
        tasks.app.client.close()
