"""redwork workflow benchmark: what a chain and a chord cost, next to the same no-op jobs
run without a workflow. A private Valkey server and real worker processes, as in
bench/run.py; it asserts nothing. See bench/README.md, "Workflows".

    .venv/bin/python bench/workflow.py              # 3 rounds + a profile run, about 6 minutes
    .venv/bin/python bench/workflow.py --quick      # 1,000 jobs, 1 round: a smoke run, about 30 s
    .venv/bin/python bench/workflow.py --only chord --rounds 5 --json
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `python bench/workflow.py` puts bench/ first on sys.path, where bench/http.py would
# shadow the standard library's `http` package: put the root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from importlib import resources  # noqa: E402
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
    log,
    machine,
    running_server,
)
from bench.tasks import app, gather, step  # noqa: E402
from redwork import chain, chord, group  # noqa: E402
from redwork.errors import RedworkError  # noqa: E402
from redwork.queue import text  # noqa: E402
from redwork.scripts import load  # noqa: E402
from redwork.workflow import plan  # noqa: E402

SCENARIOS = ("chain", "chord")
FINAL = {b"succeeded", b"failed", b"cancelled"}
SEQUENCE_KEY = "bench-sequence"  # the one key of the keyed baseline
RESULT_TIMEOUT = 30.0  # seconds the client baseline waits for one job
# Profile runs: every command that takes this long or more goes to the slow log (every
# script call does; most commands a script makes inside take less), which is emptied
# every SLOWLOG_DRAIN seconds and can hold SLOWLOG_MAX_LEN entries in between.
SLOWLOG_THRESHOLD_US = 5
SLOWLOG_DRAIN = 0.2
SLOWLOG_MAX_LEN = 100_000


@dataclass(frozen=True)
class Sizes:
    chain: int
    chord: int
    rounds: int
    processes: int
    concurrency: int
    prefetch: int
    profile: bool
    scenarios: tuple[str, ...]


# -- measuring -----------------------------------------------------------------------


@contextlib.contextmanager
def idle_workers(b: Bench, sizes: Sizes) -> Iterator[Workers]:
    """An empty database, then worker processes started and blocked on their wake-up
    marker before anything is submitted: what is timed is the work, not their start."""
    b.reset()
    with Workers(b, sizes.processes, sizes.concurrency) as workers:
        b.wait_idle(workers)
        yield workers


class SlowLog:
    """For a profile run: the server logs every command that takes SLOWLOG_THRESHOLD_US or
    more (every script call; few of the commands scripts make inside), and a thread
    empties the log every SLOWLOG_DRAIN s (SLOWLOG GET and RESET in one MULTI), adding up
    the server's time by script: INFO commandstats has EVALSHA, one entry for them all."""

    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url)
        self.names = _script_names()
        self.calls: Counter[str] = Counter()
        self.us: Counter[str] = Counter()
        self.longest: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-slowlog")
        config = self.r.config_get("slowlog-*")
        self._restore = {  # the server's settings, put back at the end
            name: config.get(name) or default
            for name, default in (("slowlog-log-slower-than", 10_000), ("slowlog-max-len", 128))
        }

    def start(self) -> None:
        self.r.config_set("slowlog-max-len", SLOWLOG_MAX_LEN)
        self.r.slowlog_reset()
        self.r.config_set("slowlog-log-slower-than", SLOWLOG_THRESHOLD_US)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(SLOWLOG_DRAIN):
            self._drain()

    def _drain(self) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.slowlog_get(-1)
        pipe.slowlog_reset()
        entries, _ = pipe.execute()
        for entry in reversed(entries):  # the log lists the newest first
            command = entry["command"]
            if isinstance(command, bytes):
                command = command.decode(errors="replace")
            words = command.split()
            if not words:
                continue
            name = words[0].lower()
            if name == "evalsha" and len(words) > 1:
                name = self.names.get(words[1].lower(), f"evalsha {words[1][:8]}")
            elif name in ("slowlog", "config", "multi", "exec", "info"):
                continue
            duration = int(entry["duration"])
            self.calls[name] += 1
            self.us[name] += duration
            self.longest[name] = max(self.longest[name], duration)

    def stop(self, jobs: int) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        self.r.config_set("slowlog-log-slower-than", self._restore["slowlog-log-slower-than"])
        self._drain()
        self.r.config_set("slowlog-max-len", self._restore["slowlog-max-len"])
        self.r.close()
        scripts = set(self.names.values())
        return {
            "threshold_us": SLOWLOG_THRESHOLD_US,
            "script_calls_logged": sum(c for n, c in self.calls.items() if n in scripts),
            "by_name": {
                name: {
                    "script": name in scripts,
                    "calls": self.calls[name],
                    "us": us,
                    "us_per_call": us / self.calls[name],
                    "us_per_job": us / jobs,
                    "max_us": self.longest[name],
                }
                for name, us in self.us.most_common()
            },
        }


