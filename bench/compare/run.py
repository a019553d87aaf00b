"""Side-by-side benchmark: redwork and its peers on the same workloads, one system after
the other, each in its own virtual environment and on fresh private Valkey servers.

    .venv/bin/python bench/compare/run.py                               # all, 3 runs
    .venv/bin/python bench/compare/run.py --quick --systems redwork,rq  # a smoke run

Writes bench/compare/results.md (the table) and results.json. Each system's adapter is
bench/compare/adapters/<system>.py (see common.py for what it does)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/compare/run.py` puts its own folder first

import redis  # noqa: E402

from bench.compare.common import (  # noqa: E402
    DONE_KEY,
    LAST_DONE_KEY,
    LATENCY_KEY,
    ideal_seconds,
    sleep_ms,
)
from redwork.server import ServerProcess  # noqa: E402

HERE = ROOT / "bench" / "compare"
VENVS = HERE / ".venvs"
STAMP = "bench-requirements.json"
"""In each venv: what it was installed with, to reuse it while that has not changed."""
POLL = 0.005
WORKLOAD_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
WARM_UP_JOBS = 10
WORKLOADS = ("enqueue", "drain_1", "drain_2", "latency", "sleep")

# Pinned to the latest releases on PyPI (2026-12). Every venv gets redis-py (common.py
# needs it) with hiredis, as redwork's own `redis[hiredis]` has it; the async systems
# get uvloop too, for adapters whose docs recommend it. redis-py is the latest release
# each system accepts: arq wants < 6, saq[redis] < 8; and RQ gets 8.1.0, because from
# 8.2.0 on PubSubWorkerThread.stop() waits for the thread, which RQ 3.0.0 starts with a
# 60 s poll: a stopping RQ worker then often hangs for up to a minute.
REDIS = "redis==8.2.0"
HIREDIS = "hiredis==3.5.0"
UVLOOP = "uvloop==0.23.0"


@dataclass(frozen=True)
class System:
    name: str
    requirements: tuple[str, ...]
    """pip requirements; redwork's venv also gets this checkout (not editable)."""
    package: str
    """The distribution whose version the table shows."""
    concurrency: int
    """One worker process's concurrency for the noop drains and the latency workload."""


SYSTEMS = {
    s.name: s
    for s in (
        System("redwork", (REDIS, HIREDIS, UVLOOP), "redwork", 50),
        # Celery's solo pool (c=1) drained 1.5-1.7x faster than its threads pool at c=8.
        System("celery", ("celery[redis]==5.7.0", REDIS, HIREDIS), "celery", 1),
        System("rq", ("rq==3.0.0", "redis==8.1.0", HIREDIS), "rq", 1),
        System("dramatiq", ("dramatiq[redis]==2.2.1", REDIS, HIREDIS), "dramatiq", 8),
        System("arq", ("arq==0.28.0", "redis==5.3.1", HIREDIS, UVLOOP), "arq", 50),
        # saq imports typing_extensions without declaring it.
        System(
            "saq",
            ("saq[redis]==0.26.4", "redis==7.4.1", "typing_extensions==4.16.0", HIREDIS, UVLOOP),
            "saq",
            50,
        ),
        System(
            "taskiq",
            ("taskiq==0.13.0", "taskiq-redis==1.2.4", REDIS, HIREDIS, UVLOOP),
            "taskiq",
            50,
        ),
        System("streaq", ("streaq==7.2.0", REDIS, HIREDIS, UVLOOP), "streaq", 50),
    )
}


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Config:
    jobs: int
    """noop jobs of the enqueue and drain workloads."""
    latency_jobs: int
    runs: int
    latency_rate: float = 500.0
    sleep_jobs: int = 1_000
    sleep_concurrency: int = 20
    sleep_seed: int = 42

    @classmethod
    def make(cls, quick: bool, runs: int | None) -> Config:
        if quick:
            return cls(jobs=2_000, latency_jobs=1_000, runs=runs or 1)
        return cls(jobs=20_000, latency_jobs=5_000, runs=runs or 3)


