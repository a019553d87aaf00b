"""redwork soak run (issue 8): a steady stream of no-op jobs for minutes.

Jobs go through several worker processes; the run reports the throughput per minute,
the server's memory before, during and after the results expire, and the workers' RSS.
A private Valkey server and real worker processes, as in bench/run.py; it asserts
nothing. See bench/README.md, "Soak".

    .venv/bin/python bench/soak.py            # 1,000,000 jobs over 10 minutes, 4 workers
    .venv/bin/python bench/soak.py --quick    # 50,000 jobs over 1 minute
    .venv/bin/python bench/soak.py --jobs 200000 --minutes 2 --json
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/soak.py`, bench/ would come first on sys.path, and its http.py
# would shadow the standard library's `http`: the repository root goes first instead.
sys.path[:] = [str(ROOT)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")
]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from importlib import resources  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402

from bench.http import CpuMeter  # noqa: E402
from bench.run import (  # noqa: E402
    Bench,
    BenchError,
    Config,
    Workers,
    _no_nan,
    log,
    machine,
    proc_cpu,
    running_server,
)
from bench.tasks import app, noop  # noqa: E402
from redwork.registry import live_workers  # noqa: E402
from redwork.scripts import load  # noqa: E402

BATCH_INTERVAL = 0.1  # seconds between the producer's enqueue_many calls
SAMPLE_EVERY = 1.0  # seconds between reads of the queue's counters and INFO memory
WINDOW_EVERY = 10.0  # seconds between reads of RSS and CPU from /proc
# The producer paces the jobs at a rate the machine sustains with room to spare (drain_2
# of run.py does about 18,000 jobs/s), so the last job completes within a second or so
# of the last enqueue; a run still draining after this long did not keep up at all.
DRAIN_DEADLINE = 120.0
EXPIRY_MARGIN = 60.0  # seconds past result_ttl to wait for the results to be gone
# The server records what blocked it for longer than this (LATENCY LATEST), which
# explains a late batch or a dip in the rate: a fork for an AOF rewrite, a slow fsync.
LATENCY_THRESHOLD_MS = 20
MEMORY_FIELDS = (
    "used_memory",
    "used_memory_dataset",
    "used_memory_overhead",
    "used_memory_scripts",
    "used_memory_vm_eval",
    "number_of_cached_scripts",
    "mem_clients_normal",
    "mem_aof_buffer",
    "used_memory_rss",
    "lazyfree_pending_objects",
)
MIB = 1024 * 1024


@dataclass(frozen=True)
class SoakConfig:
    jobs: int
    minutes: float
    workers: int
    concurrency: int
    result_ttl: int

    @property
    def rate(self) -> float:
        return self.jobs / (60 * self.minutes)

    @property
    def batches(self) -> int:
        return max(1, round(60 * self.minutes / BATCH_INTERVAL))


def rss_kb(pid: int | None) -> int | None:
    """Resident set size of a process (VmRSS), kB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class SoakWorkers(Workers):
    """run.py's Workers, with the short result TTL the soak needs, and their pids."""

    def __init__(self, bench: Bench, count: int, concurrency: int, result_ttl: int) -> None:
        super().__init__(bench, count, concurrency, env={"REDWORK_RESULT_TTL": str(result_ttl)})
        self.result_ttl = result_ttl

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.procs]


def memory(b: Bench) -> dict[str, Any]:
    """INFO memory (the fields that explain used_memory), the keyspace and the size of
    the keyspace's own hash tables (MEMORY STATS)."""
    info = b.r.info("memory")
    db = b.r.info("keyspace").get("db0", {})
    tables = b.r.memory_stats().get("db.0", {})
    return {
        **{f: info.get(f) for f in MEMORY_FIELDS},
        "keys": int(db.get("keys", 0)),
        "expires": int(db.get("expires", 0)),
        "hashtable_main": tables.get("overhead.hashtable.main"),
        "hashtable_expires": tables.get("overhead.hashtable.expires"),
    }


def key_sizes(b: Bench) -> dict[str, dict[str, Any]]:
    """Every key with its type, TTL and MEMORY USAGE (exact: SAMPLES 0). Only called
    when the keyspace is small (at the baseline and after the results expired)."""
    names = [k.decode() for k in b.r.scan_iter(count=1000)]
    pipe = b.r.pipeline(transaction=False)
    for name in names:
        pipe.type(name)
        pipe.ttl(name)
        pipe.memory_usage(name, samples=0)
    replies = pipe.execute()
    return {
        name: {
            "type": replies[3 * i].decode(),
            "ttl": replies[3 * i + 1],
            "bytes": replies[3 * i + 2],
        }
        for i, name in enumerate(names)
    }