def _script_names() -> dict[str, str]:
    """Script SHA -> name, for every script redwork has."""
    names = {}
    for entry in resources.files("redwork.scripts").iterdir():
        if entry.name.endswith(".lua"):
            script = load(entry.name.removesuffix(".lua"))
            names[script.sha] = script.name
    return names


class Meter:
    """CPU (server, workers, everyone else), time inside scripts and the server's
    commands (INFO commandstats, which counts every redis.call inside a script too) over
    one measurement; with `profile`, the server's time by script (SlowLog)."""

    def __init__(self, b: Bench, workers: Workers, profile: bool) -> None:
        self.b = b
        self.slowlog = SlowLog(b.url) if profile else None
        self.commands = b.commandstats()
        self.script_us = b.evalsha_usec()
        self.rewrites = b.aof_rewrites()
        if self.slowlog is not None:
            self.slowlog.start()
        pids: dict[str, int | None] = {"server": b.server.pid}
        pids.update({f"worker{i}": proc.pid for i, (proc, _) in enumerate(workers.procs, 1)})
        self.cpu = CpuMeter(pids)

    def stop(self, jobs: int, polls: int) -> dict[str, Any]:
        """Figures per job; `polls`: the benchmark's own HGETs, left out of the count."""
        cpu = self.cpu.stop()
        b = self.b
        out: dict[str, Any] = {}
        if self.slowlog is not None:
            out["profile"] = self.slowlog.stop(jobs)
        script_us = b.evalsha_usec() - self.script_us
        commands = b.commandstats() - self.commands
        for own in ("info", "config|get", "config|set", "slowlog|get", "slowlog|reset"):
            commands.pop(own, None)  # the benchmark's own (MULTI/EXEC only when profiling)
        if self.slowlog is not None:
            commands.pop("multi", None)
            commands.pop("exec", None)
            out["profile"]["script_calls"] = commands["evalsha"]
        commands["hget"] -= polls
        commands = +commands
        workers = sum(v for k, v in cpu.items() if k.startswith("worker") and k.endswith("_s"))
        return {
            "server_cpu_us_per_job": 1e6 * cpu["server_cpu_s"] / jobs,
            "worker_cpu_us_per_job": 1e6 * workers / jobs,
            "server_script_us_per_job": script_us / jobs,
            "server_commands_per_job": commands.total() / jobs,
            "server_commands": dict(commands.most_common()),
            "aof_rewrites": b.aof_rewrites() - self.rewrites,
            "others_cpu_pct": cpu["others_cpu_pct"],
            "machine_busy_pct": cpu["machine_busy_pct"],
            **out,
        }


def wait_workflow_end(b: Bench, workflow_id: str, workers: Workers, timeout: float) -> int:
    """Poll the workflow's status until it is final; returns the number of polls (HGETs).
    Not app.client.wait_workflow: it reads every node before and after (10,001 of them),
    work the server would do inside the measurement."""
    key = b.queue.workflow_key(workflow_id)
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        polls += 1
        if b.r.hget(key, "status") in FINAL:
            return polls
        workers.check()
        if time.monotonic() > deadline:
            raise BenchError(f"workflow {workflow_id} not over after {timeout:.0f}s")
        time.sleep(POLL)


