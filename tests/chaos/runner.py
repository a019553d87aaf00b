"""The chaos run: a mixed workload (plain jobs, some delayed; keyed jobs with fenced
state; chains and fan-ins) through several worker processes and a server with AOF, all
connected through a ChaosProxy, while faults are injected one at a time:

    worker_kill    SIGKILL a worker, start a new one
    worker_stop    SIGSTOP a worker for 3 leases, then SIGCONT (a zombie that wakes)
    server_kill    SIGKILL the server, restart it on its AOF
    server_stop    SIGSTOP the server for 3 s, then SIGCONT (a hung server)
    proxy_cut      reset every connection
    proxy_flap     reset every connection every 0.5 s for 5 s
    proxy_stall    forward nothing for 3 s (a partition; requests arrive late)
    proxy_drop_reply  every connection loses its next reply, then is reset (the request
                   was applied; its sender cannot know)
    producer_kill  SIGKILL the producer in the middle of a call, start a new one

Each fault is timed twice: from the fault until every job that was running when it hit
has moved on (run again under a new lease, or ended), and from the fault's end (its
heal) until a probe job, enqueued then at the highest priority, has run.

At the end it waits for every acknowledged job to end and checks, from the server's keys
and the side-effect ledger: jobs lost, jobs stuck, the queue's structural invariants,
deliveries recorded twice, keyed counters against completed keyed jobs (an effect applied
twice would show), workflow nodes that ran before a dependency took effect, and jobs run
more than once against the jobs in flight during faults (at-least-once allows those).

    python bench/chaos.py                       # each fault once (about a minute)
    python bench/chaos.py --minutes 10 --fsync everysec
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from redwork.queue import Queue
from redwork.server import ServerProcess
from tests.chaos.harness import FINAL_STATES, ROOT, ChaosProxy, WorkerProc, check_invariants
from tests.chaos.tasks import COUNTERS, LEDGER_ENV, NODES, Ledger, app, probe

FAULTS = (
    "worker_kill",
    "worker_stop",
    "server_kill",
    "server_stop",
    "proxy_cut",
    "proxy_flap",
    "proxy_stall",
    "proxy_drop_reply",
    "producer_kill",
)
QUEUE = Queue("default")


@dataclass
class Config:
    seed: int = 1
    minutes: float = 0.0
    """Run faults for this long (cycling through them); 0: each fault `rounds` times."""
    rounds: int = 1
    gap: float = 5.0
    """Mean seconds of normal running between two faults."""
    fsync: str = "always"
    workers: int = 3
    concurrency: int = 10
    rate: float = 150.0
    """Jobs per second the producer sends."""
    lease: float = 1.0
    stall: float = 3.0
    settle: float = 120.0
    """Seconds every acknowledged job has to end after the last fault."""
    recovery_timeout: float = 60.0
    keep: str | None = None
    """Keep the run's files (server dir, ledger, logs) in this directory."""


@dataclass
class FaultRecord:
    fault: str
    at: float
    """Seconds since the run started."""
    in_flight: int
    """Jobs running when the fault hit."""
    taken_over: float | None
    """Seconds from the fault until every job running at the fault had moved on (run
    again under a new lease, or ended); None if some had not in time."""
    service: float | None
    """Seconds from the fault's end (its heal) until a probe job enqueued then had run."""
    detail: str = ""


@dataclass
class Injected:
    """A fault begun: how it ends (None: it needs no healing) and how long it lasts."""

    detail: str
    heal: Callable[[], None] | None = None
    lasts: float = 0.0
    observable: bool = True
    """Whether the server answers the runner while the fault lasts."""


@dataclass
class Report:
    config: Config
    acknowledged: int = 0
    ambiguous: int = 0
    """Jobs of calls that never returned (the producer was killed): may or may not exist."""
    ambiguous_present: int = 0
    ended: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    invariant_problems: list[str] = field(default_factory=list)
    deliveries_recorded_twice: int = 0
    keyed_jobs_completed: int = 0
    keyed_effects_applied: int = 0
    keyed_mismatches: list[str] = field(default_factory=list)
    workflows: int = 0
    workflows_not_succeeded: list[str] = field(default_factory=list)
    workflow_violations: list[str] = field(default_factory=list)
    node_effects_missing: int = 0
    ran_more_than_once: int = 0
    in_flight_at_faults: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    connections: tuple[int, int] = (0, 0)
    """The server's connected clients before the first fault and at the end (leaks?)."""
    faults: list[FaultRecord] = field(default_factory=list)
    duration: float = 0.0

    def failures(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} acknowledged jobs lost: {self.lost[:5]}")
        if self.stuck:
            found.append(f"{len(self.stuck)} jobs stuck: {self.stuck[:5]}")
        found += self.invariant_problems
        if self.deliveries_recorded_twice:
            found.append(f"{self.deliveries_recorded_twice} deliveries ran twice")
        found += self.keyed_mismatches + self.workflow_violations
        found += [f"workflow {w} did not succeed" for w in self.workflows_not_succeeded]
        if self.node_effects_missing:
            found.append(f"{self.node_effects_missing} completed nodes without their effect")
        if self.ran_more_than_once > self.in_flight_at_faults:
            found.append(
                f"{self.ran_more_than_once} jobs ran more than once, more than the "
                f"{self.in_flight_at_faults} in flight during faults"
            )
        for f in self.faults:
            if f.taken_over is None or f.service is None:
                found.append(f"no recovery from {f.fault} at {f.at:.1f}s")
        return found