def log(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# -- virtual environments ----------------------------------------------------------------


SOURCE_JUNK = ("__pycache__", ".mypy_cache", ".pytest_cache")


def source_digest() -> str:
    """redwork's installable source, so that its venv is rebuilt when the code changes."""
    digest = hashlib.sha256()
    files = [ROOT / "pyproject.toml", ROOT / "README.md"]
    files += sorted(
        p
        for p in (ROOT / "src").rglob("*")
        if p.is_file()
        and not any(part in SOURCE_JUNK or part.endswith(".egg-info") for part in p.parts)
    )
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def ensure_venv(system: System) -> Path:
    """The system's venv's python, created or updated when its requirements changed."""
    venv = VENVS / system.name
    python = venv / "bin" / "python"
    stamp_path = venv / STAMP
    wanted = {"python": platform.python_version(), "requirements": list(system.requirements)}
    if system.name == "redwork":
        wanted["source"] = source_digest()
    stamp = json.dumps(wanted, sort_keys=True)
    if python.exists() and stamp_path.exists() and stamp_path.read_text() == stamp:
        return python
    # A peer's venv without a stamp was made by hand (say, while writing its adapter):
    # install over it rather than delete what someone may be using. redwork's is always
    # made anew: pip would keep an installed redwork of the same version number.
    if venv.exists() and (stamp_path.exists() or system.name == "redwork"):
        shutil.rmtree(venv)
    if not python.exists():
        log(f"{system.name}: creating {venv.relative_to(ROOT)}")
        _run_or_raise([sys.executable, "-m", "venv", str(venv)], "python -m venv")
    log(f"{system.name}: pip install {' '.join(system.requirements)}")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if system.name == "redwork":
        with tempfile.TemporaryDirectory(prefix="redwork-compare-src-") as tmp:
            # Built from a copy: building in place would write build/ and an egg-info
            # into the checkout.
            source = Path(tmp) / "redwork"
            ignore = shutil.ignore_patterns(*SOURCE_JUNK, "*.egg-info")
            shutil.copytree(ROOT / "src", source / "src", ignore=ignore)
            for name in ("pyproject.toml", "README.md"):
                shutil.copy2(ROOT / name, source / name)
            _run_or_raise([*pip, str(source), *system.requirements], "pip install")
    else:
        _run_or_raise([*pip, *system.requirements], "pip install")
    stamp_path.write_text(stamp)
    return python


def _run_or_raise(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()
        raise BenchError(f"{what} failed ({done.returncode}): " + " | ".join(output[-5:]))


def installed_version(python: Path, package: str) -> str:
    code = f"from importlib.metadata import version; print(version({package!r}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def git(*args: str) -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    return ""


# -- one system's processes ----------------------------------------------------------------


class Adapter:
    """Runs one system's adapter (`python -m bench.compare.adapters.<name>`) in its venv;
    owns every worker process it starts."""

    def __init__(self, system: System, python: Path, tmp: Path) -> None:
        self.system = system
        self.python = python
        self.tmp = tmp
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("REDWORK_", "PYTHON")) and k != "VIRTUAL_ENV"
        }
        self.env["PYTHONPATH"] = str(ROOT)
        self.workers: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.logs = 0

    def command(self, *args: str) -> list[str]:
        return [str(self.python), "-m", f"bench.compare.adapters.{self.system.name}", *args]

    def _log_file(self, kind: str) -> Path:
        self.logs += 1
        return self.tmp / f"{kind}-{self.logs}.log"

    def start_workers(self, url: str, workload: str, processes: int, concurrency: int) -> None:
        args = ["worker", "--url", url, "--workload", workload]
        for _ in range(processes):
            log_path = self._log_file("worker")
            with open(log_path, "wb") as out:
                # Its own session: a worker that starts processes of its own (RQ's pool)
                # is stopped with all of them, and Ctrl-C reaches the runner alone.
                proc = subprocess.Popen(
                    self.command(*args, "--concurrency", str(concurrency)),
                    cwd=ROOT,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.workers.append((proc, log_path))

    def check_workers(self) -> None:
        for proc, log_path in self.workers:
            code = proc.poll()
            if code is not None:
                raise BenchError(f"a worker exited with {code}; its log ends:\n{tail(log_path)}")

    def stop_workers(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; anything left in a worker's process
        group once it has exited is killed too."""
        for proc, _ in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.workers:
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"{self.system.name}: worker {proc.pid} alive {STOP_TIMEOUT:g}s after SIGTERM")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.workers.clear()

    @contextlib.contextmanager
    def running(self, url: str, workload: str, processes: int, concurrency: int) -> Iterator[None]:
        try:
            self.start_workers(url, workload, processes, concurrency)
            yield
        finally:
            self.stop_workers()

    def enqueue(
        self, url: str, workload: str, count: int, deadline: float, **extra: float
    ) -> Enqueue:
        args = ["enqueue", "--url", url, "--workload", workload, "--count", str(count)]
        for name, value in extra.items():
            args += [f"--{name}", str(value)]
        return Enqueue(self.command(*args), self.env, self._log_file("enqueue"), deadline)


class Enqueue:
    """An adapter's `enqueue` run, in the background until `result()`."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, deadline: float):
        self.log_path = log_path
        self.deadline = deadline
        self.out_path = log_path.with_suffix(".out")
        with open(log_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def finished(self) -> bool:
        return self.proc.poll() is not None

    def result(self) -> dict[str, Any]:
        """What the adapter printed, once it has exited: {"seconds", "started_at"}."""
        try:
            self.proc.wait(max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError("enqueue timed out") from None
        except BaseException:
            self.kill()
            raise
        if self.proc.returncode != 0:
            raise BenchError(f"enqueue exited with {self.proc.returncode}:\n{tail(self.log_path)}")
        lines = self.out_path.read_text(errors="replace").strip().splitlines()
        try:
            out = json.loads(lines[-1])
            return {"seconds": float(out["seconds"]), "started_at": float(out["started_at"])}
        except (IndexError, ValueError, KeyError, TypeError):
            raise BenchError(f"enqueue printed no seconds and started_at: {lines[-3:]}") from None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


# -- workloads ---------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_server() -> Iterator[tuple[ServerProcess, redis.Redis]]:
    with tempfile.TemporaryDirectory(prefix="redwork-compare-") as tmp:
        server = ServerProcess(Path(tmp) / "valkey", fsync="everysec")
        server.start()
        client = redis.Redis.from_url(server.url)
        try:
            yield server, client
        finally:
            client.close()
            server.stop()


def done_count(r: redis.Redis) -> int:
    return int(r.get(DONE_KEY) or 0)


def command_calls(r: redis.Redis) -> int:
    """Commands the server has run (scripts' redis.call included), by INFO commandstats."""
    stats = r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


@dataclass
class Polled:
    first_at: float = 0.0
    """perf_counter of the first poll that saw a job done, and how many it saw."""
    first_done: int = 0
    last_at: float = 0.0
    """perf_counter of the poll that saw them all done."""
    polls: int = 0


def wait_done(
    r: redis.Redis, n: int, adapter: Adapter, deadline: float, enqueue: Enqueue | None = None
) -> Polled:
    """Poll DONE_KEY every POLL seconds until it reaches n (and `enqueue` has exited)."""
    seen = Polled()
    while True:
        seen.polls += 1
        done = done_count(r)
        now = time.perf_counter()
        if done and not seen.first_done:
            seen.first_at, seen.first_done = now, done
        if done >= n and not seen.last_at:
            seen.last_at = now
        if seen.last_at and (enqueue is None or enqueue.finished()):
            return seen
        adapter.check_workers()
        if time.monotonic() > deadline:
            raise BenchError(f"{done} of {n} jobs done after {WORKLOAD_TIMEOUT:g}s")
        time.sleep(POLL)


def warm_up(r: redis.Redis, url: str, adapter: Adapter, deadline: float) -> None:
    """A few noop jobs through the running worker, then the counters cleared."""
    adapter.enqueue(url, "noop", WARM_UP_JOBS, deadline).result()
    wait_done(r, WARM_UP_JOBS, adapter, deadline)
    r.delete(DONE_KEY, LATENCY_KEY)


def run_enqueue(adapter: Adapter, config: Config, deadline: float) -> dict[str, float]:
    with fresh_server() as (server, r):
        before = int(r.info("memory")["used_memory"])
        out = adapter.enqueue(server.url, "noop", config.jobs, deadline).result()
        after = int(r.info("memory")["used_memory"])
    return {
        "enqueue_per_s": config.jobs / out["seconds"],
        "bytes_per_job": (after - before) / config.jobs,
    }


def run_drain(
    adapter: Adapter, config: Config, deadline: float, processes: int
) -> dict[str, float]:
    n = config.jobs
    with fresh_server() as (server, r):
        adapter.enqueue(server.url, "noop", n, deadline).result()
        before = command_calls(r)
        with adapter.running(server.url, "noop", processes, adapter.system.concurrency):
            seen = wait_done(r, n, adapter, deadline)
            after = command_calls(r)
    if seen.last_at <= seen.first_at:
        raise BenchError("every job was done by the first poll: too few jobs to time")
    # The runner's own commands: the first INFO and the polls.
    commands = after - before - 1 - seen.polls
    return {
        "jobs_per_s": (n - seen.first_done) / (seen.last_at - seen.first_at),
        "commands_per_job": commands / n,
    }


def run_latency(adapter: Adapter, config: Config, deadline: float) -> dict[str, float]:
    n = config.latency_jobs
    with fresh_server() as (server, r):
        with adapter.running(server.url, "latency", 1, adapter.system.concurrency):
            warm_up(r, server.url, adapter, deadline)
            adapter.enqueue(server.url, "latency", n, deadline, rate=config.latency_rate).result()
            while r.llen(LATENCY_KEY) < n:
                adapter.check_workers()
                if time.monotonic() > deadline:
                    got = r.llen(LATENCY_KEY)
                    raise BenchError(f"{got} of {n} latencies after {WORKLOAD_TIMEOUT:g}s")
                time.sleep(POLL)
        values = sorted(float(v) for v in r.lrange(LATENCY_KEY, 0, -1))
    return {
        "p50_ms": 1000 * values[len(values) // 2],
        "p99_ms": 1000 * values[min(len(values) - 1, int(len(values) * 0.99))],
    }


def run_sleep(adapter: Adapter, config: Config, deadline: float) -> dict[str, float]:
    n, c = config.sleep_jobs, config.sleep_concurrency
    ideal = ideal_seconds(sleep_ms(n, config.sleep_seed), c)
    with fresh_server() as (server, r), adapter.running(server.url, "sleep", 1, c):
        warm_up(r, server.url, adapter, deadline)
        enqueue = adapter.enqueue(server.url, "sleep", n, deadline, seed=config.sleep_seed)
        try:
            wait_done(r, n, adapter, deadline, enqueue)
        except BaseException:
            enqueue.kill()
            raise
        started_at = enqueue.result()["started_at"]
        last_done = r.zscore(LAST_DONE_KEY, "last")
    if last_done is None:
        raise BenchError("the workers never sent the time of a job's end")
    elapsed = last_done - started_at
    return {"efficiency": ideal / elapsed, "elapsed_s": elapsed, "ideal_s": ideal}


def run_workload(name: str, adapter: Adapter, config: Config, deadline: float) -> dict[str, float]:
    if name == "enqueue":
        return run_enqueue(adapter, config, deadline)
    if name in ("drain_1", "drain_2"):
        return run_drain(adapter, config, deadline, int(name[-1]))
    if name == "latency":
        return run_latency(adapter, config, deadline)
    return run_sleep(adapter, config, deadline)


# -- one system --------------------------------------------------------------------------


@dataclass
class Outcome:
    system: str
    version: str = ""
    requirements: list[str] = field(default_factory=list)
    concurrency: int = 0
    runs: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    median: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    """By workload; "setup" when the system could not run at all."""


def bench_system(system: System, config: Config, workloads: tuple[str, ...]) -> Outcome:
    outcome = Outcome(
        system.name, requirements=list(system.requirements), concurrency=system.concurrency
    )
    adapter_file = HERE / "adapters" / f"{system.name}.py"
    if not adapter_file.exists():
        outcome.errors["setup"] = f"no adapter: {adapter_file.relative_to(ROOT)} is missing"
        return outcome
    try:
        python = ensure_venv(system)
    except Exception as exc:  # whatever it is, the other systems still run
        outcome.errors["setup"] = f"{type(exc).__name__}: {exc}"
        return outcome
    outcome.version = installed_version(python, system.package)
    if system.name == "redwork":
        dirty = "+modified" if git("status", "--porcelain", "--", "src") else ""
        outcome.version += f" ({git('rev-parse', '--short', 'HEAD')}{dirty})"
    with tempfile.TemporaryDirectory(prefix=f"redwork-compare-{system.name}-") as tmp:
        adapter = Adapter(system, python, Path(tmp))
        for run in range(config.runs):
            for name in workloads:
                if name in outcome.errors:
                    continue  # failed in an earlier run: do not wait out its timeout again
                log(f"{system.name}: {name} (run {run + 1} of {config.runs})")
                deadline = time.monotonic() + WORKLOAD_TIMEOUT
                try:
                    figures = run_workload(name, adapter, config, deadline)
                except Exception as exc:  # recorded in the table; the run goes on
                    log(f"{system.name}: {name} failed: {exc}")
                    outcome.errors[name] = f"{type(exc).__name__}: {exc}"
                    continue
                log(f"{system.name}: {name}: {_brief(figures)}")
                outcome.runs.setdefault(name, []).append(figures)
    for name, runs in outcome.runs.items():
        if name not in outcome.errors:
            outcome.median[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return outcome


def _brief(figures: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:,.4g}" for k, v in figures.items())


# -- report ------------------------------------------------------------------------------


def machine(server_version: str) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "server": server_version,
        "fsync": "everysec",
    }


def server_version() -> str:
    with fresh_server() as (_, r):
        info = r.info("server")
    return f"Valkey {info.get('valkey_version', info.get('redis_version'))}"


COLUMNS = (
    ("enqueue jobs/s", "enqueue", lambda m: f"{m['enqueue_per_s']:,.0f}"),
    ("drain 1 proc, jobs/s", "drain_1", lambda m: f"{m['jobs_per_s']:,.0f}"),
    ("drain 2 procs, jobs/s", "drain_2", lambda m: f"{m['jobs_per_s']:,.0f}"),
    ("latency p50 / p99, ms", "latency", lambda m: f"{m['p50_ms']:.2f} / {m['p99_ms']:.2f}"),
    ("sleep efficiency, %", "sleep", lambda m: f"{100 * m['efficiency']:.1f}"),
    ("Redis commands/job", "drain_1", lambda m: f"{m['commands_per_job']:.2f}"),
    ("bytes/waiting job", "enqueue", lambda m: f"{m['bytes_per_job']:,.0f}"),
)


def render(document: dict[str, Any]) -> str:
    config, info = document["config"], document["machine"]
    c, jobs, seed = config["sleep_concurrency"], config["sleep_jobs"], config["sleep_seed"]
    durations = sleep_ms(jobs, seed)
    ideal, bound = ideal_seconds(durations, c), sum(durations) / 1000 / c
    lines = [
        "# redwork and its peers, side by side",
        "",
        f"{document['date']}, {info['cores']} cores ({info['cpu']}), load average at start "
        f"{', '.join(map(str, info['load_average_at_start']))}; {info['os']}, Python "
        f"{info['python']}, {info['server']} (AOF fsync {info['fsync']}), fresh server per "
        f"workload; producer, server and workers on the same machine. Medians of "
        f"{config['runs']} run(s). `.venv/bin/python bench/compare/run.py"
        f"{' ' + ' '.join(document['argv']) if document['argv'] else ''}`.",
        "",
        "| system | version | c | " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|---|---|--:|" + "--:|" * len(COLUMNS),
    ]
    notes = []
    for outcome in document["systems"]:
        cells = [outcome["system"], outcome["version"] or "—", str(outcome["concurrency"])]
        errors = outcome["errors"]
        for _title, workload, show in COLUMNS:
            if workload in outcome["median"]:
                cells.append(show(outcome["median"][workload]))
            elif workload in errors or "setup" in errors:
                cells.append("error")
            else:
                cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
        notes += [
            f"- {outcome['system']}, {workload}: " + " ".join(message.split())[:500]
            for workload, message in errors.items()
        ]
    lines += [
        "",
        f"- enqueue: {config['jobs']:,} noop jobs stored through the system's bulk API, no "
        "worker running; bytes/waiting job: growth of the server's used_memory over them.",
        f"- drain: {config['jobs']:,} noop jobs enqueued first, then 1 or 2 worker processes "
        "at concurrency c; jobs/s from the first completion seen to the last (start-up "
        "left out). Redis commands/job: INFO commandstats over the 1-process drain "
        "(commands run inside Lua scripts included).",
        f"- latency: one worker process (c), {config['latency_jobs']:,} jobs sent one at a "
        f"time at {config['latency_rate']:g}/s; time from just before the enqueue call to "
        "the job's start.",
        f"- sleep: one worker process at concurrency {c}, {jobs:,} jobs sleeping 10-60 ms "
        f"(seed {seed}); efficiency = the ideal time over the time from the start of the "
        "enqueue to the last job's end (the worker's clock). The ideal is a queue with no "
        "overhead: each job, in enqueue order, starts the moment a slot frees "
        f"({ideal:.3f} s). Total sleep / concurrency ({bound:.3f} s) is lower, but only a "
        "scheduler that reorders jobs by length gets near it: against it, a queue with no "
        f"overhead scores {100 * bound / ideal:.1f} %.",
        "- Every figure is noisy on a small, shared machine: compare systems within one "
        "table, and rerun before reading much into a difference of a few percent.",
    ]
    if notes:
        lines += ["", "Errors:", "", *notes]
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, from {', '.join(SYSTEMS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="2,000 jobs, 1 run: a smoke run")
    parser.add_argument("--runs", type=int, help="runs per workload (default 3, --quick 1)")
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON, not the table")
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE / "results.md",
        help="where the table goes (default bench/compare/results.md; JSON beside it)",
    )
    args = parser.parse_args(argv)
    args.systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    args.workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    unknown = [s for s in args.systems if s not in SYSTEMS]
    unknown += [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # a SIGTERM unwinds like Ctrl-C: workers and servers stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = Config.make(args.quick, args.runs)
    signal.signal(signal.SIGTERM, _interrupt)
    VENVS.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": machine(server_version()),
        "config": asdict(config),
        "systems": [],
    }
    log(f"systems {', '.join(args.systems)}; workloads {', '.join(args.workloads)}")
    for name in args.systems:
        outcome = bench_system(SYSTEMS[name], config, args.workloads)
        document["systems"].append(asdict(outcome))
    text = render(document)
    args.output.write_text(text)
    json_path = args.output.with_suffix(".json")
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    log(f"wrote {args.output} and {json_path}")
    print(json.dumps(document, indent=2) if args.json else text, end="\n" if args.json else "")
    return 1 if any(o["errors"] for o in document["systems"]) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted: every worker and server stopped")
        sys.exit(130)