def finished_workflow(b: Bench, workflow_id: str, nodes: int) -> dict[str, int]:
    raw = b.r.hgetall(b.queue.workflow_key(workflow_id))
    wf = {text(k): text(v) for k, v in raw.items()}
    if wf.get("status") != "succeeded" or int(wf.get("succeeded", 0)) != nodes:
        raise BenchError(f"workflow {workflow_id} ended {wf}; expected {nodes} succeeded")
    return {k: int(wf[k]) for k in ("created_at", "started_at", "finished_at")}


def order_violations(b: Bench, ids: list[str]) -> int:
    """Jobs (in sequence order) that started before the one before them had finished,
    on the server's clock (ms): a sequence allows none."""
    violations, previous_end = 0, 0
    for started, finished in b.job_fields(ids, "started_at", "finished_at"):
        if started is None or finished is None:
            raise BenchError("a job of the sequence has no started_at/finished_at")
        violations += int(started) < previous_end
        previous_end = int(finished)
    return violations


def _timeout(n: int) -> float:
    return 60.0 + n * 0.02


# -- variants ------------------------------------------------------------------------


def _enqueue_and_drain(
    b: Bench, sizes: Sizes, envelopes: list[Any], profile: bool
) -> tuple[list[str], dict[str, Any], int, int]:
    """Enqueue the jobs with one enqueue_many call into idle workers and wait until all
    completed. Returns their ids; jobs, end to end, submit time and the run's meters;
    and the server times (ms) of the first start and the last end."""
    n = len(envelopes)
    with idle_workers(b, sizes) as workers:
        meter = Meter(b, workers, profile)
        t0 = time.time()
        ids = [h.id for h in app.enqueue_many(envelopes)]
        submit_s = time.time() - t0
        polls = b.wait_completed(n, workers, _timeout(n))
        run = meter.stop(n, polls)
    b.check_no_failures()
    first, last, _ = b.span_ms(ids)
    figures = {"jobs": n, "end_to_end_s": last / 1000 - t0, "submit_s": submit_s, **run}
    return ids, figures, first, last


def batch(b: Bench, sizes: Sizes, n: int, profile: bool = False) -> dict[str, Any]:
    """n no-op jobs, no workflow: one enqueue_many call into idle workers, drained."""
    envelopes = [step.prepare() for _ in range(n)]
    _, figures, first, last = _enqueue_and_drain(b, sizes, envelopes, profile)
    return {
        **figures,
        "jobs_per_s": n / figures["end_to_end_s"],
        "first_start_to_last_end_s": (last - first) / 1000,
    }


def keyed_sequence(b: Bench, sizes: Sizes, n: int, profile: bool = False) -> dict[str, Any]:
    """n no-op jobs with one key, no workflow: they run one at a time, in order, and
    each completion puts the next job in line inside the complete script, as a chain
    releases its next step. One enqueue_many call into idle workers."""
    keyed = step.options(key=SEQUENCE_KEY)
    envelopes = [keyed.prepare() for _ in range(n)]
    ids, figures, _, _ = _enqueue_and_drain(b, sizes, envelopes, profile)
    return {
        **figures,
        "per_job_ms": 1000 * figures["end_to_end_s"] / n,
        "order_violations": order_violations(b, ids),
    }


def client_sequence(b: Bench, sizes: Sizes, n: int, profile: bool = False) -> dict[str, Any]:
    """n no-op jobs, no workflow, no key: the benchmark's process enqueues one, waits
    for its result (JobHandle.result), then enqueues the next."""
    ids: list[str] = []
    with idle_workers(b, sizes) as workers:
        meter = Meter(b, workers, profile)
        t0 = time.time()
        for _ in range(n):
            handle = step.enqueue()
            handle.result(RESULT_TIMEOUT)
            ids.append(handle.id)
        run = meter.stop(n, 0)
        workers.check()
    _, last, _ = b.span_ms(ids)
    end_to_end = last / 1000 - t0
    return {
        "jobs": n,
        "end_to_end_s": end_to_end,
        "per_job_ms": 1000 * end_to_end / n,
        "order_violations": order_violations(b, ids),
        **run,
    }


