"""redwork on more than one server: no-op throughput spread over the primaries of a
Cluster, and what durable acknowledgement (ack_replicas, ack_fsync) costs on a primary
with one replica. Real servers and real worker processes, as in bench/run.py; it
asserts nothing. See bench/README.md, "Cluster and durable acknowledgement".

    .venv/bin/python bench/cluster.py                 # both scenarios, 3 rounds, 4-5 minutes
    .venv/bin/python bench/cluster.py --quick         # small sizes, 1 round: under a minute
    .venv/bin/python bench/cluster.py --only durable --json
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/cluster.py`, bench/ would come first on sys.path, and its http.py
# would hide the standard library's.
sys.path[:] = [str(ROOT)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")
]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402

from bench.http import CpuMeter  # noqa: E402
from bench.run import (  # noqa: E402
    POLL,
    Bench,
    BenchError,
    Config,
    Workers,
    _no_nan,
    _percentile,
    log,
    machine,
)
from bench.tasks import app, noop  # noqa: E402
from redwork.errors import NotDurable, RedworkError  # noqa: E402
from redwork.queue import Queue  # noqa: E402
from redwork.server import LocalCluster, LocalSentinel, ServerProcess  # noqa: E402
from redwork.settings import Settings  # noqa: E402

SCENARIOS = ("spread", "durable")
PRIMARIES = 3
# A node (or, seen by a sentinel, the primary) that does not answer for this long is
# declared failed. The defaults (1 s) are for fault tests; on a shared 2-core machine a
# busy server can miss that, and a failover in the middle of a run would end it.
NODE_TIMEOUT_MS = 30_000
# The words of NotDurable's message (src/redwork/queue.py), as the workers log each retry.
NOT_DURABLE_TEXT = "a write reached"
STAMPS = ("started_at", "finished_at")  # set by the fetch and complete scripts, server ms
MIN_WINDOW = 0.5  # seconds: a shorter time with every worker running gives no rate
# (name, settings) of the durable scenario, producer and workers alike.
ACK_SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("off", {}),
    ("ack_replicas=1", {"ack_replicas": 1}),
    ("ack_fsync", {"ack_fsync": True}),
    ("ack_replicas=1 + ack_fsync", {"ack_replicas": 1, "ack_fsync": True}),
)


@dataclass(frozen=True)
class Sizes:
    spread_jobs: int
    durable_jobs: int
    """Jobs of the bulk enqueue and the drain of each durable setting."""
    sequential_calls: int
    sequential_seconds: float
    """The sequential enqueue stops at sequential_calls or after this long, whichever
    comes first: a setting that waits ~1 s per call would otherwise take half an hour."""
    rounds: int
    concurrency: int
    scenarios: tuple[str, ...]

    @classmethod
    def make(cls, args: argparse.Namespace) -> Sizes:
        quick = args.quick
        return cls(
            spread_jobs=5_000 if quick else 40_000,
            durable_jobs=5_000 if quick else 20_000,
            sequential_calls=300 if quick else 1_000,
            sequential_seconds=3.0 if quick else 6.0,
            rounds=args.rounds or (1 if quick else 3),
            concurrency=args.concurrency,
            scenarios=tuple(args.only or SCENARIOS),
        )


def median(runs: Sequence[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def reset(benches: Sequence[Bench]) -> None:
    """Every server empty, with a fresh AOF (Bench.reset, once per server)."""
    for b in benches:
        b.reset()


def enqueue(
    benches: Sequence[Bench], n: int, pids: dict[str, int | None]
) -> tuple[list[list[str]], dict[str, Any]]:
    """n no-op jobs, dealt round-robin to the queues of `benches`, built and stored with
    one app.enqueue_many call (as run.py's bulk_enqueue). Returns the ids per queue."""
    tasks = [noop.options(queue=b.queue.name) for b in benches]
    meter = CpuMeter(pids)
    t0 = time.perf_counter()
    envelopes = [tasks[i % len(tasks)].prepare() for i in range(n)]
    handles = app.enqueue_many(envelopes)
    seconds = time.perf_counter() - t0
    cpu = meter.stop()
    ids: dict[str, list[str]] = {b.queue.name: [] for b in benches}
    for handle in handles:
        ids[handle.queue].append(handle.id)
    waiting = sum(int(b.r.llen(b.queue.wait)) for b in benches)
    if len(handles) != n or waiting != n:
        raise BenchError(f"enqueued {len(handles)}, {waiting} waiting; expected {n}")
    run = {"jobs_per_s": n / seconds, "seconds": seconds, **_cpu(cpu, n)}
    return [ids[b.queue.name] for b in benches], run


def drain(
    parts: Sequence[tuple[Bench, list[str]]],
    url: str,
    concurrency: int,
    pids: dict[str, int | None],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One worker process per part (a queue on its server, with its jobs already
    enqueued), all started at once. jobs/s = jobs / (first started_at .. last
    finished_at) over every part, on the servers' clocks (one machine, one clock), as
    run.py's drain: process start-up is left out. all_running_jobs_per_s: the jobs
    that finished while every worker was running, over that time."""
    n = sum(len(ids) for _, ids in parts)
    spawned = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(
                Workers(
                    b, 1, concurrency, url=url, env={**(env or {}), "REDWORK_QUEUES": b.queue.name}
                )
            )
            for b, _ in parts
        ]
        worker_pids = {f"worker{i}": w.procs[0][0].pid for i, w in enumerate(workers)}
        meter = CpuMeter({**pids, **worker_pids})
        for (b, ids), w in zip(parts, workers, strict=True):
            b.wait_completed(len(ids), w)
        wall = time.perf_counter() - spawned
        cpu = meter.stop()
        logs = [path for w in workers for _, path in w.procs]
    # Read once the workers have stopped: a worker's last batch of outcomes is counted
    # as completed before its durability wait ends.
    retries = sum(path.read_text(errors="replace").count(NOT_DURABLE_TEXT) for path in logs)
    timings = [_timings(b, ids) for b, ids in parts]
    firsts = [min(s for s, _ in t) for t in timings]
    lasts = [max(f for _, f in t) for t in timings]
    seconds = max(max(lasts) - min(firsts), 1) / 1000
    # The window in which every worker process was running jobs: starting k processes
    # at once on a busy machine spreads their starts, and a late one finishes late.
    together = (max(firsts), min(lasts))
    overlap = (together[1] - together[0]) / 1000
    in_window = sum(together[0] <= f <= together[1] for t in timings for _, f in t)
    return {
        "jobs_per_s": n / seconds,
        "seconds": seconds,
        "all_running_jobs_per_s": in_window / overlap if overlap >= MIN_WINDOW else None,
        "all_running_s": overlap,
        "worker_start_skew_ms": max(firsts) - min(firsts),
        "wall_incl_startup_s": wall,
        "worker_not_durable_retries": retries,
        **_cpu(cpu, n),
    }


def _timings(b: Bench, ids: list[str]) -> list[tuple[int, int]]:
    """(started_at, finished_at) of each job, server ms."""
    out = []
    for started, finished in b.job_fields(ids, *STAMPS):
        if started is None or finished is None:
            raise BenchError("a job has no started_at/finished_at: did it run?")
        out.append((int(started), int(finished)))
    return out


def _cpu(cpu: dict[str, Any], n: int) -> dict[str, Any]:
    """CPU per job of the servers and of the workers (µs), the machine's load and the
    CPU used by processes outside the benchmark (cores' worth, in %)."""
    servers = sum(v for k, v in cpu.items() if k.endswith("_cpu_s") and k.startswith("server"))
    workers = sum(v for k, v in cpu.items() if k.endswith("_cpu_s") and k.startswith("worker"))
    return {
        "server_cpu_us_per_job": 1e6 * servers / n,
        "worker_cpu_us_per_job": 1e6 * workers / n,
        "machine_busy_pct": cpu["machine_busy_pct"],
        "others_cpu_pct": cpu["others_cpu_pct"],
    }


# -- spread: the same work over 1, 2 and 3 primaries ------------------------------------


@dataclass(frozen=True)
class Setup:
    name: str
    parts: list[Bench]
    """The queues the jobs are dealt to, one worker process each (a Bench per queue)."""
    servers: list[Bench]
    """Emptied before each run: every primary of the cluster, even those left idle."""
    url: str
    pids: dict[str, int | None]
    """The servers' processes, whose CPU is measured."""


def queues_on_distinct_primaries(cluster: LocalCluster, count: int) -> list[str]:
    """Queue names q0, q1, ... whose hash slots land on `count` different primaries
    (a queue's keys share the hash tag {name}, so a queue lives on one primary)."""
    chosen: dict[int, str] = {}
    for i in range(1000):
        name = f"q{i}"
        chosen.setdefault(cluster.primary_of(f"{{{name}}}").port, name)
        if len(chosen) == count:
            return list(chosen.values())
    raise BenchError(f"no {count} queue names on distinct primaries among q0..q999")


def spread(sizes: Sizes, config: Config, tmp: Path, info: dict[str, Any]) -> dict[str, Any]:
    n, c = sizes.spread_jobs, sizes.concurrency
    cluster = LocalCluster(
        tmp / "cluster",
        primaries=PRIMARIES,
        replicas=0,
        fsync="everysec",
        node_timeout_ms=NODE_TIMEOUT_MS,
    )
    baseline = ServerProcess(tmp / "single", fsync="everysec")
    with cluster, baseline:
        queues = queues_on_distinct_primaries(cluster, PRIMARIES)
        benches = []
        for i, name in enumerate(queues):
            # One Bench per primary, each for the queue that lives there: its client,
            # reset, counters and job timestamps all go to that primary.
            b = Bench(cluster.primary_of(f"{{{name}}}"), _dir(tmp / f"primary{i}"), config)
            b.queue = Queue(name)
            benches.append(b)
        single = Bench(baseline, _dir(tmp / "single-bench"), config)
        info.setdefault("machine", machine(single))
        primaries = {f"server{i}": b.server.pid for i, b in enumerate(benches)}
        log(f"cluster at {cluster.url}; queues {', '.join(queues)} on distinct primaries")
        setups = [
            Setup(
                "1 server (no cluster)", [single], [single], baseline.url, {"server": baseline.pid}
            )
        ]
        setups += [
            Setup(
                f"cluster, {k} primar{'y' if k == 1 else 'ies'}",
                benches[:k],
                benches,
                cluster.url,
                primaries,
            )
            for k in range(1, PRIMARIES + 1)
        ]
        runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in setups}
        try:
            # Round after round of every set-up, so that a busy spell on the shared
            # machine falls on all of them rather than on one.
            for round_ in range(sizes.rounds):
                for setup in setups:
                    reset(setup.servers)
                    app.configure(Settings.load(env={}, redis_url=setup.url))
                    ids, enq = enqueue(setup.parts, n, setup.pids)
                    parts = list(zip(setup.parts, ids, strict=True))
                    run = drain(parts, setup.url, c, setup.pids)
                    run["enqueue"] = enq
                    runs[setup.name].append(run)
                    log(
                        f"spread round {round_ + 1}, {setup.name}: enqueue "
                        f"{enq['jobs_per_s']:,.0f} jobs/s, drain {_describe(run)}"
                    )
        finally:
            for b in [*benches, single]:
                b.close()
    summary = []
    base = median(runs[setups[0].name], "jobs_per_s")
    for setup in setups:
        r = runs[setup.name]
        summary.append(
            {
                "setup": setup.name,
                "queues": [b.queue.name for b in setup.parts],
                "workers": len(setup.parts),
                "enqueue_jobs_per_s": statistics.median(x["enqueue"]["jobs_per_s"] for x in r),
                "drain_jobs_per_s": median(r, "jobs_per_s"),
                "drain_best_jobs_per_s": max(x["jobs_per_s"] for x in r),
                "drain_vs_single_server": median(r, "jobs_per_s") / base,
                "all_running_jobs_per_s": _median_of_known(r, "all_running_jobs_per_s"),
                "worker_start_skew_ms": median(r, "worker_start_skew_ms"),
                "drain_machine_busy_pct": median(r, "machine_busy_pct"),
                "drain_others_cpu_pct": median(r, "others_cpu_pct"),
                "drain_cpu_us_per_job": median(r, "server_cpu_us_per_job")
                + median(r, "worker_cpu_us_per_job"),
            }
        )
    return {"jobs": n, "concurrency": c, "summary": summary, "runs": runs}


def _median_of_known(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    known = [r[key] for r in runs if r[key] is not None]
    return statistics.median(known) if known else None


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _describe(run: dict[str, Any]) -> str:
    return (
        f"{run['jobs_per_s']:,.0f} jobs/s ({run['seconds']:.2f}s, "
        f"{run['wall_incl_startup_s']:.2f}s with process start; CPU per job: servers "
        f"{run['server_cpu_us_per_job']:.0f} us, workers {run['worker_cpu_us_per_job']:.0f} us; "
        f"machine busy {run['machine_busy_pct']:.0f}%, others {run['others_cpu_pct']:.0f}% "
        f"of a core)"
    )


# -- durable: what waiting for WAIT / WAITAOF costs --------------------------------------


class NotDurableCounter(logging.Handler):
    """Counts the producer's retries after NotDurable (redwork logs each retry as a
    warning that carries the exception); other records go to the benchmark's log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if any(isinstance(a, NotDurable) for a in args):
            self.count += 1
        else:
            log(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def counting_not_durable() -> Iterator[NotDurableCounter]:
    logger = logging.getLogger("redwork")
    counter = NotDurableCounter()
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)


def sequential(sizes: Sizes, pids: dict[str, int | None]) -> tuple[list[float], dict[str, Any]]:
    """noop.enqueue() one call after the other from one producer: each waits for its
    reply (and its durability wait), so this is latency-bound. Returns each call's
    latency (s)."""
    noop.enqueue()  # connects and loads the script before the clock starts
    latencies: list[float] = []
    meter = CpuMeter(pids)
    with counting_not_durable() as counter:
        t0 = time.perf_counter()
        deadline = t0 + sizes.sequential_seconds
        while len(latencies) < sizes.sequential_calls and time.perf_counter() < deadline:
            start = time.perf_counter()
            noop.enqueue()
            latencies.append(time.perf_counter() - start)
        seconds = time.perf_counter() - t0
    n = len(latencies)
    run = {"calls": n, "jobs_per_s": n / seconds, "producer_not_durable_retries": counter.count}
    return latencies, {**run, **_cpu(meter.stop(), n)}


def durable(sizes: Sizes, config: Config, tmp: Path, info: dict[str, Any]) -> dict[str, Any]:
    n, c = sizes.durable_jobs, sizes.concurrency
    sentinel = LocalSentinel(
        tmp / "sentinel", replicas=1, sentinels=1, fsync="everysec", down_after_ms=NODE_TIMEOUT_MS
    )
    with sentinel:
        primary = sentinel.primary()
        replica = next(s for s in sentinel.servers if s is not primary)
        b = Bench(primary, _dir(tmp / "durable-bench"), config)
        info.setdefault("machine", machine(b))
        replica_r = redis.Redis.from_url(replica.url)
        pids = {
            "server_primary": primary.pid,
            "server_replica": replica.pid,
            "server_sentinel": sentinel.sentinels[0].pid,
        }
        log(f"primary {primary.url}, replica {replica.url}, sentinel URL {sentinel.url}")
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in ACK_SETTINGS}
        latencies: dict[str, list[float]] = {name: [] for name, _ in ACK_SETTINGS}
        try:
            for round_ in range(sizes.rounds):
                for name, ack in ACK_SETTINGS:
                    app.configure(Settings.load(env={}, redis_url=sentinel.url, **ack))
                    env = {f"REDWORK_{k.upper()}": str(v) for k, v in ack.items()}
                    reset_pair(b, replica_r)
                    lat, seq = sequential(sizes, pids)
                    latencies[name] += lat
                    reset_pair(b, replica_r)
                    with counting_not_durable() as counter:
                        (ids,), bulk = enqueue([b], n, pids)
                    bulk["producer_not_durable_retries"] = counter.count
                    run = drain([(b, ids)], sentinel.url, c, pids, env)
                    run |= {"sequential": seq, "bulk": bulk}
                    runs[name].append(run)
                    log(
                        f"durable round {round_ + 1}, {name}: sequential "
                        f"{seq['jobs_per_s']:,.0f} jobs/s ({seq['calls']} calls, p50 "
                        f"{1000 * statistics.median(lat):.2f} ms, "
                        f"{seq['producer_not_durable_retries']} NotDurable retries), bulk "
                        f"{bulk['jobs_per_s']:,.0f} jobs/s "
                        f"({bulk['producer_not_durable_retries']} retries), drain "
                        f"{_describe(run)}, {run['worker_not_durable_retries']} retries"
                    )
        finally:
            b.close()
            replica_r.close()
    summary = []
    off = runs[ACK_SETTINGS[0][0]]

    def ratio(r: list[dict[str, Any]], part: str | None) -> float:
        def rate(x: list[dict[str, Any]]) -> float:
            return statistics.median((y[part] if part else y)["jobs_per_s"] for y in x)

        return rate(r) / rate(off)

    for name, _ in ACK_SETTINGS:
        r, lat = runs[name], sorted(latencies[name])
        summary.append(
            {
                "setting": name,
                "sequential_jobs_per_s": statistics.median(
                    x["sequential"]["jobs_per_s"] for x in r
                ),
                "sequential_ratio": ratio(r, "sequential"),
                "sequential_calls": len(lat),
                "sequential_p50_ms": 1000 * _percentile(lat, 50),
                "sequential_p99_ms": 1000 * _percentile(lat, 99),
                "bulk_jobs_per_s": statistics.median(x["bulk"]["jobs_per_s"] for x in r),
                "bulk_ratio": ratio(r, "bulk"),
                "drain_jobs_per_s": median(r, "jobs_per_s"),
                "drain_best_jobs_per_s": max(x["jobs_per_s"] for x in r),
                "drain_ratio": ratio(r, None),
                "drain_cpu_us_per_job": median(r, "server_cpu_us_per_job")
                + median(r, "worker_cpu_us_per_job"),
                "not_durable_retries": sum(
                    x["sequential"]["producer_not_durable_retries"]
                    + x["bulk"]["producer_not_durable_retries"]
                    + x["worker_not_durable_retries"]
                    for x in r
                ),
                "others_cpu_pct": statistics.median(
                    y["others_cpu_pct"] for x in r for y in (x, x["sequential"], x["bulk"])
                ),
            }
        )
    return {"jobs": n, "concurrency": c, "summary": summary, "runs": runs}


def reset_pair(b: Bench, replica: redis.Redis) -> None:
    """Bench.reset on the primary; the replica (which gets the FLUSHALL) rewrites its
    AOF too, so that neither pays, during a run, to rewrite what earlier runs wrote."""
    b.reset()
    with contextlib.suppress(redis.ResponseError):  # one is running already: wait for it
        replica.bgrewriteaof()
    deadline = time.monotonic() + 60
    while True:
        persistence = replica.info("persistence")
        if not (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]):
            return
        if time.monotonic() > deadline:
            raise BenchError("the replica's AOF rewrite did not finish in 60s")
        time.sleep(POLL)


# -- report ------------------------------------------------------------------------------


def render(info: dict[str, Any], sizes: Sizes, results: dict[str, dict[str, Any]]) -> str:
    m = info.get("machine", {})
    lines = [
        f"machine: {m.get('cores')} cores ({m.get('cpu')}), Python {m.get('python')}, "
        f"{m.get('server')} (appendfsync everysec), redis-py {m.get('redis_py')}; "
        f"redwork at {m.get('git')}"
        + (" with uncommitted changes in src/" if m.get("src_modified") else "")
        + f"; load average at start {', '.join(map(str, m.get('load_average_at_start', [])))}",
        "This machine is shared: other sessions' processes ran alongside; 'others' is the CPU",
        "they used during the measurement (100% = one core). Medians of "
        f"{sizes.rounds} round(s); worker concurrency {sizes.concurrency}.",
    ]
    for name, r in results.items():
        if "error" in r:
            lines += ["", f"{name}: FAILED: {r['error']}"]
    if (r := results.get("spread")) and "error" not in r:
        lines += [
            "",
            f"spread: {r['jobs']:,} no-op jobs dealt evenly over one queue per primary, one "
            "worker process per queue",
            f"(cores: {m.get('cores')}; producer, primaries and workers share them, so scaling "
            "is bounded by CPU here, not by the servers)",
        ]
        rows = [
            (
                s["setup"],
                f"{s['enqueue_jobs_per_s']:,.0f}",
                f"{s['drain_jobs_per_s']:,.0f} ({s['drain_best_jobs_per_s']:,.0f})",
                f"{s['drain_vs_single_server']:.2f}",
                "-"
                if s["all_running_jobs_per_s"] is None
                else f"{s['all_running_jobs_per_s']:,.0f}",
                f"{s['worker_start_skew_ms']:.0f}",
                f"{s['drain_cpu_us_per_job']:.0f}",
                f"{s['drain_machine_busy_pct']:.0f}",
                f"{s['drain_others_cpu_pct']:.0f}",
            )
            for s in r["summary"]
        ]
        header = (
            "set-up",
            "enqueue jobs/s",
            "drain jobs/s (best)",
            "vs 1 server",
            "all running",
            "skew ms",
            "CPU us/job",
            "busy %",
            "others %",
        )
        lines += _table(header, rows)
        lines.append(
            "enqueue: prepare + one enqueue_many; drain: first started_at to last finished_at "
            "(server clocks);\nall running: jobs/s while every worker process was running "
            "(skew: how much later the last one started); CPU us/job: servers + workers"
        )
    if (r := results.get("durable")) and "error" not in r:
        lines += [
            "",
            f"durable: primary + 1 replica (Sentinel URL), appendfsync everysec on both; bulk "
            f"and drain {r['jobs']:,} jobs, 1 worker process",
        ]
        rows = [
            (
                s["setting"],
                f"{_rate(s['sequential_jobs_per_s'])} ({s['sequential_ratio']:.2f})",
                f"{s['sequential_p50_ms']:.2f} / {s['sequential_p99_ms']:.2f}",
                f"{s['bulk_jobs_per_s']:,.0f} ({s['bulk_ratio']:.2f})",
                f"{s['drain_jobs_per_s']:,.0f} ({s['drain_ratio']:.2f})",
                f"{s['drain_best_jobs_per_s']:,.0f}",
                f"{s['drain_cpu_us_per_job']:.0f}",
                str(s["not_durable_retries"]),
                f"{s['others_cpu_pct']:.0f}",
            )
            for s in r["summary"]
        ]
        header = (
            "setting",
            "sequential jobs/s (x off)",
            "p50 / p99 ms",
            "bulk jobs/s (x off)",
            "drain jobs/s (x off)",
            "best",
            "CPU us/job",
            "NotDurable retries",
            "others %",
        )
        lines += _table(header, rows)
        calls = ", ".join(f"{s['sequential_calls']}" for s in r["summary"])
        lines.append(
            f"sequential: task.enqueue one call after the other ({calls} calls in all, at most "
            f"{sizes.sequential_calls:,} or {sizes.sequential_seconds:g} s per round); p50/p99 of "
            "each call's latency;\ndrain: as in spread, its CPU us/job: servers + worker; "
            "NotDurable retries: producer and workers, all rounds"
        )
    return "\n".join(lines)


def _rate(jobs_per_s: float) -> str:
    return f"{jobs_per_s:,.0f}" if jobs_per_s >= 100 else f"{jobs_per_s:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=True)]
    out = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    out.append("-" * len(out[0]))
    for row in rows:
        out.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return out


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="one scenario")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, 1 with --quick)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="worker concurrency (default 50)"
    )
    return parser.parse_args(argv)


RUNNERS: dict[str, Callable[[Sizes, Config, Path, dict[str, Any]], dict[str, Any]]] = {
    "spread": spread,
    "durable": durable,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.make(args)
    config = Config.make(args.quick, (sizes.concurrency,), 0)
    info: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="redwork-cluster-bench-") as tmp:
        for name in sizes.scenarios:
            log(f"-- {name}")
            t0 = time.perf_counter()
            try:
                results[name] = RUNNERS[name](sizes, config, Path(tmp) / name, info)
            except (BenchError, RedworkError, redis.RedisError, OSError) as exc:
                log(f"{name} failed: {exc!r}")
                results[name] = {"error": repr(exc)}
            log(f"{name} took {time.perf_counter() - t0:.0f}s")
    if args.json:
        document = {"machine": info.get("machine"), "sizes": asdict(sizes), "results": results}
        print(json.dumps(_no_nan(document), indent=2))
    else:
        print(render(info, sizes, results))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