def scripts_cached(b: Bench) -> list[str]:
    """The redwork scripts the server has in its script cache."""
    names = sorted(
        f.name.removesuffix(".lua")
        for f in resources.files("redwork.scripts").iterdir()
        if f.name.endswith(".lua")
    )
    return [
        n
        for n, cached in zip(names, b.r.script_exists(*(load(n).sha for n in names)), strict=True)
        if cached
    ]


def server_time(b: Bench) -> dict[str, float]:
    """The server's own account of where its time went so far (INFO stats, debug and
    cpu): event loop time in µs, split into commands, AOF writes and the cron (whose slow
    expiry cycle is part of it; the fast one runs before each sleep); the active expiry
    in ms; and the CPU of its forked children (the AOF rewrites)."""
    stats, debug, cpu = b.r.info("stats"), b.r.info("debug"), b.r.info("cpu")
    return {
        "cycles": stats["eventloop_cycles"],
        "loop_us": stats["eventloop_duration_sum"],
        "commands_us": stats["eventloop_duration_cmd_sum"],
        "aof_us": debug["eventloop_duration_aof_sum"],
        "cron_us": debug["eventloop_duration_cron_sum"],
        "expire_cycle_us": 1000 * stats["expire_cycle_cpu_milliseconds"],
        "expired_keys": stats["expired_keys"],
        "forks": stats["total_forks"],
        "children_cpu_s": cpu["used_cpu_user_children"] + cpu["used_cpu_sys_children"],
    }


