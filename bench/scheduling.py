"""redwork scheduling benchmark: 100,000 delayed jobs falling due at once, and what rate
and concurrency limits cost a drain. A private Valkey server and real worker processes,
as in bench/run.py; it asserts nothing. See bench/README.md, "Scheduling".

    .venv/bin/python bench/scheduling.py               # 3 rounds of both parts
    .venv/bin/python bench/scheduling.py --quick       # small sizes, 1 round: a smoke run
    .venv/bin/python bench/scheduling.py --only limits --rounds 5 --json
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/scheduling.py`, bench/ would come first on sys.path, and its http.py
# would shadow the standard library's `http`: the repository root goes first instead.
sys.path[:] = [str(ROOT)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")
]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402

from bench.run import (  # noqa: E402
    QUEUE,
    Bench,
    BenchError,
    Config,
    Workers,
    _drain_enqueued,
    _no_nan,
    _percentile,
    log,
    machine,
    proc_cpu,
    running_server,
)
from bench.tasks import app, noop  # noqa: E402
from bench.workflow import spread  # noqa: E402
from redwork.errors import RedworkError  # noqa: E402

PARTS = ("delayed", "limits")
CHUNK = 1_000  # jobs per enqueue_many call (the client's own chunk): one script call each
LEAD_S = 2.0  # the jobs fall due about this long after the last of them is stored
FIRST_ENQUEUE_GUESS_US = 100.0  # per delayed job, until a run has measured it
GROUPS = 100  # the group variant spreads its jobs over this many groups
NOOP_SCOPE = f"task:{noop.name}"


@dataclass(frozen=True)
class LimitVariant:
    name: str
    label: str
    limits: tuple[tuple[str, int | None, str | None], ...]
    """Set with app.set_limit before the enqueue: (scope, concurrency, rate)."""
    grouped: bool = False
    """The jobs are spread over GROUPS groups (noop.options(group=...))."""


LIMIT_VARIANTS = (
    LimitVariant("none", "(a) no limit", ()),
    LimitVariant(
        "concurrency", "(b) task concurrency 10,000 (never binds)", ((NOOP_SCOPE, 10_000, None),)
    ),
    LimitVariant(
        "rate", "(c) task rate 1,000,000/s (never binds)", ((NOOP_SCOPE, None, "1000000/s"),)
    ),
    LimitVariant("both", "(d) both (b) and (c)", ((NOOP_SCOPE, 10_000, "1000000/s"),)),
    LimitVariant(
        "group", f"(e) group concurrency 1,000, {GROUPS} groups", (("group", 1_000, None),), True
    ),
    LimitVariant("binding", "(f) task concurrency 10 (binds: parking)", ((NOOP_SCOPE, 10, None),)),
)
BINDING_LIMIT = 10
EN_DASH = "\u2013"  # between min and max


class StoredTooLate(BenchError):
    """The enqueue took longer than allowed for: jobs fell due before all were stored."""


@dataclass(frozen=True)
class Sizes:
    delayed_jobs: int
    limit_jobs: int
    rounds: int
    concurrencies: tuple[int, ...]
    processes: tuple[int, ...]
    limit_concurrency: int
    lead_s: float
    prefetch: int
    parts: tuple[str, ...]


class SchedulingBench(Bench):
    """`Bench`, noting the server's counters and the CPU used at the moment the last job
    completed (before the workers stop, and before any HMGET over the jobs), and how many
    polls that took, so that the benchmark's own commands can be left out. While
    `watch_delayed` is set, each poll also reads the delayed ZSET's size and notes when it
    is first empty: when the workers have promoted every due job."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.polls = 0  # HGETs of the completed counter
        self.zcard_polls = 0  # ZCARDs of the delayed ZSET
        self.watch_delayed = False
        self.promoted_all_at_ms: int | None = None
        self.done: dict[str, Any] = {}
        self.enqueue_us_seen: list[float] = []  # per delayed job, in the runs so far

    def completed(self) -> int:
        self.polls += 1
        if not self.watch_delayed:
            return super().completed()
        self.zcard_polls += 1
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(self.queue.stats, "completed")
        pipe.zcard(self.queue.delayed)
        done, left = pipe.execute()
        if int(left) == 0:
            self.promoted_all_at_ms = int(time.time() * 1000)  # the server's clock too
            self.watch_delayed = False
        return int(done or 0)

    def wait_completed(
        self, n: int, workers: Workers, timeout: float | None = None, *, fail_fast: bool = False
    ) -> int:
        polls = super().wait_completed(n, workers, timeout, fail_fast=fail_fast)
        self.done = {
            "commands": self.commandstats(),
            "script_us": self.evalsha_usec(),
            "server_cpu": self.server_cpu(),
            "worker_cpu": sum(proc_cpu(proc.pid) for proc, _ in workers.procs),
        }
        return polls

    def start_counting(self) -> Counter[str]:
        self.polls = self.zcard_polls = 0
        return self.commandstats()

    def commands_since(self, before: Counter[str]) -> Counter[str]:
        """The server's commands from `before` to the last completion, without the
        benchmark's own: INFO, and the polls (HGET, and ZCARD while watching)."""
        commands: Counter[str] = self.done["commands"] - before
        commands.pop("info", None)
        commands["hget"] -= self.polls
        commands["zcard"] -= self.zcard_polls
        return +commands

    def server_time_ms(self) -> int:
        seconds, micros = self.r.time()
        return int(seconds) * 1000 + int(micros) // 1000


