"""Fault tests with real worker processes, real signals and a real server: SIGKILL,
SIGSTOP/SIGCONT, SIGTERM (once and twice), a server crash, bad input, and the
supervisor. Every wait is on an event (the queue's event stream, the workers' channel,
a process exit or a log line); the only polling is for another process's death, for
which there is no event, and for one counter (see the zombie test)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from redwork import JobState, Redwork, Settings
from redwork.client import Client
from redwork.job import Envelope, new_job_id
from redwork.queue import Queue
from redwork.registry import WORKERS_CHANNEL
from redwork.server import ServerProcess, free_port
from tests import tasks
from tests.conftest import (
    ROOT,
    WorkerProcess,
    count_events,
    job_events,
    wait_for_event,
    worker_env,
)

Q = "default"
QUEUE = Queue(Q)
SpawnWorker = Callable[..., WorkerProcess]


# -- helpers --------------------------------------------------------------------------


def pid_of(worker_id: str | bytes) -> int:
    """The pid inside a worker id (`host:pid:suffix`)."""
    text = worker_id.decode() if isinstance(worker_id, bytes) else worker_id
    return int(text.rsplit(":", 2)[1])


def job_worker_pid(client: redis.Redis, job_id: str) -> int:
    worker = client.hget(QUEUE.job_key(job_id), "worker")
    assert worker is not None, f"job {job_id} records no worker"
    return pid_of(worker)


def iter_events(
    client: redis.Redis, queue_name: str = Q, timeout: float = 30.0
) -> Iterator[dict[str, str]]:
    """Every job event (event, job, attempt, at) of the queue's stream from its start,
    blocking for new ones; TimeoutError once `timeout` has passed without the caller
    having stopped."""
    stream = Queue(queue_name).events
    deadline = time.monotonic() + timeout
    last = "0"
    while (remaining := deadline - time.monotonic()) > 0:
        reply = client.xread({stream: last}, block=max(1, int(remaining * 1000)), count=100)
        for _, entries in reply or []:
            for entry_id, raw in entries:
                last = entry_id
                yield from job_events(raw)
    raise TimeoutError(f"the events of {queue_name} did not show what was awaited in {timeout}s")


def events_of(client: redis.Redis, job_id: str, queue_name: str = Q) -> list[str]:
    entries = client.xrange(Queue(queue_name).events, "-", "+")
    return [e["event"] for _, raw in entries for e in job_events(raw) if e["job"] == job_id]


def process_state(pid: int) -> str | None:
    """The /proc state letter of pid, or None if it does not exist."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def gone(pid: int) -> bool:
    """Exited (a zombie, which an init that does not reap may leave, counts)."""
    return process_state(pid) in (None, "Z")