def chain_run(b: Bench, sizes: Sizes, n: int, profile: bool = False) -> dict[str, Any]:
    """A chain of n no-op steps (n - 1 edges), each given the previous result, submitted
    with one app.submit call into idle workers; timed to the workflow's finished_at."""
    steps = [step.s() for _ in range(n)]
    shape = chain(*steps)
    with idle_workers(b, sizes) as workers:
        plan_s = _plan_seconds(shape)
        meter = Meter(b, workers, profile)
        t0 = time.time()
        handle = app.submit(shape)
        submit_s = time.time() - t0
        polls = wait_workflow_end(b, handle.id, workers, _timeout(n))
        run = meter.stop(n, polls)
    wf = finished_workflow(b, handle.id, n)
    ids = [s.id for s in steps]
    first, last, _ = b.span_ms(ids)
    end_to_end = wf["finished_at"] / 1000 - t0
    return {
        "jobs": n,
        "edges": n - 1,
        "end_to_end_s": end_to_end,
        "submit_s": submit_s,
        "plan_s": plan_s,
        "per_job_ms": 1000 * end_to_end / n,
        "first_start_to_last_end_s": (last - first) / 1000,
        "last_end_to_workflow_end_ms": wf["finished_at"] - last,
        "order_violations": order_violations(b, ids),
        **run,
    }


def chord_run(b: Bench, sizes: Sizes, n: int, profile: bool = False) -> dict[str, Any]:
    """A group of n no-op members and one callback given the list of their n results
    (n edges), submitted with one app.submit call into idle workers."""
    members = [step.s() for _ in range(n)]
    callback = gather.s()
    shape = chord(group(members), callback)
    with idle_workers(b, sizes) as workers:
        plan_s = _plan_seconds(shape)
        meter = Meter(b, workers, profile)
        t0 = time.time()
        handle = app.submit(shape)
        submit_s = time.time() - t0
        polls = wait_workflow_end(b, handle.id, workers, _timeout(n))
        run = meter.stop(n + 1, polls)
    wf = finished_workflow(b, handle.id, n + 1)
    result, cb_start, cb_end = b.r.hmget(
        b.queue.job_key(callback.id), "result", "started_at", "finished_at"
    )
    if result is None or json.loads(result) != n:
        raise BenchError(f"the callback returned {result!r}; expected {n}")
    first, last, _ = b.span_ms([m.id for m in members])
    if cb_start is None or cb_end is None:
        raise BenchError("the callback has no started_at/finished_at")
    end_to_end = wf["finished_at"] / 1000 - t0
    return {
        "jobs": n + 1,
        "edges": n,
        "end_to_end_s": end_to_end,
        "submit_s": submit_s,
        "plan_s": plan_s,
        "jobs_per_s": (n + 1) / end_to_end,
        "members_first_start_to_last_end_s": (last - first) / 1000,
        "last_member_end_to_callback_start_ms": int(cb_start) - last,
        "last_member_end_to_callback_end_ms": int(cb_end) - last,
        "callback_end_to_workflow_end_ms": wf["finished_at"] - int(cb_end),
        **run,
    }


def _plan_seconds(shape: Any) -> float:
    """What app.submit spends checking and encoding the workflow, before its one script
    call; timed apart (a plan with a throwaway id), outside the measurement."""
    t0 = time.perf_counter()
    plan(shape, None, None, app.settings.max_payload)
    return time.perf_counter() - t0


VARIANTS: dict[str, Callable[..., dict[str, Any]]] = {
    "batch": batch,
    "chain": chain_run,
    "keyed_sequence": keyed_sequence,
    "client_sequence": client_sequence,
    "chord": chord_run,
}


def plan_rounds(sizes: Sizes) -> list[tuple[str, int]]:
    """The variants of one round, in order; the batch baseline once per size."""
    todo: list[tuple[str, int]] = []
    if "chain" in sizes.scenarios:
        todo += [("batch", sizes.chain), ("chain", sizes.chain)]
        todo += [("keyed_sequence", sizes.chain), ("client_sequence", sizes.chain)]
    if "chord" in sizes.scenarios:
        if ("batch", sizes.chord) not in todo:
            todo.append(("batch", sizes.chord))
        todo.append(("chord", sizes.chord))
    return todo