# -- delayed -------------------------------------------------------------------------


def delayed_run(
    b: SchedulingBench, n: int, processes: int, concurrency: int, lead_s: float, guess_us: float
) -> dict[str, Any]:
    """n no-op jobs with one eta, stored (CHUNK per enqueue_many call) while the workers
    wait idle; the eta is chosen so that they fall due about lead_s after the last is
    stored. Timed on the server's clock from the jobs' due_at to the last finished_at."""
    b.reset()
    with Workers(b, processes, concurrency) as workers:
        b.wait_idle(workers)
        t0 = time.time()
        at_eta = noop.options(eta=t0 + n * guess_us / 1e6 + lead_s)
        ids: list[str] = []
        for start in range(0, n, CHUNK):
            ids += b.enqueue(at_eta.prepare() for _ in range(min(CHUNK, n - start)))
        enqueue_s = time.time() - t0
        stored_ms = b.server_time_ms()
        pending = int(b.r.zcard(b.queue.delayed))
        if pending != n:
            raise StoredTooLate(f"{n - pending} of {n} jobs fell due before all were stored")
        before = b.start_counting()
        script_us, server_cpu = b.evalsha_usec(), b.server_cpu()
        b.watch_delayed, b.promoted_all_at_ms = True, None
        try:
            b.wait_completed(n, workers, 60.0 + n / 500)
        finally:
            b.watch_delayed = False
    done = b.done
    commands = b.commands_since(before)
    rows = b.job_fields(ids, "due_at", "started_at", "finished_at", "attempt", "state")
    due, started, finished, not_once = [], [], [], 0
    for due_at, started_at, finished_at, attempt, state in rows:
        if due_at is None or started_at is None or finished_at is None:
            raise BenchError("a delayed job has no due_at/started_at/finished_at: did it run?")
        due.append(int(due_at))
        started.append(int(started_at))
        finished.append(int(finished_at))
        not_once += attempt != b"1" or state != b"completed"
    first_due, last_end = min(due), max(finished)
    late = sorted(s - d for s, d in zip(started, due, strict=True))
    seconds = max(last_end - first_due, 1) / 1000
    drain_s = max(last_end - min(started), 1) / 1000
    completed = b.completed()
    return {
        "processes": processes,
        "concurrency": concurrency,
        "jobs": n,
        "enqueue_s": enqueue_s,
        "enqueue_us_per_job": 1e6 * enqueue_s / n,
        "stored_to_due_s": (first_due - stored_ms) / 1000,
        "due_spread_ms": max(due) - first_due,
        "due_to_last_end_s": seconds,
        "jobs_per_s": n / seconds,
        "first_start_late_ms": min(started) - first_due,
        "late_p50_ms": _percentile(late, 50),
        "late_p99_ms": _percentile(late, 99),
        "late_max_ms": late[-1],
        "promoted_all_after_ms": (
            None if b.promoted_all_at_ms is None else b.promoted_all_at_ms - first_due
        ),
        "first_start_to_last_end_s": drain_s,
        "drain_jobs_per_s": n / drain_s,
        "started_before_due": sum(s < d for s, d in zip(started, due, strict=True)),
        "not_run_exactly_once": not_once + abs(completed - n),
        "completed": completed,
        "server_commands_per_job": commands.total() / n,
        "evalsha_per_job": commands["evalsha"] / n,
        "server_commands": dict(commands.most_common()),
        "server_cpu_us_per_job": 1e6 * (done["server_cpu"] - server_cpu) / n,
        "server_script_us_per_job": (done["script_us"] - script_us) / n,
        # From the workers' start, as run.py's drain counts it (the idle wait costs ~0).
        "worker_cpu_us_per_job": 1e6 * done["worker_cpu"] / n,
    }