def children_of(parent: int) -> set[int]:
    """Live (non-zombie) processes whose parent is `parent`, from /proc/*/stat."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def catches(pid: int, sig: int) -> bool:
    """Whether pid has a handler for sig (SigCgt in /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def wait_gone(pids: set[int], timeout: float = 20.0) -> None:
    """Bounded wait for other processes' deaths: there is no event for that."""
    deadline = time.monotonic() + timeout
    while any(not gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            alive = sorted(pid for pid in pids if not gone(pid))
            raise AssertionError(f"processes {alive} still alive after {timeout}s")
        time.sleep(0.05)


def wait_started_task(client: redis.Redis, job_id: str, timeout: float = 20.0) -> int:
    """Block until the announce_sleep task of job_id runs; returns its attempt."""
    reply = client.blpop([f"test:started:{job_id}"], timeout=timeout)
    assert reply is not None, f"the task of job {job_id} did not start in {timeout}s"
    return int(reply[1])


class Announcements:
    """The workers' channel (rw:workers), subscribed before any worker starts so that no
    `started`/`stopped` message is missed."""

    def __init__(self, client: redis.Redis) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(WORKERS_CHANNEL)
        confirmation = self.pubsub.get_message(timeout=10)
        assert confirmation is not None and confirmation["type"] == "subscribe"

    def next(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.pubsub.get_message(timeout=remaining)
            if message is None or message["type"] != "message":
                continue
            data: dict[str, Any] = orjson.loads(message["data"])
            if data["event"] == event:
                return data
        raise TimeoutError(f"no worker {event} message in {timeout}s")

    def started(self, count: int, timeout: float = 30.0) -> dict[int, str]:
        """pid -> worker id of the next `count` workers to start."""
        found: dict[int, str] = {}
        while len(found) < count:
            data = self.next("started", timeout)
            found[int(data["pid"])] = data["id"]
        return found

    def stopped(self, worker_ids: set[str], timeout: float = 30.0) -> None:
        pending = set(worker_ids)
        while pending:
            pending.discard(self.next("stopped", timeout)["id"])

    def close(self) -> None:
        self.pubsub.close()


@pytest.fixture
def announcements(r: redis.Redis) -> Iterator[Announcements]:
    watch = Announcements(r)
    yield watch
    watch.close()


class LoggedWorker:
    """A worker process whose log (stderr) the test reads, to act on what it logged."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        overrides.setdefault("processes", 1)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "redwork", "worker", "tests.tasks:app"],
            env=worker_env(settings, log_level="INFO", **overrides),
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        assert self.proc.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            self.log.append(line)
            if text in line:
                return line
        raise TimeoutError(f"the worker did not log {text!r} in {timeout}s:\n{''.join(self.log)}")


@pytest.fixture
def logged_worker(settings: Settings) -> Iterator[Callable[..., LoggedWorker]]:
    started: list[LoggedWorker] = []

    def spawn(**overrides: Any) -> LoggedWorker:
        worker = LoggedWorker(settings, **overrides)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait()
        if worker.proc.stderr is not None:
            worker.proc.stderr.close()


def terminate(*workers: WorkerProcess) -> None:
    """SIGTERM and wait: a worker that stops cleanly exits 0."""
    for worker in workers:
        worker.kill(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(20) == 0


# -- worker crashes -------------------------------------------------------------------


@pytest.mark.cluster
def test_sigkilled_worker_loses_no_job_and_only_its_held_jobs_run_again(
    app: Redwork,
    r: redis.Redis,
    spawn_worker: SpawnWorker,
    announcements: Announcements,
    tmp_path: Path,
) -> None:
    victim = spawn_worker(concurrency=4)
    survivor = spawn_worker(concurrency=4)
    announcements.started(2)
    ledger = tasks.make_ledger(str(tmp_path / "ledger.db"))
    keys = [f"key-{i}" for i in range(40)]
    handles = app.enqueue_many(tasks.record.prepare(ledger, key, 0.2) for key in keys)
    key_of = {h.id: key for h, key in zip(handles, keys, strict=True)}

    # Kill the victim while both workers run jobs.
    busy: set[int] = set()
    for event in iter_events(r):
        if event["event"] == "active":
            busy.add(job_worker_pid(r, event["job"]))
            if {victim.pid, survivor.pid} <= busy:
                break
    victim.kill(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    # Its leases run for at least another 2/3 of a lease: nobody has taken them back yet.
    active = [i.decode() for i in r.zrange(QUEUE.active, 0, -1)]
    held = {job_id for job_id in active if job_worker_pid(r, job_id) == victim.pid}
    assert 1 <= len(held) <= 4

    results = {h.id: h.result(timeout=30) for h in handles}

    # Every held job was recovered (lease expiry, then a live worker's recovery check).
    for job_id in held:
        wait_for_event(r, Q, "recovered", job_id)
        assert pid_of(results[job_id]) == survivor.pid
    assert count_events(r, Q, "recovered") == len(held)
    # 0 lost, exactly one effect per key.
    effects = tasks.ledger_rows(ledger, "effects")
    assert sorted(key for key, _ in effects) == sorted(keys)
    # Extra attempts only for jobs the victim held.
    attempts = Counter(key for key, *_ in tasks.ledger_rows(ledger, "attempts"))
    repeated = {key for key, n in attempts.items() if n > 1}
    assert repeated <= {key_of[job_id] for job_id in held}
    assert max(attempts.values()) <= 2
    for h in handles:
        record = h.info()
        assert record.state is JobState.COMPLETED
        assert record.attempt == (2 if h.id in held else 1)
        assert record.losses == (1 if h.id in held else 0)
    terminate(survivor)


def test_stopped_worker_past_its_lease_is_fenced_and_the_takeover_result_stands(
    app: Redwork,
    r: redis.Redis,
    spawn_worker: SpawnWorker,
    announcements: Announcements,
) -> None:
    zombie = spawn_worker(concurrency=1)
    announcements.started(1)
    handle = tasks.announce_sleep.enqueue(0.5)
    assert wait_started_task(r, handle.id) == 1
    assert job_worker_pid(r, handle.id) == zombie.pid
    zombie.kill(signal.SIGSTOP)  # mid-job: its lease (1 s) is no longer renewed

    rescuer = spawn_worker(concurrency=1)
    wait_for_event(r, Q, "recovered", handle.id)
    assert wait_started_task(r, handle.id) == 2
    wait_for_event(r, Q, "completed", handle.id)
    rescuer_id = handle.result(timeout=10)
    assert pid_of(rescuer_id) == rescuer.pid
    assert r.hget(QUEUE.stats, "fenced") is None

    # Wake the zombie: its task has overslept and it reports a completion with a stale
    # token, which must be refused. No event marks a refusal, so poll the one counter.
    zombie.kill(signal.SIGCONT)
    deadline = time.monotonic() + 15
    while r.hget(QUEUE.stats, "fenced") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.hget(QUEUE.stats, "fenced") == b"1"

    record = handle.info()
    assert record.state is JobState.COMPLETED
    assert record.result_value() == rescuer_id
    assert record.worker == rescuer_id
    assert record.attempt == 2
    assert events_of(r, handle.id) == ["enqueued", "active", "recovered", "active", "completed"]
    terminate(zombie, rescuer)


# -- graceful shutdown ----------------------------------------------------------------


def test_sigterm_hands_unfinished_jobs_back_at_once_after_a_short_grace(
    app: Redwork, r: redis.Redis, spawn_worker: SpawnWorker
) -> None:
    # A 30 s lease: only a handback, not a lease expiry, can bring the jobs back now.
    worker = spawn_worker(concurrency=4, grace=0.5, lease=30.0)
    handles = [tasks.sleep.enqueue(30) for _ in range(4)]
    for h in handles:
        wait_for_event(r, Q, "active", h.id)

    worker.kill(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0

    for h in handles:
        wait_for_event(r, Q, "returned", h.id, timeout=1)
        record = h.info()
        assert record.state is JobState.WAITING
        assert record.attempt == 0
        assert record.worker is None
    assert r.llen(QUEUE.wait) == 4
    assert r.zcard(QUEUE.active) == 0
    assert count_events(r, Q, "recovered") == 0


def test_sigterm_lets_running_jobs_finish_within_a_long_enough_grace(
    app: Redwork, r: redis.Redis, spawn_worker: SpawnWorker
) -> None:
    worker = spawn_worker(concurrency=4, grace=20.0, lease=30.0)
    handles = [tasks.sleep.enqueue(0.5) for _ in range(4)]
    for h in handles:
        wait_for_event(r, Q, "active", h.id)

    worker.kill(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0

    for h in handles:
        record = h.info()
        assert record.state is JobState.COMPLETED
        assert pid_of(record.result_value()) == worker.pid
        assert record.attempt == 1
    assert count_events(r, Q, "returned") == 0
    assert r.llen(QUEUE.wait) == 0
    assert r.zcard(QUEUE.active) == 0


def test_second_sigterm_during_the_grace_period_hands_back_and_exits_now(
    app: Redwork,
    r: redis.Redis,
    logged_worker: Callable[..., LoggedWorker],
) -> None:
    worker = logged_worker(concurrency=4, grace=60.0, lease=30.0)
    handles = [tasks.sleep.enqueue(30) for _ in range(3)]
    for h in handles:
        wait_for_event(r, Q, "active", h.id)

    worker.proc.send_signal(signal.SIGTERM)
    # Signals of one kind do not queue: wait until the first was acted upon.
    worker.wait_for_log("stopping: no new jobs")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=10) == 0

    for h in handles:
        wait_for_event(r, Q, "returned", h.id, timeout=1)
        assert h.info().state is JobState.WAITING
        assert h.info().attempt == 0
    assert r.llen(QUEUE.wait) == 3


def test_sigterm_stops_a_worker_that_cannot_reach_the_server(
    settings: Settings, logged_worker: Callable[..., LoggedWorker]
) -> None:
    # At d0b0172 the worker retried connecting forever before it looked at stop requests.
    worker = logged_worker(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nobody there
    worker.wait_for_log("server unavailable")
    worker.proc.send_signal(signal.SIGTERM)  # one is enough: there is nothing to drain
    assert worker.proc.wait(timeout=8) == 0


def test_second_sigterm_exits_even_with_outcomes_the_server_cannot_take(
    settings: Settings, logged_worker: Callable[..., LoggedWorker], tmp_path: Path
) -> None:
    with ServerProcess(tmp_path / "valkey", fsync="always") as private:
        client = Client(settings.replace(redis_url=private.url))
        handle = tasks.announce_sleep.prepare(0.3)
        client.enqueue([handle])
        worker = logged_worker(redis_url=private.url, grace=60.0, lease=30.0)
        wait_started_task(client.redis(), handle.id)
        client.close()
        private.sigkill()
        # The job ends while the server is away: its outcome waits in the worker.
        worker.wait_for_log("report results: server unavailable")
        worker.proc.send_signal(signal.SIGTERM)
        worker.wait_for_log("stopping: no new jobs")
        worker.proc.send_signal(signal.SIGTERM)
        worker.wait_for_log("second stop signal")
        # A hard stop may drop the outcome (the job runs again after its lease); at d0b0172
        # the reporter retried it forever instead.
        assert worker.proc.wait(timeout=8) == 0


# -- server crash ---------------------------------------------------------------------


def test_server_sigkill_loses_no_acknowledged_enqueue_and_workers_resume_by_themselves(
    app: Redwork,
    settings: Settings,
    server: ServerProcess,
    r: redis.Redis,
    spawn_worker: SpawnWorker,
    announcements: Announcements,
) -> None:
    workers = [spawn_worker(concurrency=4), spawn_worker(concurrency=4)]
    announcements.started(2)
    producer = Client(settings)  # rides out an outage of up to reconnect_for (30 s)
    producer.redis().ping()
    acknowledged: list[str] = []
    acks: queue.Queue[str] = queue.Queue()
    errors: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        try:
            for _ in range(400):
                if stop.is_set():
                    return
                envelope = tasks.sleep.prepare(0.05)
                producer.enqueue([envelope])
                acknowledged.append(envelope.id)
                acks.put(envelope.id)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=produce)
    try:
        thread.start()
        completed = 0
        for event in iter_events(r):
            completed += event["event"] == "completed"
            if completed == 20:
                break
        seconds, micros = r.time()
        killed_at = seconds * 1000 + micros // 1000  # the server's clock, as events' "at"
        server.sigkill()  # fsync=always: whatever was acknowledged is in the AOF
        before_kill = set(acknowledged)
    finally:
        if not server.running:
            server.restart()
    # The producer's call in flight at the kill completes once the server is back.
    while acks.get(timeout=30) in before_kill:
        pass
    stop.set()
    thread.join(timeout=60)
    producer.close()
    assert not thread.is_alive()
    assert errors == []

    fresh = redis.Redis.from_url(server.url)
    try:
        assert [i for i in before_kill if not fresh.exists(QUEUE.job_key(i))] == []
        pids = {w.pid for w in workers}
        for job_id in acknowledged:
            assert pid_of(app.job(job_id).result(timeout=60)) in pids
        # However fast they were, the workers completed something once the server was back.
        entries = fresh.xrange(QUEUE.events, "-", "+")
        after_kill = [
            job
            for _, raw in entries
            for job in job_events(raw)
            if job["event"] == "completed" and int(job["at"]) > killed_at
        ]
        assert after_kill, "no job completed after the restart"
        assert all(w.proc.poll() is None for w in workers)
    finally:
        fresh.close()
    terminate(*workers)


# -- bad input ------------------------------------------------------------------------


def test_malformed_payloads_and_unknown_tasks_are_failed_and_the_worker_carries_on(
    app: Redwork, r: redis.Redis, spawn_worker: SpawnWorker
) -> None:
    worker = spawn_worker(concurrency=4)
    raw = b"\x00\xff{not a job id"
    r.lpush(QUEUE.wait, raw)
    # A known job id whose stored document is not JSON (decoded by the worker).
    r.hset(
        QUEUE.job_key("bad-doc"),
        mapping={"data": b"{not json", "state": "waiting", "attempt": 0, "token": 0},
    )
    r.lpush(QUEUE.wait, "bad-doc")
    unknown = Envelope(id=new_job_id(), task="no.such.task", queue=Q)
    app.enqueue_many([unknown])

    failed: dict[str, dict[str, str]] = {}
    for event in iter_events(r):
        if event["event"] == "failed":
            failed[event["job"]] = event
            if len(failed) == 3:
                break
    assert set(failed) == {"@raw-1", "bad-doc", unknown.id}

    raw_record = app.job("@raw-1").info()
    assert raw_record.state is JobState.FAILED
    assert raw_record.reason == "decode_error"
    assert raw_record.data == raw  # kept for inspection
    bad_doc = app.job("bad-doc").info()
    assert bad_doc.state is JobState.FAILED
    assert bad_doc.reason == "decode_error"
    assert bad_doc.attempt == 1  # not retried
    unknown_record = app.job(unknown.id).info()
    assert unknown_record.reason == "unknown_task"
    assert "no.such.task" in (unknown_record.error or "")
    assert r.zcard(QUEUE.failed) == 3

    handles = app.enqueue_many(tasks.add.prepare(i, 1) for i in range(100))
    assert [h.result(timeout=30) for h in handles] == [i + 1 for i in range(100)]
    assert {job_worker_pid(r, h.id) for h in handles} == {worker.pid}
    assert worker.proc.poll() is None
    terminate(worker)


# -- supervisor -----------------------------------------------------------------------


def test_sigkilled_supervisor_leaves_no_child_and_orphans_hand_their_jobs_back(
    app: Redwork,
    r: redis.Redis,
    spawn_worker: SpawnWorker,
    announcements: Announcements,
) -> None:
    supervisor = spawn_worker("--processes", "2", concurrency=2, lease=30.0, grace=30.0)
    started = announcements.started(2)
    children = children_of(supervisor.pid)
    assert children == set(started)
    handles = [tasks.sleep.enqueue(30) for _ in range(2)]
    for h in handles:
        wait_for_event(r, Q, "active", h.id)

    supervisor.kill(signal.SIGKILL)
    assert supervisor.wait() == -signal.SIGKILL
    wait_gone(children)

    # The orphans were told (parent-death signal) and did not wait out their grace or
    # leave their jobs to lease expiry (30 s): they handed them back.
    for h in handles:
        wait_for_event(r, Q, "returned", h.id, timeout=1)
        assert h.info().state is JobState.WAITING
        assert h.info().attempt == 0


def test_supervisor_restarts_a_killed_worker_and_forwards_sigterm(
    app: Redwork,
    r: redis.Redis,
    spawn_worker: SpawnWorker,
    announcements: Announcements,
) -> None:
    supervisor = spawn_worker("--processes", "2")
    started = announcements.started(2)
    assert children_of(supervisor.pid) == set(started)
    victim, survivor = sorted(started)

    os.kill(victim, signal.SIGKILL)
    (replacement, replacement_id), *_ = announcements.started(1).items()
    assert replacement not in started
    assert children_of(supervisor.pid) == {survivor, replacement}
    handles = app.enqueue_many(tasks.add.prepare(i, i) for i in range(20))
    assert [h.result(timeout=30) for h in handles] == [2 * i for i in range(20)]

    supervisor.kill(signal.SIGTERM)
    assert supervisor.wait(timeout=20) == 0
    # Both live workers stopped cleanly (deregistered), and no process is left.
    announcements.stopped({started[survivor], replacement_id})
    wait_gone({survivor, replacement})


def test_sigterm_while_the_supervisor_starts_stops_every_child(
    spawn_worker: SpawnWorker,
) -> None:
    # At d0b0172 children spawned after the signal never got it, and the supervisor hung.
    supervisor = spawn_worker("--processes", "2")
    # No event says the supervisor handles SIGTERM yet; its /proc status does.
    deadline = time.monotonic() + 20
    while not catches(supervisor.pid, signal.SIGTERM):
        assert time.monotonic() < deadline, "the supervisor never installed its handler"
    supervisor.kill(signal.SIGTERM)
    try:
        assert supervisor.wait(timeout=8) == 0
    finally:
        if supervisor.proc.poll() is None:
            children = children_of(supervisor.pid)
            supervisor.kill(signal.SIGTERM)  # a second signal reaches every child
            supervisor.wait(timeout=30)
            wait_gone(children)


def test_a_poison_pill_fails_as_worker_lost_after_max_losses_and_the_rest_completes(
    app: Redwork, r: redis.Redis, spawn_worker: SpawnWorker
) -> None:
    # One slot per process: a job running next to the pill dies with it, and "delivered
    # alone" keeps a suspect from sharing a fetch, not a process already running others,
    # so with more slots an unlucky job could lose its worker max_losses times too.
    supervisor = spawn_worker("--processes", "2", concurrency=1)
    pill = tasks.poison.enqueue()
    handles = app.enqueue_many(tasks.add.prepare(i, 1) for i in range(100))
    try:
        failed = wait_for_event(r, Q, "failed", pill.id, timeout=60)
        record = pill.info()
        assert (record.state, record.reason, record.losses) == (
            JobState.FAILED,
            "worker_lost",
            app.settings.max_losses,
        )
        assert failed["job"] == pill.id
        assert [h.result(timeout=30) for h in handles] == [i + 1 for i in range(100)]
    finally:
        supervisor.kill(signal.SIGTERM)
        supervisor.wait(timeout=20)


def test_a_task_blocking_the_event_loop_is_reclaimed_fenced_and_reported(
    app: Redwork, r: redis.Redis, logged_worker: Callable[..., LoggedWorker]
) -> None:
    blocked = logged_worker()
    blocked.wait_for_log("concurrency")
    lease = app.settings.lease
    handle = tasks.block_loop.enqueue(3 * lease)
    wait_for_event(r, Q, "active", handle.id)
    rescuer = logged_worker()
    # The lease lapses while the loop is blocked; the other worker takes the job.
    wait_for_event(r, Q, "recovered", handle.id)
    assert handle.result(timeout=20) == rescuer_id(rescuer, r, handle.id)
    line = blocked.wait_for_log("event loop blocked for")
    assert float(line.split("blocked for ")[1].split("s")[0]) >= 2 * lease
    blocked.wait_for_log("fenced")
    assert handle.info().attempt == 2
    assert int(r.hget(Queue(Q).stats, "fenced") or 0) == 1


def rescuer_id(worker: LoggedWorker, r: redis.Redis, job_id: str) -> str:
    """The id of the worker that completed the job (the task returns it too)."""
    fields = r.hget(Queue(Q).job_key(job_id), "worker")
    assert fields is not None
    assert pid_of(fields) == worker.proc.pid
    return fields.decode()