def describe(name: str, n: int, run: dict[str, Any]) -> str:
    parts = [f"{name} n={n:,}: end to end {run['end_to_end_s']:.3f}s"]
    if "submit_s" in run:
        parts.append(f"submit call {run['submit_s']:.3f}s")
    if "plan_s" in run:
        parts.append(f"(planning {run['plan_s']:.3f}s)")
    if "per_job_ms" in run:
        parts.append(f"{run['per_job_ms']:.3f} ms/job")
    if "jobs_per_s" in run:
        parts.append(f"{run['jobs_per_s']:,.0f} jobs/s")
    parts.append(
        f"CPU per job: server {run['server_cpu_us_per_job']:.0f} us (scripts "
        f"{run['server_script_us_per_job']:.0f}), workers {run['worker_cpu_us_per_job']:.0f} "
        f"us; {run['server_commands_per_job']:.1f} server commands/job; others used "
        f"{run['others_cpu_pct']:.0f}% of a core"
    )
    return "; ".join(parts)


# -- summary -------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def summarise(runs: dict[str, list[dict[str, Any]]], sizes: Sizes) -> dict[str, Any]:
    """Medians and ranges; the overheads are paired by round (runs next to each other)."""

    def get(variant: str, n: int, field: str) -> list[float]:
        return [r[field] for r in runs.get(f"{variant}/{n}", [])]

    out: dict[str, Any] = {}
    fields = (
        "end_to_end_s",
        "submit_s",
        "plan_s",
        "per_job_ms",
        "jobs_per_s",
        "server_cpu_us_per_job",
        "server_script_us_per_job",
        "server_commands_per_job",
        "worker_cpu_us_per_job",
        "others_cpu_pct",
        "last_member_end_to_callback_end_ms",
        "last_member_end_to_callback_start_ms",
    )
    for key, variant_runs in runs.items():
        out[key] = {f: spread([r[f] for r in variant_runs]) for f in fields if f in variant_runs[0]}
    n = sizes.chain
    chain_e2e = get("chain", n, "end_to_end_s")
    if chain_e2e:
        for baseline in ("keyed_sequence", "client_sequence", "batch"):
            other = get(baseline, n, "end_to_end_s")
            per_edge = [1e6 * (c - o) / (n - 1) for c, o in zip(chain_e2e, other, strict=True)]
            out[f"chain/{n}"][f"overhead_us_per_edge_vs_{baseline}"] = spread(per_edge)
    n = sizes.chord
    chord_e2e = get("chord", n, "end_to_end_s")
    if chord_e2e:
        other = get("batch", n, "end_to_end_s")
        per_edge = [1e6 * (c - o) / n for c, o in zip(chord_e2e, other, strict=True)]
        out[f"chord/{n}"]["overhead_us_per_edge_vs_batch"] = spread(per_edge)
    return out


@dataclass
class Row:
    figure: str
    median: str = ""
    range: str = ""