def plain_run(b: SchedulingBench, n: int, processes: int, concurrency: int) -> dict[str, Any]:
    """The same jobs without a delay, all waiting before the workers start: run.py's
    drain (jobs/s from the first started_at to the last finished_at)."""
    b.reset()
    ids = b.enqueue_noops(n)
    before = b.start_counting()
    run = _drain_enqueued(b, ids, processes, concurrency)
    commands = b.commands_since(before)
    run.update(
        processes=processes,
        jobs=n,
        server_commands_per_job=commands.total() / n,
        evalsha_per_job=commands["evalsha"] / n,
        server_commands=dict(commands.most_common()),
    )
    return run


# -- limits --------------------------------------------------------------------------


def limits_run(b: SchedulingBench, variant: str, n: int, concurrency: int) -> dict[str, Any]:
    """n no-op jobs under the variant's limits (set at run time, before the enqueue),
    drained by one worker process as in run.py's drain_1."""
    spec = next(v for v in LIMIT_VARIANTS if v.name == variant)
    b.reset()
    for scope, limit_concurrency, rate in spec.limits:
        app.set_limit(QUEUE, scope, concurrency=limit_concurrency, rate=rate)
    if spec.grouped:
        # One Task per group, made once: options() builds a Task, too slow to call per job.
        by_group = [noop.options(group=f"g{g}") for g in range(GROUPS)]
        ids = b.enqueue(by_group[i % GROUPS].prepare() for i in range(n))
    else:
        ids = b.enqueue_noops(n)
    before = b.start_counting()
    run = _drain_enqueued(b, ids, 1, concurrency)
    commands = b.commands_since(before)
    leftovers = int(b.r.get(b.queue.limited) or 0) + sum(
        1 for _ in b.r.scan_iter(f"{b.queue.prefix}parked:*")
    )
    if leftovers:
        raise BenchError(f"{variant}: jobs are still parked after all {n} completed")
    run.update(
        variant=variant,
        label=spec.label,
        jobs=n,
        server_commands_per_job=commands.total() / n,
        evalsha_per_job=commands["evalsha"] / n,
        server_commands=dict(commands.most_common()),
        completed=b.completed(),
        slots_left=sum(1 for _ in b.r.scan_iter(f"{b.queue.prefix}running:*")),
    )
    if variant == "binding":
        run["max_running"] = max_running(b, ids)
    return run