class Run:
    """One chaos run's processes (server, proxy, workers, producer), its faults and its
    checks."""

    def __init__(self, config: Config, workdir: Path) -> None:
        self.config = config
        self.dir = workdir
        self.rng = random.Random(config.seed)
        self.server = ServerProcess(workdir / "server", fsync=config.fsync)
        self.server.start()
        self.proxy = ChaosProxy(self.server.port).start()
        self.ledger_path = workdir / "ledger"
        self.ledger_path.mkdir()
        self.acks_path = workdir / "acks.jsonl"
        self.env = self._env()
        self.direct = redis.Redis.from_url(self.server.url, socket_timeout=5)
        app.configure(app.settings.replace(redis_url=self.server.url, scheduler=False))
        self.workers = [
            WorkerProc("tests.chaos.tasks:app", self.env, workdir / f"worker-{i}.log")
            for i in range(config.workers)
        ]
        self.generation = 0
        self.producer = self._start_producer()
        self.started = time.monotonic()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDWORK_")}
        env.update(
            REDWORK_REDIS_URL=self.proxy.url,
            REDWORK_LEASE=str(self.config.lease),
            REDWORK_CONCURRENCY=str(self.config.concurrency),
            REDWORK_BLOCK_TIMEOUT="0.5",
            REDWORK_SOCKET_TIMEOUT="2",
            REDWORK_GRACE="2",
            # Faults may cost a job several leases; ending it as worker_lost would hide
            # whether the rest of its life went right.
            REDWORK_MAX_LOSSES="100",
            REDWORK_SCHEDULER="0",
            REDWORK_LOG_LEVEL="INFO",
            PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        )
        env[LEDGER_ENV] = str(self.ledger_path)
        return env

    def _start_producer(self) -> subprocess.Popen[bytes]:
        self.generation += 1
        args = [
            str(self.acks_path),
            str(self.generation),
            str(self.config.seed),
            str(self.config.rate),
        ]
        with (self.dir / "producer.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.chaos.producer", *args],
                env=self.env, cwd=ROOT, stdout=log, stderr=log,
            )  # fmt: skip

    # -- faults -----------------------------------------------------------------------

    def plan(self) -> Iterator[str]:
        if self.config.minutes <= 0:
            faults = list(FAULTS) * self.config.rounds
            self.rng.shuffle(faults)
            yield from faults
            return
        end = self.started + self.config.minutes * 60
        while time.monotonic() < end:
            faults = list(FAULTS)
            self.rng.shuffle(faults)
            for fault in faults:
                if time.monotonic() >= end:
                    return
                yield fault

    def inject(self, fault: str) -> FaultRecord:
        """Begin the fault, watch the jobs it caught while it lasts, heal it, then wait
        for a probe enqueued after the heal to run."""
        at = time.monotonic()
        in_flight = self.running_jobs()
        injected: Injected = getattr(self, fault)()
        pending = dict(in_flight)
        moved_at = None
        if injected.lasts and injected.observable:
            # The jobs a lasting fault caught may be taken over while it lasts.
            moved_at = self.follow(pending, until=at + injected.lasts)
        elif injected.lasts:
            time.sleep(injected.lasts)  # the fault's length, not a wait for an event
        if injected.heal is not None:
            injected.heal()
        healed = time.monotonic()
        probe_ran = self.run_probe()
        if pending:
            moved_at = self.follow(pending, until=time.monotonic() + self.config.recovery_timeout)
        return FaultRecord(
            fault,
            at - self.started,
            len(in_flight),
            None if moved_at is None else moved_at - at,
            None if probe_ran is None else probe_ran - healed,
            injected.detail,
        )

    def busy_worker(self) -> WorkerProc:
        """The worker holding the most jobs now (a random one if none holds any)."""
        holders = Counter(self.retrying(self._holders))
        by_pid = {w.pid: w for w in self.workers}
        for pid, _ in holders.most_common():
            if pid in by_pid:
                return by_pid[pid]
        return self.rng.choice(self.workers)

    def _holders(self) -> list[int]:
        ids = self.direct.zrange(QUEUE.active, 0, -1)
        pipe = self.direct.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(QUEUE.job_key(job_id.decode()), "worker")
        return [int(w.decode().rsplit(":", 2)[1]) for w in pipe.execute() if w is not None]

    def worker_kill(self) -> Injected:
        worker = self.busy_worker()
        worker.sigkill()
        return Injected(f"pid {worker.pid}", heal=worker.start)

    def worker_stop(self) -> Injected:
        worker = self.busy_worker()
        worker.signal(signal.SIGSTOP)
        lasts = 3 * self.config.lease
        detail = f"pid {worker.pid} for {lasts:.1f}s"
        return Injected(detail, lambda: worker.signal(signal.SIGCONT), lasts)

    def server_stop(self) -> Injected:
        self.server.pause()
        lasts = self.config.stall
        return Injected(f"for {lasts:.1f}s", self.server.resume, lasts, observable=False)

    def server_kill(self) -> Injected:
        self.server.sigkill()
        return Injected(f"fsync {self.config.fsync}", heal=self.server.start)

    def proxy_cut(self) -> Injected:
        return Injected(f"{self.proxy.cut()} connections reset")

    def proxy_flap(self) -> Injected:
        stop = threading.Event()

        def flap() -> None:
            while not stop.wait(0.5):
                self.proxy.cut()

        flapping = threading.Thread(target=flap, name="proxy-flap", daemon=True)
        flapping.start()

        def heal() -> None:
            stop.set()
            flapping.join()

        return Injected("resets every 0.5s for 5s", heal, 5.0)

    def proxy_drop_reply(self) -> Injected:
        return Injected(f"{self.proxy.drop_replies()} connections armed")

    def proxy_stall(self) -> Injected:
        self.proxy.stall()
        return Injected(f"for {self.config.stall:.1f}s", self.proxy.flow, self.config.stall)

    def producer_kill(self) -> Injected:
        """SIGKILL while a call is in flight: stop it, look whether its log ends on an
        intent (a call not yet acknowledged), else let it run a moment and look again."""
        mid_call = False
        for _ in range(500):
            self.producer.send_signal(signal.SIGSTOP)
            if self._last_ack_line().startswith('{"intent"'):
                mid_call = True
                break
            self.producer.send_signal(signal.SIGCONT)
            time.sleep(0.002)
        self.producer.kill()
        self.producer.wait()

        def restart() -> None:
            self.producer = self._start_producer()

        return Injected("in a call" if mid_call else "between calls", heal=restart)

    def _last_ack_line(self) -> str:
        with self.acks_path.open("rb") as acks:
            acks.seek(max(0, acks.seek(0, os.SEEK_END) - 4096))
            lines = acks.read().splitlines()
        return lines[-1].decode() if lines else ""

    # -- observation ----------------------------------------------------------------

    def retrying(self, read: Callable[[], Any], timeout: float = 30.0) -> Any:
        """read() again every 50 ms while the server is away. Not redwork's own
        connection.retrying: its backoff grows to 2 s, which would blur the recovery
        times this observer measures."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return read()
            except (redis.ConnectionError, redis.TimeoutError):  # LOADING is a ConnectionError
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def running_jobs(self) -> dict[str, bytes | None]:
        """job id -> token of every leased job."""

        def read() -> dict[str, bytes | None]:
            ids = [raw.decode() for raw in self.direct.zrange(QUEUE.active, 0, -1)]
            pipe = self.direct.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(QUEUE.job_key(job_id), "token")
            return dict(zip(ids, pipe.execute(), strict=True))

        result: dict[str, bytes | None] = self.retrying(read)
        return result

    def follow(self, pending: dict[str, bytes | None], until: float) -> float | None:
        """Drop from `pending` the jobs that moved on, until none is left (returns when
        that happened) or `until` has passed (None). Polls: a benchmark's observer."""
        while True:
            for job_id in self.retrying(lambda: self._moved(pending)):
                del pending[job_id]
            if not pending:
                return time.monotonic()
            if time.monotonic() >= until:
                return None
            time.sleep(0.02)

    def run_probe(self) -> float | None:
        """Enqueue a probe at the highest priority; when it ran, or None if not in time."""
        handle = self.retrying(lambda: probe.options(priority=9).enqueue())
        deadline = time.monotonic() + self.config.recovery_timeout
        while time.monotonic() < deadline:
            state = self.retrying(lambda: self.direct.hget(QUEUE.job_key(handle.id), "state"))
            if state == b"completed":
                return time.monotonic()
            time.sleep(0.01)
        return None

    def _moved(self, pending: dict[str, bytes | None]) -> list[str]:
        ids = list(pending)
        pipe = self.direct.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(QUEUE.job_key(job_id), "state", "token")
        return [
            job_id
            for job_id, (state, token) in zip(ids, pipe.execute(), strict=True)
            if state is None or state != b"active" or token != pending[job_id]
        ]

    # -- the end ----------------------------------------------------------------------

    def acknowledgements(self) -> tuple[set[str], set[str]]:
        acked: set[str] = set()
        intended: set[str] = set()
        for line in self.acks_path.read_bytes().splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:  # a line cut short by the producer's kill
                continue
            ((kind, ids),) = entry.items()
            (acked if kind == "ack" else intended).update(ids)
        return acked, intended - acked

    def stop_producer(self) -> None:
        self.producer.send_signal(signal.SIGTERM)
        try:
            self.producer.wait(30)
        except subprocess.TimeoutExpired:
            self.producer.kill()
            self.producer.wait()

    def settle(self, acked: set[str]) -> None:
        """Until every acknowledged job has ended, or the settle time is up."""
        deadline = time.monotonic() + self.config.settle
        pending = sorted(acked)
        while pending and time.monotonic() < deadline:
            pipe = self.direct.pipeline(transaction=False)
            for job_id in pending:
                pipe.hget(QUEUE.job_key(job_id), "state")
            states = self.retrying(pipe.execute)
            pending = [
                job_id
                for job_id, state in zip(pending, states, strict=True)
                if state is not None and state.decode() not in FINAL_STATES
            ]
            time.sleep(0.1)

    def report(self, faults: list[FaultRecord]) -> Report:
        report = Report(self.config, faults=faults)
        acked, ambiguous = self.acknowledgements()
        self.settle(acked)
        census = check_invariants(self.direct, QUEUE.name)
        states = census.job_states
        report.acknowledged, report.ambiguous = len(acked), len(ambiguous)
        report.ambiguous_present = sum(1 for job_id in ambiguous if job_id in states)
        report.ended = dict(Counter(s for s in states.values() if s in FINAL_STATES))
        report.lost = sorted(job_id for job_id in acked if job_id not in states)
        report.stuck = sorted(j for j in acked if j in states and states[j] not in FINAL_STATES)
        report.invariant_problems = census.problems
        self.check_effects(report, states)
        stats = self.direct.hgetall(QUEUE.stats)
        report.stats = {k.decode(): int(v) for k, v in stats.items()}
        report.in_flight_at_faults = sum(f.in_flight for f in faults)
        report.duration = time.monotonic() - self.started
        return report

    def check_effects(self, report: Report, states: dict[str, str]) -> None:
        entries = list(Ledger(self.ledger_path).entries())
        violations = [(e["job"], e["violation"]) for e in entries if "violation" in e]
        deliveries = Counter((e["job"], e["token"]) for e in entries if "token" in e)
        report.deliveries_recorded_twice = sum(1 for n in deliveries.values() if n > 1)
        runs = Counter(job for job, _ in deliveries)
        report.ran_more_than_once = sum(1 for job, n in runs.items() if n > 1 and job in states)
        report.workflow_violations = [f"{job}: {what}" for job, what in violations]

        ids = list(states)
        pipe = self.direct.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(QUEUE.job_key(job_id), "key", "wf")
        completed_per_key: Counter[str] = Counter()
        workflows: set[str] = set()
        nodes_completed = []
        for job_id, (key, wf) in zip(ids, pipe.execute(), strict=True):
            if key is not None and states[job_id] == "completed":
                completed_per_key[key.decode()] += 1
            if wf is not None:
                workflows.add(wf.decode())
                if states[job_id] == "completed":
                    nodes_completed.append(job_id)
        counters = app.state(COUNTERS).get_many(sorted(completed_per_key))
        report.keyed_jobs_completed = sum(completed_per_key.values())
        for key, item in counters.items():
            applied = 0 if item is None else int(item.value)
            report.keyed_effects_applied += applied
            if applied != completed_per_key[key] or (item is not None and item.etag != applied):
                report.keyed_mismatches.append(
                    f"key {key}: {completed_per_key[key]} jobs completed, counter at {applied}"
                    f" (version {None if item is None else item.etag})"
                )
        effects = app.state(NODES).get_many(nodes_completed)
        report.node_effects_missing = sum(
            1 for item in effects.values() if item is None or item.etag != 1
        )
        report.workflows = len(workflows)
        for wf in sorted(workflows):
            status = self.direct.hget(QUEUE.prefix + f"wf:{wf}", "status")
            if status != b"succeeded":
                report.workflows_not_succeeded.append(f"{wf} ({status!r})")

    def connected_clients(self) -> int:
        return int(self.retrying(lambda: self.direct.info("clients"))["connected_clients"])

    def close(self) -> None:
        if self.producer.poll() is None:
            self.producer.kill()
            self.producer.wait()
        for worker in self.workers:
            worker.stop()
        app.client.close()
        self.direct.close()
        self.proxy.close()
        self.server.stop()