def table(summary: dict[str, Any], sizes: Sizes) -> list[Row]:
    rows: list[Row] = []

    def add(figure: str, key: str, field: str, fmt: str = "{:,.3f}") -> None:
        s = summary.get(key, {}).get(field)
        if s is None:
            return
        rng = f"{fmt.format(s['min'])} .. {fmt.format(s['max'])}"
        rows.append(Row(figure, fmt.format(s["median"]), rng))

    def costs(key: str) -> None:
        add("  server CPU per job, us", key, "server_cpu_us_per_job", "{:,.0f}")
        add(
            "  of which inside scripts (EVALSHA usec), us",
            key,
            "server_script_us_per_job",
            "{:,.0f}",
        )
        add(
            "  server commands per job (incl. inside scripts)",
            key,
            "server_commands_per_job",
            "{:.1f}",
        )
        add("  worker CPU per job, us", key, "worker_cpu_us_per_job", "{:,.0f}")
        add("  other processes' CPU, % of a core", key, "others_cpu_pct", "{:.0f}")

    if "chain" in sizes.scenarios:
        n = sizes.chain
        rows.append(Row(f"CHAIN of {n:,} no-op steps ({n - 1:,} edges)"))
        add("chain: submit -> workflow end, s", f"chain/{n}", "end_to_end_s")
        add("  submit call (app.submit), s", f"chain/{n}", "submit_s")
        add("  planning inside it (check + encode; timed apart), s", f"chain/{n}", "plan_s")
        add("  per step, ms", f"chain/{n}", "per_job_ms")
        costs(f"chain/{n}")
        add(
            "keyed sequence (1 key, no workflow): enqueue -> last end, s",
            f"keyed_sequence/{n}",
            "end_to_end_s",
        )
        add("  per job, ms", f"keyed_sequence/{n}", "per_job_ms")
        costs(f"keyed_sequence/{n}")
        add(
            "client sequence (enqueue + result() each): first enqueue -> last end, s",
            f"client_sequence/{n}",
            "end_to_end_s",
        )
        add("  per job, ms", f"client_sequence/{n}", "per_job_ms")
        costs(f"client_sequence/{n}")
        add(
            "batch (enqueue_many, drained; not sequential): enqueue -> last end, s",
            f"batch/{n}",
            "end_to_end_s",
        )
        add("  enqueue_many call, s", f"batch/{n}", "submit_s")
        add("  jobs/s", f"batch/{n}", "jobs_per_s", "{:,.0f}")
        costs(f"batch/{n}")
        add(
            "chain overhead per edge vs keyed sequence (like for like), us",
            f"chain/{n}",
            "overhead_us_per_edge_vs_keyed_sequence",
            "{:,.0f}",
        )
        add(
            "chain overhead per edge vs client sequence, us",
            f"chain/{n}",
            "overhead_us_per_edge_vs_client_sequence",
            "{:,.0f}",
        )
        add(
            "chain overhead per edge vs batch (sequential vs 50 at a time), us",
            f"chain/{n}",
            "overhead_us_per_edge_vs_batch",
            "{:,.0f}",
        )
    if "chord" in sizes.scenarios:
        n = sizes.chord
        rows.append(Row(f"CHORD: group of {n:,} no-op members + 1 callback ({n:,} edges)"))
        add("chord: submit -> workflow end, s", f"chord/{n}", "end_to_end_s")
        add("  submit call (app.submit), s", f"chord/{n}", "submit_s")
        add("  planning inside it (check + encode; timed apart), s", f"chord/{n}", "plan_s")
        add("  jobs/s (members + callback)", f"chord/{n}", "jobs_per_s", "{:,.0f}")
        add(
            "  last member end -> callback start, ms",
            f"chord/{n}",
            "last_member_end_to_callback_start_ms",
            "{:,.0f}",
        )
        add(
            "  last member end -> callback end (= workflow end), ms",
            f"chord/{n}",
            "last_member_end_to_callback_end_ms",
            "{:,.0f}",
        )
        costs(f"chord/{n}")
        add(
            "batch, same jobs without a workflow: enqueue -> last end, s",
            f"batch/{n}",
            "end_to_end_s",
        )
        add("  enqueue_many call, s", f"batch/{n}", "submit_s")
        add("  jobs/s", f"batch/{n}", "jobs_per_s", "{:,.0f}")
        costs(f"batch/{n}")
        add(
            "chord overhead per edge vs batch, us",
            f"chord/{n}",
            "overhead_us_per_edge_vs_batch",
            "{:,.0f}",
        )
    return rows


def profile_table(profile: dict[str, dict[str, Any]]) -> list[str]:
    """The server's time by script, per variant, from the profile runs' slow log."""
    if not profile:
        return []
    lines = [
        "",
        "profile runs (one more run of each variant, slow log on, not in the figures above):",
        f"{'variant':<22} {'script':<16} {'calls':>7} {'us/call':>9} {'us/job':>8} "
        f"{'longest, us':>12}",
    ]
    for key, run in profile.items():
        p = run["profile"]
        lines.append(
            f"{key}: end to end {run['end_to_end_s']:.3f}s; {p['script_calls_logged']:,} of "
            f"{p['script_calls']:,} script calls logged"
        )
        for name, s in p["by_name"].items():
            if s["script"]:
                lines.append(
                    f"{'':<22} {name:<16} {s['calls']:>7,} {s['us_per_call']:>9,.0f} "
                    f"{s['us_per_job']:>8,.1f} {s['max_us']:>12,}"
                )
    return lines