def max_running(b: SchedulingBench, ids: list[str]) -> int:
    """The most jobs running at once, on the server's clock (ms). A run holds its slot
    from its fetch to its completion, and a freed slot goes to the next job only in the
    complete script, so a start at the same ms as an end comes after it: ends count
    first at equal times."""
    edges: list[tuple[int, int]] = []
    for started, finished in b.job_fields(ids, "started_at", "finished_at"):
        if started is None or finished is None:
            raise BenchError("a job has no started_at/finished_at: did it run?")
        edges += [(int(started), 1), (int(finished), -1)]
    edges.sort()
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


# -- summary and table ---------------------------------------------------------------

# The figures summarised for each kind of run: field, label, format.
DELAYED_FIGURES = (
    ("jobs_per_s", "delayed: jobs/s, due time -> last end", "{:,.0f}"),
    ("due_to_last_end_s", "  due time -> last end, s", "{:.2f}"),
    ("first_start_late_ms", "  first start - due time, ms", "{:,.0f}"),
    ("late_p50_ms", "  start - own due_at, p50, ms", "{:,.0f}"),
    ("late_p99_ms", "  start - own due_at, p99, ms", "{:,.0f}"),
    ("late_max_ms", "  start - own due_at, max, ms", "{:,.0f}"),
    ("promoted_all_after_ms", "  due time -> delayed ZSET empty (10 ms polls), ms", "{:,.0f}"),
    ("drain_jobs_per_s", "  jobs/s, first start -> last end", "{:,.0f}"),
    ("server_commands_per_job", "  server commands/job (incl. inside scripts)", "{:.2f}"),
    ("evalsha_per_job", "  script calls/job", "{:.3f}"),
    ("server_cpu_us_per_job", "  server CPU/job, us", "{:,.0f}"),
    ("server_script_us_per_job", "  of which inside scripts, us", "{:,.0f}"),
    ("worker_cpu_us_per_job", "  worker CPU/job (incl. start-up), us", "{:,.0f}"),
    ("enqueue_us_per_job", "  enqueue (prepare + enqueue_many), us/job", "{:.1f}"),
    ("stored_to_due_s", "  last job stored -> due time, s", "{:.2f}"),
    ("due_spread_ms", "  due_at spread (last - first), ms", "{:,.0f}"),
)
PLAIN_FIGURES = (
    ("jobs_per_s", "plain drain: jobs/s, first start -> last end", "{:,.0f}"),
    ("server_commands_per_job", "  server commands/job (incl. inside scripts)", "{:.2f}"),
    ("evalsha_per_job", "  script calls/job", "{:.3f}"),
    ("server_cpu_us_per_job", "  server CPU/job, us", "{:,.0f}"),
    ("server_script_us_per_job", "  of which inside scripts, us", "{:,.0f}"),
    ("worker_cpu_us_per_job", "  worker CPU/job (incl. start-up), us", "{:,.0f}"),
)
LIMIT_FIGURES = (
    ("jobs_per_s", "jobs/s", "{:,.0f}"),
    ("ratio_to_none", "/ (a)", "{:.2f}"),
    ("server_commands_per_job", "server cmds/job", "{:.2f}"),
    ("evalsha_per_job", "script calls/job", "{:.3f}"),
    ("server_cpu_us_per_job", "server CPU/job, us", "{:,.0f}"),
    ("worker_cpu_us_per_job", "worker CPU/job, us", "{:,.0f}"),
)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median, min and max of every figure, by run kind. Ratios are paired by round:
    a limit variant's to (a) of its round (main sets it as the runs come), a delayed
    run's to the plain drain with the same workers (the two sit next to each other)."""
    for key, variant_runs in runs.items():
        if key.startswith("delayed/"):
            plain = runs.get("plain/" + key.removeprefix("delayed/"), [])
            for run, base in zip(variant_runs, plain, strict=False):
                run["ratio_to_plain"] = run["jobs_per_s"] / base["jobs_per_s"]
    summary: dict[str, Any] = {}
    for key, variant_runs in runs.items():
        numbers = [f for f, v in variant_runs[0].items() if isinstance(v, int | float)]
        summary[key] = {
            f: spread([r[f] for r in variant_runs])
            for f in numbers
            if all(isinstance(r.get(f), int | float) for r in variant_runs)
        }
        for check in ("started_before_due", "not_run_exactly_once", "slots_left"):
            if check in numbers:
                summary[key][check]["total"] = sum(r[check] for r in variant_runs)
    return summary