def run(config: Config, log: Callable[[str], None] = lambda line: None) -> Report:
    with tempfile.TemporaryDirectory(prefix="redwork-chaos-") as tmp:
        workdir = Path(config.keep) if config.keep else Path(tmp)
        if workdir.exists() and any(workdir.iterdir()):
            raise ValueError(f"{workdir} is not empty: a run's ledger must be its own")
        workdir.mkdir(parents=True, exist_ok=True)
        chaos = Run(config, workdir)
        try:
            faults = []
            connected = 0
            for fault in chaos.plan():
                time.sleep(config.gap * chaos.rng.uniform(0.5, 1.5))  # normal running
                connected = connected or chaos.connected_clients()
                record = chaos.inject(fault)
                faults.append(record)
                log(
                    f"{record.at:7.1f}s {fault:16} {record.detail:22} in flight "
                    f"{record.in_flight:3}  moved on {seconds(record.taken_over)}  "
                    f"probe {seconds(record.service)}"
                )
            chaos.stop_producer()
            report = chaos.report(faults)
            report.connections = (connected, chaos.connected_clients())
            return report
        finally:
            chaos.close()


def seconds(value: float | None) -> str:
    return "NEVER" if value is None else f"{value:.2f}s"


def spread(values: list[float | None]) -> str:
    """median and max, or NEVER if one of them never happened."""
    if any(v is None for v in values):
        return "NEVER"
    known = [v for v in values if v is not None]
    return f"median {statistics.median(known):.2f} max {max(known):.2f}"