def commandstats(b: Bench) -> dict[str, tuple[int, int]]:
    """Calls and microseconds per command so far (INFO commandstats)."""
    stats = b.r.info("commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats.items()}


def events_mix(b: Bench) -> dict[str, dict[str, int]]:
    """Entries of the queue's events stream and the job ids they name, per kind of
    event: the stream is capped in entries, and an entry names every job of one script
    call, so this is what its size is made of."""
    mix: dict[str, dict[str, int]] = {}
    start = "-"
    while entries := b.r.xrange(b.queue.events, start, "+", count=1000):
        for _, fields in entries:
            kind = mix.setdefault(fields[b"event"].decode(), {"entries": 0, "jobs": 0})
            kind["entries"] += 1
            kind["jobs"] += fields[b"jobs"].count(b",") + 1
        start = "(" + entries[-1][0].decode()
    return mix


def latency_events(b: Bench, wall_start: float) -> dict[str, list[tuple[float, int]]]:
    """Per kind of event the server's latency monitor recorded: (seconds since the
    producer started, ms) of each, from LATENCY HISTORY (its last 160 per kind)."""
    kinds = [row[0].decode() for row in b.r.execute_command("LATENCY", "LATEST")]
    return {
        kind: [
            (round(int(ts) - wall_start), int(ms))
            for ts, ms in b.r.execute_command("LATENCY", "HISTORY", kind)
        ]
        for kind in kinds
    }


class Monitor:
    """Samples taken between the producer's batches and while the run waits afterwards:
    the queue's counters and INFO every second, RSS and CPU (from /proc) every 10 s."""

    def __init__(self, b: Bench, workers: SoakWorkers, pids: dict[str, int | None]) -> None:
        self.b = b
        self.workers = workers
        self.pids = pids
        self.start = time.perf_counter()
        self.wall_start = time.time()
        self.samples: list[dict[str, Any]] = []
        self.windows: list[dict[str, Any]] = []
        self.next_sample = self.start
        self.next_window = self.start + WINDOW_EVERY
        self.meter = CpuMeter(self.pids)
        self.memory_max = (0, 0.0)  # (used_memory, t)

    def t(self) -> float:
        return time.perf_counter() - self.start

    def poll(self) -> None:
        now = time.perf_counter()
        if now >= self.next_sample:
            self.sample()
            while self.next_sample <= now:
                self.next_sample += SAMPLE_EVERY
        if now >= self.next_window:
            self.window()
            while self.next_window <= now:
                self.next_window += WINDOW_EVERY

    def sample(self) -> dict[str, Any]:
        self.workers.check()
        pipe = self.b.r.pipeline(transaction=False)
        pipe.hmget(self.b.queue.stats, ["enqueued", "completed", "failed"])
        pipe.info("memory")
        pipe.dbsize()
        pipe.info("persistence")
        (enqueued, completed, failed), info, keys, persistence = pipe.execute()
        used = int(info["used_memory"])
        sample = {
            "t": self.t(),
            "enqueued": int(enqueued or 0),
            "completed": int(completed or 0),
            "failed": int(failed or 0),
            "used_memory": used,
            "keys": int(keys),
            "aof_rewrites": int(persistence["aof_rewrites"]),
        }
        self.samples.append(sample)
        if used > self.memory_max[0]:
            self.memory_max = (used, sample["t"])
        return sample

    def window(self) -> dict[str, Any]:
        """RSS now, and CPU since the last window."""
        cpu = self.meter.stop()
        self.meter = CpuMeter(self.pids)
        window = {
            "t": self.t(),
            "rss_kb": {name: rss_kb(pid) for name, pid in self.pids.items()},
            **{k: v for k, v in cpu.items() if not k.endswith("_wait_pct")},
        }
        self.windows.append(window)
        return window


def cpu_now(pids: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds used so far by each process, and by this one (the producer)."""
    return {name: proc_cpu(pid) for name, pid in pids.items()} | {"producer": time.process_time()}


def produce(b: Bench, cfg: SoakConfig, monitor: Monitor) -> dict[str, Any]:
    """cfg.jobs no-op jobs in cfg.batches enqueue_many calls, one every BATCH_INTERVAL
    on the producer's clock (a late batch is sent at once, so the total stays on time)."""
    late: list[tuple[float, float]] = []  # (t, seconds late)
    slow: list[tuple[float, float]] = []  # (t, seconds) of enqueue_many calls
    for i in range(cfg.batches):
        due = monitor.start + i * BATCH_INTERVAL
        monitor.poll()
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif -delay > BATCH_INTERVAL:
            late.append((monitor.t(), -delay))
        size = cfg.jobs * (i + 1) // cfg.batches - cfg.jobs * i // cfg.batches
        sent = time.perf_counter()
        app.enqueue_many(noop.prepare() for _ in range(size))
        if (took := time.perf_counter() - sent) > BATCH_INTERVAL:
            slow.append((sent - monitor.start, took))
    return {
        "batches": cfg.batches,
        "late_batches": len(late),
        "max_lateness_s": max((s for _, s in late), default=0.0),
        "late": late,
        "slow_calls": slow,
    }


def wait_drained(b: Bench, cfg: SoakConfig, monitor: Monitor) -> None:
    deadline = time.monotonic() + DRAIN_DEADLINE
    while (done := b.completed()) < cfg.jobs:
        monitor.poll()
        if time.monotonic() > deadline:
            raise BenchError(
                f"only {done:,} of {cfg.jobs:,} jobs completed {DRAIN_DEADLINE:g}s "
                "after the last enqueue"
            )
        time.sleep(0.01)
    monitor.sample()


def wait_expired(
    b: Bench, cfg: SoakConfig, monitor: Monitor, baseline: dict[str, Any], done_keys: int
) -> float | None:
    """Until the only keys with a TTL are those of the baseline (the worker registry) and
    the per-minute completion counters (kept an hour), and nothing is left to free in
    the background; seconds it took, or None at the deadline."""
    start = time.monotonic()
    deadline = start + cfg.result_ttl + EXPIRY_MARGIN
    while True:
        monitor.poll()
        now = memory(b)
        if (
            now["expires"] <= baseline["expires"] + done_keys
            and not now["lazyfree_pending_objects"]
        ):
            return time.monotonic() - start
        if time.monotonic() > deadline:
            return None
        time.sleep(SAMPLE_EVERY)


def per_period(samples: list[dict[str, Any]], period: float, end: float) -> list[dict[str, Any]]:
    """Enqueued and completed per `period` seconds from the producer's start to `end`
    (the sample at which the last job completed, which the last period extends to).
    Boundaries fall on the first sample at or past each multiple of `period`."""
    rows: list[dict[str, Any]] = []
    run = [s for s in samples if s["t"] <= end]
    first = run[0]
    boundary = period
    for s in run[1:]:
        last = s is run[-1]
        if s["t"] >= boundary or last:
            if last and rows and s["t"] - first["t"] < period / 2:
                first = rows.pop()["from"]  # a short tail joins the period before
            seconds = s["t"] - first["t"]
            rows.append(
                {
                    "from": first,
                    "t0": first["t"],
                    "t1": s["t"],
                    "enqueued": s["enqueued"] - first["enqueued"],
                    "completed": s["completed"] - first["completed"],
                    "completed_per_s": (s["completed"] - first["completed"]) / seconds,
                    "used_memory": s["used_memory"],
                }
            )
            first = s
            boundary = period * (math.floor(s["t"] / period) + 1)
    return [{k: v for k, v in r.items() if k != "from"} for r in rows]


def cpu_share(windows: list[dict[str, Any]], t0: float, t1: float, names: list[str]) -> float:
    """Percent of a core the processes `names` used together (or "others": every process
    outside the run) over the 10-s windows that end in (t0, t1]."""
    inside = [w for w in windows if t0 < w["t"] <= t1 + WINDOW_EVERY / 2]
    seconds = sum(w["measured_s"] for w in inside)
    if not seconds:
        return math.nan
    if names == ["others"]:
        return sum(w["others_cpu_pct"] * w["measured_s"] for w in inside) / seconds
    return 100 * sum(w[f"{name}_cpu_s"] for w in inside for name in names) / seconds


def soak(b: Bench, cfg: SoakConfig) -> dict[str, Any]:
    with SoakWorkers(b, cfg.workers, cfg.concurrency, cfg.result_ttl) as workers:
        b.wait_idle(workers)
        pids = {"server": b.server.pid, **{f"w{i}": p for i, p in enumerate(workers.pids)}}
        baseline = memory(b)
        baseline_keys = key_sizes(b)
        baseline_scripts = scripts_cached(b)
        idle_rss = {name: rss_kb(pid) for name, pid in pids.items()}
        log(
            f"baseline: used_memory {baseline['used_memory'] / MIB:.2f} MiB, "
            f"{baseline['keys']} keys; {cfg.workers} workers idle"
        )
        log(
            f"producing {cfg.jobs:,} jobs over {cfg.minutes:g} min ({cfg.rate:,.0f} jobs/s, "
            f"{cfg.batches:,} batches of ~{cfg.jobs / cfg.batches:,.0f}); result_ttl "
            f"{cfg.result_ttl}s"
        )
        b.r.config_set("latency-monitor-threshold", LATENCY_THRESHOLD_MS)
        server_start = b.r.time()[0]
        aof_rewrites = b.aof_rewrites()
        delayed_fsyncs = int(b.r.info("persistence")["aof_delayed_fsync"])
        commands0 = commandstats(b)
        time0 = server_time(b)
        cpu0 = cpu_now(pids)
        monitor = Monitor(b, workers, pids)
        produced = produce(b, cfg, monitor)
        produced_t = monitor.t()
        log(f"produced in {produced_t:.1f}s ({produced['late_batches']} batches late); draining")
        wait_drained(b, cfg, monitor)
        drained_t = monitor.t()
        cpu1 = cpu_now(pids)
        commands1 = commandstats(b)
        time1 = server_time(b)
        server_end = b.r.time()[0]
        end = memory(b)
        end_events = b.r.memory_usage(b.queue.events, samples=0)
        end_rss = {name: rss_kb(pid) for name, pid in pids.items()}
        log(
            f"all {cfg.jobs:,} completed at {drained_t:.1f}s; used_memory "
            f"{end['used_memory'] / MIB:.2f} MiB, {end['keys']:,} keys; waiting up to "
            f"{cfg.result_ttl + EXPIRY_MARGIN:g}s for the results to expire"
        )
        minutes = range(server_start // 60, server_end // 60 + 1)
        done_keys = int(b.r.exists(*(f"{b.queue.prefix}done:{m}" for m in minutes)))
        expiry_s = wait_expired(b, cfg, monitor, baseline, done_keys)
        monitor.sample()
        cpu2 = cpu_now(pids)
        time2 = server_time(b)
        expired = memory(b)
        expired_keys = key_sizes(b)
        scripts = {"baseline": baseline_scripts, "after_expiry": scripts_cached(b)}
        mix = events_mix(b)
        expired_rss = {name: rss_kb(pid) for name, pid in pids.items()}
        peak = int(b.r.info("memory")["used_memory_peak"])
        done_by = {str(w.pid or "?"): w.done for w in live_workers(b.r)}
        aof_rewrites = b.aof_rewrites() - aof_rewrites
        delayed_fsyncs = int(b.r.info("persistence")["aof_delayed_fsync"]) - delayed_fsyncs
        latency = latency_events(b, monitor.wall_start)
        log(
            "results expired after "
            + (f"{expiry_s:.0f}s" if expiry_s is not None else "the deadline: NOT all")
            + f"; used_memory {expired['used_memory'] / MIB:.2f} MiB, {expired['keys']} keys"
        )
    return report(
        cfg,
        monitor,
        {
            "produced": produced,
            "producer_t": produced_t,
            "drained_t": drained_t,
            "expiry_s": expiry_s,
            "aof_rewrites": aof_rewrites,
            "aof_delayed_fsyncs": delayed_fsyncs,
            "latency": latency,
            "cpu": [cpu0, cpu1, cpu2],
            "commands": (commands0, commands1),
            "server_time": (time0, time1, time2),
            "events_mix": mix,
            "scripts": scripts,
            "end_events_bytes": end_events,
            "done_keys": done_keys,
            "memory": {"baseline": baseline, "end": end, "expired": expired, "peak": peak},
            "keys": {"baseline": baseline_keys, "expired": expired_keys},
            "rss": {"idle": idle_rss, "end": end_rss, "expired": expired_rss},
            "done_by_pid": done_by,
            "pids": pids,
        },
    )


def report(cfg: SoakConfig, monitor: Monitor, raw: dict[str, Any]) -> dict[str, Any]:
    drained_t = raw["drained_t"]
    windows = monitor.windows
    minutes = per_period(monitor.samples, 60.0, drained_t)
    workers = [name for name in raw["pids"] if name != "server"]
    groups = {"server": ["server"], "workers": workers, "others": ["others"]}
    for m in minutes:
        for who, names in groups.items():
            m[f"{who}_cpu_pct"] = cpu_share(windows, m["t0"], m["t1"], names)
        last = [w for w in windows if w["t"] <= m["t1"] + WINDOW_EVERY / 2][-1:]
        m["worker_rss_max_kb"] = max(
            (w["rss_kb"][n] or 0 for w in last for n in workers), default=None
        )
        m["server_rss_kb"] = last[0]["rss_kb"]["server"] if last else None
    tens = per_period(monitor.samples, WINDOW_EVERY, drained_t)
    # Steadiness: the full periods only (a last, shorter one is noisier).
    full = [m for m in minutes if m["t1"] - m["t0"] >= 59] or minutes
    rates = [m["completed_per_s"] for m in full]
    full_tens = [p for p in tens if p["t1"] - p["t0"] >= WINDOW_EVERY - 1]
    ten_rates = [p["completed_per_s"] for p in full_tens]
    ten_enqueued = [p["enqueued"] / (p["t1"] - p["t0"]) for p in full_tens]
    in_flight = max(s["enqueued"] - s["completed"] for s in monitor.samples)

    pids = raw["pids"]
    run_windows = [w for w in windows if w["t"] <= drained_t + WINDOW_EVERY / 2]
    first = run_windows[0] if run_windows else None
    rss = {}
    for name in workers:
        run_values = [w["rss_kb"][name] for w in run_windows if w["rss_kb"][name] is not None]
        rss[name] = {
            "pid": pids[name],
            "jobs_done": raw["done_by_pid"].get(str(pids[name])),
            "idle_kb": raw["rss"]["idle"][name],
            "start_kb": first["rss_kb"][name] if first else None,
            "max_kb": max(run_values, default=None),
            "end_kb": raw["rss"]["end"][name],
            "after_expiry_kb": raw["rss"]["expired"][name],
        }
    server_rss = {
        "idle_kb": raw["rss"]["idle"]["server"],
        "end_kb": raw["rss"]["end"]["server"],
        "after_expiry_kb": raw["rss"]["expired"]["server"],
    }

    cpu0, cpu1, cpu2 = raw["cpu"]
    n = cfg.jobs
    worker_cpu = sum(cpu1[w] - cpu0[w] for w in workers)
    expiry_seconds = monitor.samples[-1]["t"] - drained_t
    cpu = {
        "server_us_per_job": 1e6 * (cpu1["server"] - cpu0["server"]) / n,
        "workers_us_per_job": 1e6 * worker_cpu / n,
        "producer_us_per_job": 1e6 * (cpu1["producer"] - cpu0["producer"]) / n,
        "server_pct_of_a_core": 100 * (cpu1["server"] - cpu0["server"]) / drained_t,
        "workers_pct_of_a_core": 100 * worker_cpu / drained_t,
        "others_pct_of_a_core": cpu_share(windows, 0, drained_t, ["others"]),
        "expiry_phase_s": expiry_seconds,
        "expiry_server_cpu_s": cpu2["server"] - cpu1["server"],
        "expiry_workers_cpu_s": sum(cpu2[w] - cpu1[w] for w in workers),
    }

    mem = raw["memory"]
    baseline, expired = mem["baseline"], mem["expired"]
    left = {
        f: (expired[f] - baseline[f])
        for f in (*MEMORY_FIELDS, "keys", "expires", "hashtable_main", "hashtable_expires")
        if isinstance(expired.get(f), int) and isinstance(baseline.get(f), int)
    }
    before, after = raw["keys"]["baseline"], raw["keys"]["expired"]
    new_keys = {k: v for k, v in after.items() if k not in before}
    grown_keys = {
        k: {**v, "bytes_before": before[k]["bytes"]}
        for k, v in after.items()
        if k in before and v["bytes"] != before[k]["bytes"]
    }
    jobs_left = sum(1 for k in after if k.startswith(f"{monitor.b.queue.prefix}job:"))
    # The job hashes alive at the end (every key with a TTL but the worker registry and
    # the per-minute counters), and what each costs, the events stream left out.
    end = mem["end"]
    retained = end["expires"] - baseline["expires"] - raw["done_keys"]
    per_job = (end["used_memory"] - baseline["used_memory"] - raw["end_events_bytes"]) / max(
        retained, 1
    )
    plateau = [
        s["used_memory"]
        for s in monitor.samples
        if cfg.result_ttl + WINDOW_EVERY <= s["t"] <= raw["producer_t"]
    ]
    t0, t1, t2 = raw["server_time"]
    # Per job where it is time (or loop cycles); counts and CPU-s as they are.
    server_time_run = {
        k: (t1[k] - t0[k]) / n if k.endswith("_us") or k == "cycles" else t1[k] - t0[k] for k in t0
    }
    server_time_expiry = {k: t2[k] - t1[k] for k in t0}
    before_c, after_c = raw["commands"]
    commands = {
        name: {
            "calls_per_job": (calls - before_c.get(name, (0, 0))[0]) / n,
            "usec_per_job": (usec - before_c.get(name, (0, 0))[1]) / n,
        }
        for name, (calls, usec) in after_c.items()
        if calls != before_c.get(name, (0, 0))[0]
    }
    return {
        "config": {**asdict(cfg), "rate": cfg.rate, "batches": cfg.batches},
        "producer": raw["produced"] | {"seconds": raw["producer_t"]},
        "drained_at_s": drained_t,
        "failed": monitor.samples[-1]["failed"],
        "max_in_flight": in_flight,
        "minutes": minutes,
        "per_10s": tens,
        "steadiness": {
            "per_minute_min": min(rates),
            "per_minute_mean": sum(rates) / len(rates),
            "per_minute_max": max(rates),
            "per_10s_min": min(ten_rates, default=math.nan),
            "per_10s_max": max(ten_rates, default=math.nan),
            "per_10s_enqueued_min": min(ten_enqueued, default=math.nan),
            "per_10s_enqueued_max": max(ten_enqueued, default=math.nan),
        },
        "memory": {
            "baseline": baseline,
            "peak_sampled": monitor.memory_max[0],
            "peak_sampled_t": monitor.memory_max[1],
            "peak_server": mem["peak"],
            "end": mem["end"],
            "after_expiry": expired,
            "expired_after_s": raw["expiry_s"],
            "left_over_baseline": left,
            "baseline_keys": before,
            "scripts_cached": raw["scripts"],
            "new_keys": new_keys,
            "grown_keys": grown_keys,
            "job_hashes_left": jobs_left,
            "job_hashes_at_end": retained,
            "bytes_per_retained_job": per_job,
            "events_bytes_at_end": raw["end_events_bytes"],
            "plateau_min": min(plateau, default=None),
            "plateau_max": max(plateau, default=None),
            "events_mix": raw["events_mix"],
            "aof_rewrites": raw["aof_rewrites"],
        },
        "server_latency_events": raw["latency"],
        "aof_rewrites_done_at": [
            s["t"]
            for prev, s in zip(monitor.samples, monitor.samples[1:], strict=False)
            if s["aof_rewrites"] > prev["aof_rewrites"]
        ],
        "aof_delayed_fsyncs": raw["aof_delayed_fsyncs"],
        "rss": {"start_t": first["t"] if first else None, "workers": rss, "server": server_rss},
        "cpu": cpu,
        "server_time_per_job": server_time_run,
        "server_time_while_expiring": server_time_expiry,
        "server_commands": dict(sorted(commands.items(), key=lambda kv: -kv[1]["usec_per_job"])),
        "windows": windows,
        "samples": monitor.samples,
    }


def mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / MIB:.2f}"


def render(info: dict[str, Any], r: dict[str, Any]) -> str:
    cfg = r["config"]
    lines = [
        f"machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
        f"{info['server']} (appendfsync {info['fsync']}); load average at start "
        f"{', '.join(map(str, info['load_average_at_start']))}",
        f"redwork {info['redwork']} at {info['git']}"
        + (" with uncommitted changes in src/" if info["src_modified"] else ""),
        f"soak: {cfg['jobs']:,} no-op jobs over {cfg['minutes']:g} min ({cfg['rate']:,.0f} "
        f"jobs/s asked, {cfg['batches']:,} batches), {cfg['workers']} worker processes x "
        f"concurrency {cfg['concurrency']}, result_ttl {cfg['result_ttl']} s",
        "",
        f"{'minute':>6}  {'enqueued':>10}  {'completed':>10}  {'completed/s':>11}  "
        f"{'server %':>8}  {'workers %':>9}  {'others %':>8}  {'used MiB':>8}  "
        f"{'worker RSS':>10}  {'server RSS':>10}",
    ]
    for i, m in enumerate(r["minutes"], 1):
        lines.append(
            f"{i:>6}  {m['enqueued']:>10,}  {m['completed']:>10,}  "
            f"{m['completed_per_s']:>11,.0f}  {m['server_cpu_pct']:>8.0f}  "
            f"{m['workers_cpu_pct']:>9.0f}  {m['others_cpu_pct']:>8.0f}  "
            f"{mib(m['used_memory']):>8}  {mib(1024 * (m['worker_rss_max_kb'] or 0)):>10}  "
            f"{mib(1024 * (m['server_rss_kb'] or 0)):>10}"
        )
    s, p = r["steadiness"], r["producer"]
    mem, cpu = r["memory"], r["cpu"]
    st, se = r["server_time_per_job"], r["server_time_while_expiring"]
    base, end, after = mem["baseline"], mem["end"], mem["after_expiry"]
    expired = (
        f"after {mem['expired_after_s']:.0f} s"
        if mem["expired_after_s"] is not None
        else "NOT all gone by the deadline"
    )
    left = mem["left_over_baseline"]
    lines += [
        "(% columns: CPU in % of one core, others = processes outside the run; used MiB: "
        "used_memory at the minute's end; RSS, MiB: the largest worker's and the server's)",
        "",
        f"completed/s per minute: min {s['per_minute_min']:,.0f}, mean "
        f"{s['per_minute_mean']:,.0f}, max {s['per_minute_max']:,.0f}; per 10 s: min "
        f"{s['per_10s_min']:,.0f}, max {s['per_10s_max']:,.0f} (enqueued/s per 10 s: "
        f"{s['per_10s_enqueued_min']:,.0f} - {s['per_10s_enqueued_max']:,.0f})",
        f"producer: {p['late_batches']} of {p['batches']:,} batches over "
        f"{BATCH_INTERVAL * 1000:.0f} ms late (worst {1000 * p['max_lateness_s']:.0f} ms); "
        f"most jobs in flight (enqueued - completed) {r['max_in_flight']:,}; failed "
        f"{r['failed']}; last job completed {r['drained_at_s'] - p['seconds']:.2f} s after "
        "the last enqueue",
        "  late batches at (s since start, ms late): "
        + (", ".join(f"{t:.0f}: {1000 * d:.0f}" for t, d in p["late"][:12]) or "none"),
        "  enqueue_many calls over 100 ms (s, ms): "
        + (", ".join(f"{t:.0f}: {1000 * d:.0f}" for t, d in p["slow_calls"][:12]) or "none"),
        "  AOF rewrites done by (s): "
        + (", ".join(f"{t:.0f}" for t in r["aof_rewrites_done_at"]) or "none")
        + f"; fsyncs the server had to delay: {r['aof_delayed_fsyncs']}",
        "  server latency events over "
        f"{LATENCY_THRESHOLD_MS} ms (LATENCY HISTORY): "
        + (
            "; ".join(
                f"{kind} x{len(ev)}, max {max(ms for _, ms in ev)} ms"
                for kind, ev in r["server_latency_events"].items()
            )
            or "none"
        ),
        "",
        "Redis used_memory, MiB:",
        f"  baseline (workers registered, no job)   {mib(base['used_memory']):>8}  "
        f"({base['keys']} keys)",
        f"  peak (sampled every 1 s / server's)     {mib(mem['peak_sampled']):>8} / "
        f"{mib(mem['peak_server'])}  (at {mem['peak_sampled_t']:.0f} s)",
        f"  plateau (from result_ttl + 10 s to the last enqueue)  "
        f"{mib(mem['plateau_min'])} - {mib(mem['plateau_max'])}",
        f"  end of run (all jobs completed)         {mib(end['used_memory']):>8}  "
        f"({end['keys']:,} keys: {mem['job_hashes_at_end']:,} job hashes at "
        f"{mem['bytes_per_retained_job']:,.0f} bytes each, events stream "
        f"{mib(mem['events_bytes_at_end'])} MiB)",
        f"  after the results expired ({expired})  {mib(after['used_memory']):>8}  "
        f"({after['keys']} keys, {mem['job_hashes_left']} job hashes)",
        f"  left over the baseline                  {mib(left.get('used_memory')):>8}  "
        f"(+{left.get('keys', 0)} keys; scripts "
        f"{left.get('used_memory_scripts', 0) / 1024:+.1f} KiB, clients "
        f"{left.get('mem_clients_normal', 0) / 1024:+.1f} KiB, keyspace tables "
        f"{left.get('hashtable_main', 0) / 1024:+.1f} KiB)",
    ]
    for name, k in sorted(mem["new_keys"].items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"    new key {name} ({k['type']}, ttl {k['ttl']}): {k['bytes']:,} bytes")
    for name, k in sorted(mem["grown_keys"].items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(
            f"    changed key {name} ({k['type']}): {k['bytes_before']:,} -> {k['bytes']:,} bytes"
        )
    cached = mem["scripts_cached"]
    lines.append(
        "    scripts cached since the baseline: "
        + (", ".join(n for n in cached["after_expiry"] if n not in cached["baseline"]) or "none")
    )
    mix = mem["events_mix"]
    lines.append(
        f"    events stream: {sum(k['entries'] for k in mix.values()):,} entries; "
        + ", ".join(
            f"{kind} {k['entries']:,} naming {k['jobs'] / k['entries']:.1f} jobs each"
            for kind, k in sorted(mix.items(), key=lambda kv: -kv[1]["entries"])
        )
    )
    lines += [
        f"  server RSS, MiB: idle {r['rss']['server']['idle_kb'] / 1024:.1f}, end "
        f"{r['rss']['server']['end_kb'] / 1024:.1f}, after expiry "
        f"{r['rss']['server']['after_expiry_kb'] / 1024:.1f}; AOF rewrites during the run "
        f"{mem['aof_rewrites']}",
        "",
        f"worker RSS, MiB (start: at {r['rss']['start_t']:.0f} s, after their first jobs):",
        f"  {'pid':>8}  {'jobs':>8}  {'idle':>6}  {'start':>6}  {'max':>6}  {'end':>6}  "
        f"{'expired':>7}  {'end-start':>9}",
    ]
    for w in r["rss"]["workers"].values():
        growth = (w["end_kb"] - w["start_kb"]) / 1024 if w["end_kb"] and w["start_kb"] else math.nan
        jobs = f"{w['jobs_done']:,}" if w["jobs_done"] is not None else "?"
        lines.append(
            f"  {w['pid']:>8}  {jobs:>8}  {w['idle_kb'] / 1024:>6.1f}  "
            f"{w['start_kb'] / 1024:>6.1f}  {w['max_kb'] / 1024:>6.1f}  "
            f"{w['end_kb'] / 1024:>6.1f}  "
            f"{w['after_expiry_kb'] / 1024:>7.1f}  {growth:>+9.2f}"
        )
    lines += [
        "",
        f"CPU per job, us: server {cpu['server_us_per_job']:.0f}, workers (all) "
        f"{cpu['workers_us_per_job']:.0f}, producer {cpu['producer_us_per_job']:.0f}; "
        f"over the run: server {cpu['server_pct_of_a_core']:.0f}%, workers "
        f"{cpu['workers_pct_of_a_core']:.0f}%, others {cpu['others_pct_of_a_core']:.0f}% "
        "of a core",
        "server commands per job (calls / us inside the server): "
        + ", ".join(
            f"{name} {c['calls_per_job']:.2f} / {c['usec_per_job']:.1f}"
            for name, c in list(r["server_commands"].items())[:6]
        ),
        "server event loop per job, us (wall time, the server's own account): "
        f"{st['loop_us']:.0f}, of which commands {st['commands_us']:.0f}, AOF writes "
        f"{st['aof_us']:.0f}, cron {st['cron_us']:.0f}; active expiry "
        f"{st['expire_cycle_us']:.0f} ({st['expired_keys']:,} keys expired during the run); "
        f"{st['cycles']:.2f} loop cycles per job; {st['forks']:.0f} forks, whose children "
        f"used {st['children_cpu_s']:.1f} CPU-s",
        f"while the results expired ({cpu['expiry_phase_s']:.0f} s, no jobs): server "
        f"{cpu['expiry_server_cpu_s']:.2f} CPU-s, workers {cpu['expiry_workers_cpu_s']:.2f} "
        f"CPU-s; the server's active expiry {se['expire_cycle_us'] / 1000:,.0f} ms for "
        f"{se['expired_keys']:,} keys",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, help="jobs in all (default 1,000,000)")
    parser.add_argument("--minutes", type=float, help="how long to produce them (default 10)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="job slots per worker process (default 50)"
    )
    parser.add_argument(
        "--result-ttl", type=int, default=30, help="REDWORK_RESULT_TTL of the workers (30 s)"
    )
    parser.add_argument("--quick", action="store_true", help="50,000 jobs over 1 minute")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = 50_000 if args.quick else 1_000_000
    if args.minutes is None:
        args.minutes = 1.0 if args.quick else 10.0
    positive = (args.jobs, args.minutes, args.workers, args.concurrency, args.result_ttl)
    if min(positive) <= 0:
        parser.error(
            "--jobs, --minutes, --workers, --concurrency and --result-ttl must be positive"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = SoakConfig(args.jobs, args.minutes, args.workers, args.concurrency, args.result_ttl)
    with running_server() as (server, tmp):
        b = Bench(server, tmp, Config.make(False, (cfg.concurrency,), 0))
        try:
            info = machine(b)
            log(f"Valkey at {server.url} (pid {server.pid})")
            try:
                result = soak(b, cfg)
            except (BenchError, redis.RedisError, OSError) as exc:
                log(f"soak failed: {exc}")
                return 1
        finally:
            b.close()
    if args.json:
        print(json.dumps(_no_nan({"machine": info, **result}), indent=2))
    else:
        print(render(info, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