def cell(s: dict[str, Any] | None, fmt: str) -> str:
    if s is None:
        return "-"
    if s["min"] == s["max"]:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}{EN_DASH}{fmt.format(s['max'])})"


def grid(corner: str, columns: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    widths = [max([len(c)] + [len(r[1][i]) for r in rows]) for i, c in enumerate(columns)]
    first = max([len(corner)] + [len(r[0]) for r in rows])
    lines = [
        f"{corner:<{first}}  " + "  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))
    ]
    lines.append("-" * len(lines[0]))
    for label, cells in rows:
        lines.append(
            f"{label:<{first}}  "
            + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        )
    return lines


def configs(sizes: Sizes) -> list[tuple[int, int]]:
    return [(p, c) for p in sizes.processes for c in sizes.concurrencies]


def tables(summary: dict[str, Any], sizes: Sizes) -> list[str]:
    lines: list[str] = []
    if "delayed" in sizes.parts:
        keys = [f"{p}x{c}" for p, c in configs(sizes)]
        columns = [f"{p} proc, c={c}" for p, c in configs(sizes)]
        rows = []
        for kind, figures in (("delayed", DELAYED_FIGURES), ("plain", PLAIN_FIGURES)):
            for field, label, fmt in figures:
                rows.append(
                    (label, [cell(summary.get(f"{kind}/{k}", {}).get(field), fmt) for k in keys])
                )
        rows.append(
            (
                "delayed / plain drain, jobs/s",
                [
                    cell(summary.get(f"delayed/{k}", {}).get("ratio_to_plain"), "{:.2f}")
                    for k in keys
                ],
            )
        )
        for check, label in (
            ("started_before_due", "CHECK started before own due_at (must be 0)"),
            ("not_run_exactly_once", "CHECK not run exactly once (must be 0)"),
        ):
            totals = [
                str(summary.get(f"delayed/{k}", {}).get(check, {}).get("total", "-")) for k in keys
            ]
            rows.append((label, totals))
        lines += [f"DELAYED: {sizes.delayed_jobs:,} no-op jobs with one due time"]
        lines += [*grid("figure", columns, rows), ""]
    if "limits" in sizes.parts:
        rows = []
        for v in LIMIT_VARIANTS:
            s = summary.get(f"limits/{v.name}", {})
            rows.append((v.label, [cell(s.get(f), fmt) for f, _, fmt in LIMIT_FIGURES]))
        lines += [
            f"LIMITS: {sizes.limit_jobs:,} no-op jobs, 1 worker process, "
            f"concurrency {sizes.limit_concurrency}"
        ]
        lines += grid("variant", [label for _, label, _ in LIMIT_FIGURES], rows)
        binding = summary.get("limits/binding", {})
        checks = [
            f"CHECK (f) most running at once (server clock): "
            f"{cell(binding.get('max_running'), '{:,.0f}')} (must be <= {BINDING_LIMIT})",
            "CHECK slots left held after the runs: "
            + str(
                sum(
                    s.get("slots_left", {}).get("total", 0)
                    for k, s in summary.items()
                    if k.startswith("limits/")
                )
            )
            + " (must be 0)",
        ]
        lines += checks
    return lines


def src_mtime() -> float:
    """The newest modification time under src/: workers start afresh for every run, so
    a change there in the middle of a benchmark mixes two versions of redwork."""
    return max((p.stat().st_mtime for p in (ROOT / "src").rglob("*") if p.is_file()), default=0)


def render(info: dict[str, Any], sizes: Sizes, summary: dict[str, Any]) -> str:
    load = "; ".join(
        f"load average at {when} " + ", ".join(str(x) for x in info[f"load_average_at_{when}"])
        for when in ("start", "end")
    )
    version = f"redwork {info['redwork']} at {info['git']}"
    if info["src_modified"]:
        version += " with uncommitted changes in src/"
    if info["src_changed_during_run"]:
        version += f"; WARNING: src/ changed during the run (HEAD {info['git_at_end']} at the end)"
    header = [
        f"machine: {info['cores']} cores ({info['cpu']}), {info['os']}; Python {info['python']}, "
        f"{info['server']} with appendfsync {info['fsync']}, redis-py {info['redis_py']}; {load}",
        version,
        f"{sizes.rounds} round(s), median (min{EN_DASH}max) over the rounds; worker prefetch "
        f"{sizes.prefetch}; delayed jobs fall due ~{sizes.lead_s:g}s after the last is stored",
        "",
    ]
    return "\n".join(header + tables(summary, sizes))


# -- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round: a smoke run")
    parser.add_argument("--only", metavar="PART", help="delayed or limits (default both)")
    parser.add_argument("--rounds", type=int, metavar="R", help="rounds of every run (3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--delayed-jobs", type=int, metavar="N", help="delayed jobs (100,000)")
    parser.add_argument("--limit-jobs", type=int, metavar="N", help="jobs per limits run (50,000)")
    parser.add_argument(
        "--concurrency",
        metavar="C[,C...]",
        help="worker concurrency values for delayed (default 50,200); limits uses the first",
    )
    parser.add_argument(
        "--processes", metavar="P[,P...]", default="1,2", help="worker processes for delayed (1,2)"
    )
    parser.add_argument(
        "--lead", type=float, default=LEAD_S, help="s from the last job stored to the due time (2)"
    )
    parser.add_argument("--prefetch", type=int, default=0, help="REDWORK_PREFETCH (0)")
    args = parser.parse_args(argv)
    parts = PARTS
    if args.only:
        parts = tuple(p.strip() for p in args.only.split(",") if p.strip())
        if not set(parts) <= set(PARTS):
            parser.error(f"--only takes {', '.join(PARTS)}")
    try:
        concurrencies = tuple(int(c) for c in (args.concurrency or "").split(",") if c)
        processes = tuple(int(p) for p in args.processes.split(",") if p)
    except ValueError:
        parser.error("--concurrency and --processes take integers, e.g. 50,200")
    concurrencies = concurrencies or ((50,) if args.quick else (50, 200))
    args.sizes = Sizes(
        delayed_jobs=args.delayed_jobs or (20_000 if args.quick else 100_000),
        limit_jobs=args.limit_jobs or (5_000 if args.quick else 50_000),
        rounds=args.rounds or (1 if args.quick else 3),
        concurrencies=concurrencies,
        processes=processes,
        limit_concurrency=concurrencies[0],
        lead_s=args.lead,
        prefetch=args.prefetch,
        parts=parts,
    )
    return args


Runner = Callable[[SchedulingBench], dict[str, Any]]


def plan_round(sizes: Sizes) -> list[tuple[str, Runner]]:
    """The runs of one round, in order, so that the runs compared sit next to each other."""
    todo: list[tuple[str, Runner]] = []
    if "delayed" in sizes.parts:
        for p, c in configs(sizes):
            todo.append(
                (f"delayed/{p}x{c}", partial(_delayed, sizes=sizes, processes=p, concurrency=c))
            )
            todo.append(
                (
                    f"plain/{p}x{c}",
                    partial(plain_run, n=sizes.delayed_jobs, processes=p, concurrency=c),
                )
            )
    if "limits" in sizes.parts:
        for v in LIMIT_VARIANTS:
            run = partial(
                limits_run, variant=v.name, n=sizes.limit_jobs, concurrency=sizes.limit_concurrency
            )
            todo.append((f"limits/{v.name}", run))
    return todo


def _delayed(b: SchedulingBench, sizes: Sizes, processes: int, concurrency: int) -> dict[str, Any]:
    """A delayed run whose due time allows for the slowest enqueue seen so far; made
    again once, allowing twice that, should jobs still fall due before all are stored."""
    guess = max(b.enqueue_us_seen, default=FIRST_ENQUEUE_GUESS_US)
    args = (b, sizes.delayed_jobs, processes, concurrency, sizes.lead_s)
    try:
        run = delayed_run(*args, guess)
    except StoredTooLate as exc:
        log(f"{exc}; once more, allowing {2 * guess:.0f} us per job for the enqueue")
        run = delayed_run(*args, 2 * guess)
    b.enqueue_us_seen.append(run["enqueue_us_per_job"])
    return run


def describe(key: str, run: dict[str, Any]) -> str:
    parts = [f"{key}: {run['jobs_per_s']:,.0f} jobs/s"]
    if key.startswith("delayed/"):
        parts.append(
            f"due -> last end {run['due_to_last_end_s']:.2f}s, first start "
            f"{run['first_start_late_ms']} ms after due, late p50/p99/max "
            f"{run['late_p50_ms']}/{run['late_p99_ms']}/{run['late_max_ms']} ms, all promoted "
            f"{run['promoted_all_after_ms']} ms after due, stored {run['stored_to_due_s']:.2f}s "
            f"before due (due_at spread {run['due_spread_ms']} ms); "
            f"{run['started_before_due']} early, {run['not_run_exactly_once']} not once"
        )
    if "ratio_to_none" in run:
        parts.append(f"{run['ratio_to_none']:.2f} of (a)")
    if "max_running" in run:
        parts.append(f"at most {run['max_running']} running at once")
    parts.append(
        f"{run['server_commands_per_job']:.2f} server commands/job "
        f"({run['evalsha_per_job']:.3f} script calls); CPU/job: server "
        f"{run['server_cpu_us_per_job']:.0f} us (scripts {run['server_script_us_per_job']:.0f}), "
        f"workers {run['worker_cpu_us_per_job']:.0f} us"
    )
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes: Sizes = args.sizes
    config = Config.make(False, sizes.concurrencies, sizes.prefetch)
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    error = None
    todo = plan_round(sizes)
    with running_server() as (server, tmp):
        b = SchedulingBench(server, tmp, config)
        info, started_src = machine(b), src_mtime()
        try:
            log(f"Valkey at {server.url} (pid {server.pid}); warming up")
            delayed_run(b, 500, 1, sizes.concurrencies[0], 0.3, FIRST_ENQUEUE_GUESS_US)
            limits_run(b, "both", 500, sizes.limit_concurrency)
            for round_ in range(1, sizes.rounds + 1):
                for key, run_one in todo:
                    run = run_one(b)
                    if key.startswith("limits/") and key != "limits/none" and runs["limits/none"]:
                        run["ratio_to_none"] = (
                            run["jobs_per_s"] / runs["limits/none"][-1]["jobs_per_s"]
                        )
                    runs[key].append(run)
                    log(f"round {round_}: {describe(key, run)}")
        except (BenchError, RedworkError, redis.RedisError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            log(f"failed: {error}")
        finally:
            info["git_at_end"] = machine(b)["git"]
            b.close()
    info["src_changed_during_run"] = src_mtime() != started_src or info["git_at_end"] != info["git"]
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = summarise(runs) if runs and error is None else {}
    if args.json:
        document = {
            "machine": info,
            "sizes": asdict(sizes),
            "summary": summary,
            "runs": runs,
            "error": error,
        }
        print(json.dumps(_no_nan(document), indent=2))
    elif summary:
        print(render(info, sizes, summary))
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