def render(info: dict[str, Any], sizes: Sizes, rows: list[Row], profile: dict[str, Any]) -> str:
    lines = [
        f"machine: {info['cores']} cores ({info['cpu']}), {info['os']}, Python "
        f"{info['python']}, {info['server']} (appendfsync {info['fsync']}), redis-py "
        f"{info['redis_py']}; load average at start "
        f"{', '.join(map(str, info['load_average_at_start']))}, at end "
        f"{', '.join(map(str, info['load_average_at_end']))}",
        f"redwork {info['redwork']} at {info['git']}"
        + (" with uncommitted changes in src/" if info["src_modified"] else ""),
        f"{sizes.rounds} rounds; {sizes.processes} worker process(es), concurrency "
        f"{sizes.concurrency}, prefetch {sizes.prefetch}; workers idle before each submit",
        "",
    ]
    width = max(len(r.figure) for r in rows)
    lines.append(f"{'figure':<{width}}  {'median':>10}  min .. max")
    lines.append("-" * (width + 34))
    for r in rows:
        if not r.median:
            lines.append(r.figure)
        else:
            lines.append(f"{r.figure:<{width}}  {r.median:>10}  {r.range}")
    return "\n".join(lines + profile_table(profile))


# -- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 1 round: a smoke run")
    parser.add_argument("--chain", type=int, metavar="N", help="steps of the chain (10,000)")
    parser.add_argument("--chord", type=int, metavar="N", help="members of the chord (10,000)")
    parser.add_argument("--rounds", type=int, metavar="R", help="rounds of every variant (3)")
    parser.add_argument("--only", metavar="NAME", help="chain or chord (default both)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes (1)")
    parser.add_argument("--concurrency", type=int, default=50, help="per process (50)")
    parser.add_argument("--prefetch", type=int, default=0, help="REDWORK_PREFETCH (0)")
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="skip the extra run of each variant with every command in the slow log",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    scenarios = tuple(SCENARIOS)
    if args.only:
        scenarios = tuple(n.strip() for n in args.only.split(",") if n.strip())
        if not set(scenarios) <= set(SCENARIOS):
            parser.error(f"--only takes {', '.join(SCENARIOS)}")
    default = 1_000 if args.quick else 10_000
    args.sizes = Sizes(
        chain=args.chain or default,
        chord=args.chord or default,
        rounds=args.rounds or (1 if args.quick else 3),
        processes=args.processes,
        concurrency=args.concurrency,
        prefetch=args.prefetch,
        profile=not args.no_profile,
        scenarios=scenarios,
    )
    if args.sizes.chain < 2 or args.sizes.chord < 1:
        parser.error("a chain needs 2 steps or more, a chord 1 member or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes: Sizes = args.sizes
    config = Config.make(False, (sizes.concurrency,), sizes.prefetch)
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    profile: dict[str, dict[str, Any]] = {}
    error = None
    todo = plan_rounds(sizes)
    with running_server() as (server, tmp):
        b = Bench(server, tmp, config)
        info = machine(b)
        try:
            log(f"Valkey at {server.url} (pid {server.pid}); warming up")
            for name, _ in todo:  # scripts loaded, connections open, code paths warm
                VARIANTS[name](b, sizes, 20)
            for round_ in range(1, sizes.rounds + 1):
                for name, n in todo:
                    run = VARIANTS[name](b, sizes, n)
                    runs[f"{name}/{n}"].append(run)
                    log(f"round {round_}: {describe(name, n, run)}")
            if sizes.profile:
                for name, n in todo:
                    run = VARIANTS[name](b, sizes, n, profile=True)
                    profile[f"{name}/{n}"] = run
                    log(f"profile run: {describe(name, n, run)}")
        except (BenchError, RedworkError, redis.RedisError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            log(f"failed: {error}")
        finally:
            b.close()
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = summarise(runs, sizes) if runs and error is None else {}
    rows = table(summary, sizes) if summary else []
    if args.json:
        document = {
            "machine": info,
            "sizes": asdict(sizes),
            "summary": summary,
            "runs": runs,
            "profile": profile,
            "table": [asdict(r) for r in rows],
            "error": error,
        }
        print(json.dumps(_no_nan(document), indent=2))
    elif rows:
        print(render(info, sizes, rows, profile))
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