def summary(report: Report) -> str:
    c = report.config
    rows = [
        ("jobs acknowledged to producers", report.acknowledged),
        (
            "jobs of calls cut short (ambiguous)",
            f"{report.ambiguous}, {report.ambiguous_present} present",
        ),
        ("jobs that reached a final state", f"{sum(report.ended.values())} {report.ended}"),
        ("jobs lost", len(report.lost)),
        ("jobs stuck after recovery", len(report.stuck)),
        ("invariant problems", len(report.invariant_problems)),
        ("deliveries run twice", report.deliveries_recorded_twice),
        (
            "keyed effects applied / jobs completed",
            f"{report.keyed_effects_applied} / {report.keyed_jobs_completed}",
        ),
        (
            "workflows / not succeeded",
            f"{report.workflows} / {len(report.workflows_not_succeeded)}",
        ),
        ("workflow trigger violations", len(report.workflow_violations)),
        (
            "jobs run more than once",
            f"{report.ran_more_than_once} (in flight at faults: {report.in_flight_at_faults})",
        ),
        ("server counters", report.stats),
        ("connections before faults / at the end", "{} / {}".format(*report.connections)),
    ]
    lines = [
        f"chaos run: seed {c.seed}, fsync {c.fsync}, {c.workers} workers, "
        f"{len(report.faults)} faults, {report.duration:.0f}s",
        *(f"  {label:40} {value}" for label, value in rows),
        "  recovery, seconds: jobs running at the fault moved on (from the fault);"
        " a probe ran (from its end)",
    ]
    for fault in FAULTS:
        records = [f for f in report.faults if f.fault == fault]
        if records:
            moved = spread([f.taken_over for f in records])
            probed = spread([f.service for f in records])
            lines.append(f"    {fault:16} n={len(records):<3} moved on {moved}   probe {probed}")
    failures = report.failures()
    lines.append("RESULT: " + ("ok" if not failures else "FAILED"))
    lines += [f"  - {failure}" for failure in failures]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Config()
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--gap", type=float, default=defaults.gap)
    parser.add_argument("--fsync", choices=("always", "everysec"), default=defaults.fsync)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--rate", type=float, default=defaults.rate)
    parser.add_argument("--keep", help="keep the run's files (server dir, ledger, logs) here")
    parser.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    config = Config(**args)
    report = run(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    if as_json:
        print(json.dumps({**asdict(report), "failures": report.failures()}, indent=2))
    else:
        print(summary(report))
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
