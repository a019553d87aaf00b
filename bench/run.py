"""redwork benchmark: throughput, latency, efficiency and round trips per job.

Runs on a private Valkey server with real worker processes and prints figures next to
their targets; it asserts nothing. See bench/README.md for what each figure means.

    .venv/bin/python bench/run.py            # the full run (a few minutes)
    .venv/bin/python bench/run.py --quick    # a short smoke run
    .venv/bin/python bench/run.py --only latency --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/run.py` puts bench/, not the root, first

import redis  # noqa: E402

from bench.tasks import (  # noqa: E402
    STATE_KEYS,
    app,
    latency,
    noop,
    sleep,
    state_saves,
    state_staged,
)
from redwork.client import Client  # noqa: E402
from redwork.job import Envelope  # noqa: E402
from redwork.queue import Queue  # noqa: E402
from redwork.server import ServerProcess  # noqa: E402
from redwork.settings import Settings  # noqa: E402

QUEUE = "default"
SCENARIOS = (
    "bulk_enqueue",
    "drain_1",
    "drain_2",
    "latency",
    "sleep_efficiency",
    "round_trips",
    "keyed",
    "state",
)
POLL = 0.01  # seconds between polls of a counter: a benchmark may poll, a test may not
WORKER_GRACE = 5.0  # REDWORK_GRACE of the workers
# Every scenario stops its workers only once all their jobs are done, so a worker exits
# within a fraction of a second of SIGTERM; one that does not (see README, "Known
# issues") is SIGKILLed after this long.
STOP_TIMEOUT = 5.0


class BenchError(Exception):
    pass


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; NaN where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Config:
    enqueue_jobs: int
    enqueue_repeats: int
    drain_jobs: int
    concurrencies: tuple[int, ...]
    latency_rate: int
    latency_seconds: float
    latency_concurrency: int
    sleep_jobs: int
    sleep_concurrency: int
    round_trip_jobs: int
    keyed_keys: int
    state_jobs: int
    state_saves_per_job: int
    staged_jobs: int
    unfenced_saves: int
    prefetch: int = 0

    @classmethod
    def make(cls, quick: bool, concurrencies: tuple[int, ...] | None, prefetch: int) -> Config:
        return cls(
            prefetch=prefetch,
            enqueue_jobs=20_000 if quick else 100_000,
            enqueue_repeats=3,
            drain_jobs=20_000 if quick else 100_000,
            concurrencies=concurrencies or ((50,) if quick else (50, 200)),
            latency_rate=500,
            latency_seconds=3.0 if quick else 10.0,
            latency_concurrency=50,
            sleep_jobs=300 if quick else 1000,
            sleep_concurrency=20,
            round_trip_jobs=5_000 if quick else 20_000,
            keyed_keys=1_000,
            state_jobs=1_000 if quick else 5_000,
            state_saves_per_job=10,
            staged_jobs=10_000 if quick else 50_000,
            unfenced_saves=1_000 if quick else 5_000,
        )


# -- counting the commands clients send ------------------------------------------------


class CommandCounter:
    """Counts the commands in one client's RESP request stream, by name, without
    buffering whole commands (a 1,000-job enqueue is a few hundred kB)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._buf = bytearray()
        self._args_left = 0  # bulk strings still to come in the current command
        self._skip = 0  # bytes of the current bulk string (and its CRLF) still to come
        self._want_name = False

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, end_of_data = 0, len(buf)
        while pos < end_of_data:
            if self._skip:
                step = min(self._skip, end_of_data - pos)
                pos += step
                self._skip -= step
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            if self._args_left == 0:
                if buf[pos] == ord("*"):
                    self._args_left = max(0, int(buf[pos + 1 : eol]))
                    self._want_name = self._args_left > 0
                else:  # an inline command
                    words = bytes(buf[pos:eol]).split()
                    if words:
                        self.counts[words[0].decode(errors="replace").lower()] += 1
                pos = eol + 2
                continue
            length = int(buf[pos + 1 : eol])  # "$<length>"
            if self._want_name:
                if end_of_data - (eol + 2) < length + 2:
                    break  # read the header again once the whole name is here
                name = bytes(buf[eol + 2 : eol + 2 + length]).decode(errors="replace")
                self.counts[name.lower()] += 1
                self._want_name = False
                pos = eol + 2 + length + 2
            else:
                self._skip = length + 2
                pos = eol + 2
            self._args_left -= 1
        del buf[:pos]


class CountingProxy:
    """A TCP relay to the server that counts the commands its clients send: the round
    trips a client makes, as opposed to the server's command counters, which also count
    every call a Lua script makes inside the server. Runs its own event loop in a thread;
    pipelined commands count one each (so the count is an upper bound on round trips)."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-proxy")
        self._counters: list[CommandCounter] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._thread.start()
        self._server = self._in_loop(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _in_loop(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.close()
            return
        counter = CommandCounter()
        self._counters.append(counter)
        self._writers.update((writer, up_writer))
        await asyncio.gather(_pump(reader, up_writer, counter), _pump(up_reader, writer, None))
        self._writers.difference_update((writer, up_writer))

    def counts(self) -> Counter[str]:
        async def total() -> Counter[str]:
            out: Counter[str] = Counter()
            for counter in self._counters:
                out.update(counter.counts)
            return out

        result: Counter[str] = self._in_loop(total())
        return result

    def reset(self) -> None:
        async def clear() -> None:
            for counter in self._counters:
                counter.counts.clear()

        self._in_loop(clear())

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            await asyncio.sleep(0.05)  # let the pumps see their sockets closed

        if self._thread.is_alive():
            self._in_loop(close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()


async def _pump(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, counter: CommandCounter | None
) -> None:
    try:
        while data := await src.read(1 << 16):
            if counter is not None:
                counter.feed(data)
            dst.write(data)
            await dst.drain()
    except OSError:
        pass
    finally:
        dst.close()


# -- worker processes --------------------------------------------------------------------


class Workers:
    """`python -m redwork worker bench.tasks:app --processes 1 -c C`, `count` times, as
    child processes; stopped with SIGTERM (then SIGKILL past the grace) on exit."""

    def __init__(
        self,
        bench: Bench,
        count: int,
        concurrency: int,
        url: str | None = None,
        env: dict[str, str] | None = None,
    ):
        self.bench = bench
        self.count = count
        self.concurrency = concurrency
        self.url = url or bench.url
        self.extra_env = env or {}
        """More variables for the workers (REDWORK_RESULT_TTL, say)."""
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def __enter__(self) -> Workers:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDWORK_")}
        env.update(
            REDWORK_REDIS_URL=self.url,
            REDWORK_QUEUES=QUEUE,
            REDWORK_PROCESSES="1",
            REDWORK_CONCURRENCY=str(self.concurrency),
            REDWORK_PREFETCH=str(self.bench.config.prefetch),
            REDWORK_GRACE=str(WORKER_GRACE),
            REDWORK_LOG_LEVEL=os.environ.get("BENCH_WORKER_LOG_LEVEL", "WARNING"),
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        )
        env.update(self.extra_env)
        command = [sys.executable, "-m", "redwork", "worker", "bench.tasks:app"]
        command += ["--processes", "1", "--concurrency", str(self.concurrency)]
        try:
            for _ in range(self.count):
                self.bench.worker_logs += 1
                log_path = self.bench.tmp / f"worker-{self.bench.worker_logs}.log"
                with open(log_path, "wb") as log_file:
                    proc = subprocess.Popen(
                        command,
                        env=env,
                        cwd=ROOT,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                    )
                self.procs.append((proc, log_path))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def check(self) -> None:
        for proc, log_path in self.procs:
            code = proc.poll()
            if code is not None:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
                raise BenchError(f"worker pid {proc.pid} exited with {code}; log tail:\n{tail}")

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log_path in self.procs:
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
                log(
                    f"worker pid {proc.pid} alive {STOP_TIMEOUT:g}s after SIGTERM; killed it"
                    + (f". Its log ends:\n{tail}" if tail else "")
                )
        self.procs.clear()


# -- the bench ---------------------------------------------------------------------------


class Bench:
    def __init__(self, server: ServerProcess, tmp: Path, config: Config) -> None:
        self.server = server
        self.url = server.url
        self.tmp = tmp
        self.config = config
        self.r = redis.Redis.from_url(self.url)
        self.queue = Queue(QUEUE)
        self.worker_logs = 0
        app.configure(Settings.load(env={}, redis_url=self.url))

    def close(self) -> None:
        app.client.close()
        self.r.close()

    def reset(self) -> None:
        """An empty database (the script cache survives FLUSHALL) and a fresh, small AOF,
        so that no scenario pays for rewriting what an earlier one appended."""
        self.r.flushall(asynchronous=False)
        with contextlib.suppress(redis.ResponseError):  # one is running already: wait for it
            self.r.bgrewriteaof()
        deadline = time.monotonic() + 60
        while True:
            persistence = self.r.info("persistence")
            if not (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]):
                return
            if time.monotonic() > deadline:
                raise BenchError("the AOF rewrite after FLUSHALL did not finish in 60s")
            time.sleep(POLL)

    def enqueue(self, envelopes: Iterable[Envelope]) -> list[str]:
        return [h.id for h in app.enqueue_many(envelopes)]

    def enqueue_noops(self, n: int) -> list[str]:
        return self.enqueue(noop.prepare() for _ in range(n))

    def completed(self) -> int:
        return int(self.r.hget(self.queue.stats, "completed") or 0)

    def wait_completed(
        self, n: int, workers: Workers, timeout: float | None = None, *, fail_fast: bool = False
    ) -> int:
        """Poll the queue's completed counter until it reaches n; returns the number of
        polls (each is one command the server counts). `fail_fast`: stop at the first
        failed job (tasks that can fail), rather than waiting out the timeout; it costs
        a second command per poll, so round_trips, which counts them, does without."""
        timeout = timeout if timeout is not None else 60.0 + n / 500
        deadline = time.monotonic() + timeout
        polls = 0
        while True:
            polls += 1
            done = self.completed()
            if done >= n:
                return polls
            if fail_fast:
                self.check_no_failures()
            workers.check()
            if time.monotonic() > deadline:
                raise BenchError(f"only {done} of {n} jobs completed after {timeout:.0f}s")
            time.sleep(POLL)

    def check_no_failures(self) -> None:
        if not int(self.r.hget(self.queue.stats, "failed") or 0):
            return
        first: list[str] = app.client.run(self.queue.failed_ids(0, 0))
        error = app.client.job(QUEUE, first[0]).error if first else None
        raise BenchError(f"a job failed: {(error or '(no error recorded)')[-2000:]}")

    def wait_idle(self, workers: Workers, timeout: float = 30.0) -> None:
        """Until every worker process is blocked on its wake-up marker (BZPOPMIN)."""
        deadline = time.monotonic() + timeout
        while True:
            blocked = sum(
                1
                for c in self.r.client_list()
                if c.get("cmd") == "bzpopmin" and "b" in c.get("flags", "")
            )
            if blocked >= workers.count:
                return
            workers.check()
            if time.monotonic() > deadline:
                raise BenchError(f"{blocked} of {workers.count} workers idle after {timeout}s")
            time.sleep(POLL)

    def job_fields(self, ids: list[str], *fields: str) -> list[list[bytes | None]]:
        out: list[list[bytes | None]] = []
        for start in range(0, len(ids), 5000):
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids[start : start + 5000]:
                pipe.hmget(self.queue.job_key(job_id), list(fields))
            out.extend(pipe.execute())
        return out

    def span_ms(self, ids: list[str]) -> tuple[int, int, dict[str, int]]:
        """Server-clock first start and last finish of the jobs (ms), and the first start
        of each worker."""
        first, last = math.inf, -math.inf
        per_worker: dict[str, int] = {}
        rows = self.job_fields(ids, "started_at", "finished_at", "worker")
        for started, finished, worker in rows:
            if started is None or finished is None or worker is None:
                raise BenchError("a job has no started_at/finished_at: did it run?")
            s, f, w = int(started), int(finished), worker.decode()
            first, last = min(first, s), max(last, f)
            per_worker[w] = min(per_worker.get(w, s), s)
        return int(first), int(last), per_worker

    def server_cpu(self) -> float:
        return proc_cpu(self.server.pid)

    def evalsha_usec(self) -> int:
        """Microseconds the server has spent running EVALSHA calls (the scripts) so far."""
        return int(self.r.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))

    def aof_rewrites(self) -> int:
        return int(self.r.info("persistence").get("aof_rewrites", 0))

    def state_versions(self) -> int:
        """The versions of the state entries the bench tasks write, summed: each save
        adds one, so this is the number of saves applied."""
        pipe = self.r.pipeline(transaction=False)
        for k in range(STATE_KEYS):
            pipe.hget(f"bench||k{k}", "version")
        return sum(int(v or 0) for v in pipe.execute())

    def commandstats(self) -> Counter[str]:
        stats = self.r.info("commandstats")
        return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


# -- scenarios ---------------------------------------------------------------------------


def bulk_enqueue(b: Bench) -> dict[str, Any]:
    """One producer: build n no-op jobs with Task.prepare and store them with one
    app.enqueue_many call (the client sends them 1,000 per script call)."""
    n = b.config.enqueue_jobs
    runs = []
    for i in range(b.config.enqueue_repeats):
        b.reset()
        rewrites, script_us = b.aof_rewrites(), b.evalsha_usec()
        server_cpu, producer_cpu = b.server_cpu(), time.process_time()
        t0 = time.perf_counter()
        envelopes = [noop.prepare() for _ in range(n)]
        t1 = time.perf_counter()
        handles = app.enqueue_many(envelopes)
        t2 = time.perf_counter()
        producer_cpu = time.process_time() - producer_cpu
        server_cpu = b.server_cpu() - server_cpu
        waiting = int(b.r.llen(b.queue.wait))
        if len(handles) != n or waiting != n:
            raise BenchError(f"enqueued {len(handles)}, {waiting} waiting; expected {n}")
        runs.append(
            {
                "jobs_per_s": n / (t2 - t0),
                "enqueue_many_jobs_per_s": n / (t2 - t1),
                "prepare_s": t1 - t0,
                "enqueue_many_s": t2 - t1,
                "producer_cpu_us_per_job": 1e6 * producer_cpu / n,
                "server_cpu_us_per_job": 1e6 * server_cpu / n,
                "server_script_us_per_job": (b.evalsha_usec() - script_us) / n,
                "aof_rewrites": b.aof_rewrites() - rewrites,
            }
        )
        log(
            f"bulk_enqueue run {i + 1}: {n / (t2 - t0):,.0f} jobs/s (prepare {t1 - t0:.2f}s, "
            f"enqueue_many {t2 - t1:.2f}s; CPU per job: producer {_us(runs[-1], 'producer')}, "
            f"server {_us(runs[-1], 'server')} of which in the script "
            f"{runs[-1]['server_script_us_per_job']:.0f} us; "
            f"{runs[-1]['aof_rewrites']} AOF rewrites)"
        )
    best = max(runs, key=lambda r: r["jobs_per_s"])
    return {"jobs": n, "runs": runs, **best}


def _us(run: dict[str, Any], who: str) -> str:
    return f"{run[f'{who}_cpu_us_per_job']:.0f} us"


def drain(b: Bench, processes: int) -> dict[str, Any]:
    """n no-op jobs enqueued first, then `processes` worker processes started; jobs/s
    from the first job's lease to the last job's completion, on the server's clock."""
    n = b.config.drain_jobs
    runs = []
    for concurrency in b.config.concurrencies:
        b.reset()
        run = _drain_enqueued(b, b.enqueue_noops(n), processes, concurrency)
        runs.append(run)
        log(f"drain_{processes} c={concurrency}: {_describe_drain(run)}")
    best = max(runs, key=lambda r: r["jobs_per_s"])
    return {"jobs": n, "processes": processes, "runs": runs, **best}


def _drain_enqueued(
    b: Bench, ids: list[str], processes: int, concurrency: int, *, fail_fast: bool = False
) -> dict[str, Any]:
    """Start `processes` worker processes on the jobs `ids`, already enqueued, and
    measure them until all are completed (shared by every drain-shaped scenario)."""
    n = len(ids)
    rewrites, script_us, server_cpu = b.aof_rewrites(), b.evalsha_usec(), b.server_cpu()
    spawned = time.perf_counter()
    with Workers(b, processes, concurrency) as workers:
        b.wait_completed(n, workers, fail_fast=fail_fast)
        wall = time.perf_counter() - spawned
        server_cpu = b.server_cpu() - server_cpu
        worker_cpu = sum(proc_cpu(proc.pid) for proc, _ in workers.procs)
    first, last, per_worker = b.span_ms(ids)
    seconds = max(last - first, 1) / 1000
    return {
        "concurrency": concurrency,
        "jobs_per_s": n / seconds,
        "seconds": seconds,
        "wall_incl_startup_s": wall,
        "worker_start_skew_ms": max(per_worker.values()) - min(per_worker.values()),
        "worker_cpu_us_per_job": 1e6 * worker_cpu / n,
        "server_cpu_us_per_job": 1e6 * server_cpu / n,
        "server_script_us_per_job": (b.evalsha_usec() - script_us) / n,
        "aof_rewrites": b.aof_rewrites() - rewrites,
    }


def _describe_drain(run: dict[str, Any]) -> str:
    return (
        f"{run['jobs_per_s']:,.0f} jobs/s ({run['seconds']:.2f}s; "
        f"{run['wall_incl_startup_s']:.2f}s with process start; start skew "
        f"{run['worker_start_skew_ms']} ms; CPU per job: workers {_us(run, 'worker')}, "
        f"server {_us(run, 'server')} of which in scripts "
        f"{run['server_script_us_per_job']:.0f} us; {run['aof_rewrites']} AOF rewrites)"
    )


def latency_scenario(b: Bench) -> dict[str, Any]:
    """A producer paced by its own clock at `rate` jobs/s; each job returns the time from
    just before its enqueue call to its start. One idle-waiting worker process."""
    cfg = b.config
    n = int(cfg.latency_rate * cfg.latency_seconds)
    interval = 1.0 / cfg.latency_rate
    b.reset()
    ids: list[str] = []
    behind = 0
    with Workers(b, 1, cfg.latency_concurrency) as workers:
        b.wait_idle(workers)
        start = time.perf_counter()
        for i in range(n):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.001:
                behind += 1
            ids.append(latency.enqueue(time.time()).id)
        produced = time.perf_counter() - start
        b.wait_completed(n, workers)
    raw = b.job_fields(ids, "result", "enqueued_at", "started_at")
    ms = sorted(1000 * float(json.loads(r)) for r, _, _ in raw if r is not None)
    if len(ms) != n:
        raise BenchError(f"{n - len(ms)} latency jobs have no result")
    # The server's view, to the millisecond: from the enqueue script to the fetch script.
    queued = sorted(int(s) - int(e) for _, e, s in raw if e is not None and s is not None)
    summary = {
        "jobs": n,
        "rate_target": cfg.latency_rate,
        "rate_achieved": n / produced,
        "enqueues_over_1ms_late": behind,
        "concurrency": cfg.latency_concurrency,
        "p50_ms": _percentile(ms, 50),
        "p90_ms": _percentile(ms, 90),
        "p99_ms": _percentile(ms, 99),
        "max_ms": ms[-1],
        "mean_ms": sum(ms) / n,
        "server_enqueued_to_leased_p50_ms": _percentile(queued, 50),
        "server_enqueued_to_leased_p99_ms": _percentile(queued, 99),
    }
    log(
        f"latency: p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms, "
        f"max {summary['max_ms']:.2f} ms at {summary['rate_achieved']:.0f} jobs/s; on the "
        f"server's clock, enqueue script to fetch script p50 "
        f"{summary['server_enqueued_to_leased_p50_ms']} ms, p99 "
        f"{summary['server_enqueued_to_leased_p99_ms']} ms"
    )
    return summary


def _percentile(ordered: list[Any], p: float) -> Any:
    """Nearest-rank percentile of a sorted list."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def sleep_efficiency(b: Bench) -> dict[str, Any]:
    """Jobs sleeping 10-60 ms (random.Random(42)) on one process with C slots: ideal
    (total sleep / C) over the actual first-start-to-last-finish time."""
    cfg = b.config
    rng = random.Random(42)
    durations = [rng.uniform(0.010, 0.060) for _ in range(cfg.sleep_jobs)]
    b.reset()
    ids = [h.id for h in app.enqueue_many(sleep.prepare(d) for d in durations)]
    with Workers(b, 1, cfg.sleep_concurrency) as workers:
        b.wait_completed(len(ids), workers)
    first, last, _ = b.span_ms(ids)
    actual = (last - first) / 1000
    ideal = sum(durations) / cfg.sleep_concurrency
    fifo = _fifo_makespan(durations, cfg.sleep_concurrency)
    result = {
        "jobs": len(ids),
        "concurrency": cfg.sleep_concurrency,
        "ideal_s": ideal,
        "fifo_schedule_s": fifo,
        "actual_s": actual,
        "efficiency_pct": 100 * ideal / actual,
        "efficiency_vs_fifo_schedule_pct": 100 * fifo / actual,
        "fifo_bound_pct": 100 * ideal / fifo,
    }
    log(
        f"sleep_efficiency: {result['efficiency_pct']:.1f}% (ideal {ideal:.3f}s, "
        f"zero-overhead FIFO schedule {fifo:.3f}s, actual {actual:.3f}s)"
    )
    return result


def _fifo_makespan(durations: Iterable[float], slots: int) -> float:
    """Wall time of running the jobs in order on `slots` slots with no overhead at all:
    the best any FIFO queue can do (ideal also assumes perfect packing of the tail)."""
    free_at = [0.0] * slots
    for d in durations:
        i = min(range(slots), key=free_at.__getitem__)
        free_at[i] += d
    return max(free_at)


def round_trips(b: Bench) -> dict[str, Any]:
    """Commands per job, enqueue and drain measured apart: those clients send (counted
    by a relay in front of the server) and those the server executes (INFO commandstats,
    which also counts every call made inside a Lua script)."""
    n = b.config.round_trip_jobs
    out: dict[str, Any] = {"jobs": n}
    proxy = CountingProxy(b.server.port)
    proxy.start()
    try:
        # Producer: one enqueue of n jobs from a fresh client (its connection setup included).
        b.reset()
        envelopes = [noop.prepare() for _ in range(n)]
        proxy.reset()
        before = b.commandstats()
        producer = Client(Settings.load(env={}, redis_url=proxy.url))
        producer.enqueue(envelopes)
        producer.close()
        server = b.commandstats() - before
        server["info"] -= 1  # our own INFO that took `before`
        out["enqueue"] = _per_job(proxy.counts(), server, n)
        log(f"round_trips enqueue: {_describe(out['enqueue'])}")
        # Worker: drain those n jobs with one worker process, for each concurrency.
        out["drain"] = []
        for concurrency in b.config.concurrencies:
            if concurrency != b.config.concurrencies[0]:
                b.reset()
                b.enqueue_noops(n)
            proxy.reset()
            before = b.commandstats()
            with Workers(b, 1, concurrency, url=proxy.url) as workers:
                polls = b.wait_completed(n, workers)
                server = b.commandstats() - before
                client = proxy.counts()
            server["info"] -= 1
            server["hget"] -= polls  # our own polls of the completed counter
            figures = {"concurrency": concurrency, **_per_job(client, server, n)}
            out["drain"].append(figures)
            log(f"round_trips drain c={concurrency}: {_describe(figures)}")
    finally:
        proxy.stop()
    return out


def _per_job(client: Counter[str], server: Counter[str], n: int) -> dict[str, Any]:
    client, server = +client, +server  # drop zero and negative counts
    return {
        "client_commands_per_job": client.total() / n,
        "evalsha_per_job": client["evalsha"] / n,
        "server_commands_per_job": server.total() / n,
        "client_commands": dict(client.most_common()),
        "server_commands": dict(server.most_common()),
    }


def _describe(f: dict[str, Any]) -> str:
    return (
        f"{f['client_commands_per_job']:.4f} client commands/job "
        f"({f['evalsha_per_job']:.4f} EVALSHA), "
        f"{f['server_commands_per_job']:.2f} server commands/job incl. inside scripts; "
        f"client: {f['client_commands']}"
    )


# The cost per-key ordering may add to a drain, as a floor on keyed / unkeyed jobs/s.
KEYED_RATIO_TARGET = 0.70


def keyed(b: Bench) -> dict[str, Any]:
    """Per-key ordering's cost: the drain_1 workload (n no-op jobs, then one worker
    process, for each concurrency) run without keys and then with a key per job,
    round-robin over 1,000 keys. Only a key's head circulates, so at most 1,000 jobs can
    be fetched at a time (by design); each completion puts its key's next job in line."""
    cfg = b.config
    n = cfg.drain_jobs
    # One Task per key, made once: options() builds a Task, too slow to call per job.
    by_key = [noop.options(key=f"acct-{k}") for k in range(cfg.keyed_keys)]
    unkeyed_runs, keyed_runs = [], []
    for concurrency in cfg.concurrencies:
        # The two back to back at each concurrency, so that they see the same machine.
        b.reset()
        unkeyed = _drain_enqueued(b, b.enqueue_noops(n), 1, concurrency)
        unkeyed_runs.append(unkeyed)
        log(f"keyed c={concurrency}, without keys: {_describe_drain(unkeyed)}")
        b.reset()
        ids = b.enqueue(by_key[i % len(by_key)].prepare() for i in range(n))
        circulating = int(b.r.llen(b.queue.wait))
        run = _drain_enqueued(b, ids, 1, concurrency)
        run.update(
            ratio=run["jobs_per_s"] / unkeyed["jobs_per_s"],
            circulating_at_start=circulating,
            order_violations=_order_violations(b, ids, len(by_key)),
            # Both 0 once every job is done: no key still has a head or a line.
            keys_left=int(b.r.hlen(b.queue.prefix + "keys")),
            held_left=int(b.r.get(b.queue.held) or 0),
        )
        keyed_runs.append(run)
        log(
            f"keyed c={concurrency}, {len(by_key):,} keys: {_describe_drain(run)}; "
            f"{run['ratio']:.2f} of unkeyed; {circulating:,} circulating at start, "
            f"{run['order_violations']} order violations"
        )
    best_unkeyed = max(unkeyed_runs, key=lambda r: r["jobs_per_s"])
    best_keyed = max(keyed_runs, key=lambda r: r["jobs_per_s"])
    return {
        "jobs": n,
        "keys": len(by_key),
        "unkeyed_jobs_per_s": best_unkeyed["jobs_per_s"],
        "unkeyed_concurrency": best_unkeyed["concurrency"],
        "keyed_jobs_per_s": best_keyed["jobs_per_s"],
        "keyed_concurrency": best_keyed["concurrency"],
        # Best against best, as drain_1 reports its best concurrency.
        "ratio": best_keyed["jobs_per_s"] / best_unkeyed["jobs_per_s"],
        "order_violations": sum(r["order_violations"] for r in keyed_runs),
        "unkeyed_runs": unkeyed_runs,
        "keyed_runs": keyed_runs,
    }


def _order_violations(b: Bench, ids: list[str], keys: int) -> int:
    """Jobs that started before the previous job of their key had finished, on the
    server's clock (ms): per-key ordering allows none. ids are in enqueue order and job
    i has key i % keys."""
    last_finished: dict[int, int] = {}
    violations = 0
    for i, (started, finished) in enumerate(b.job_fields(ids, "started_at", "finished_at")):
        if started is None or finished is None:
            raise BenchError("a keyed job has no started_at/finished_at: did it run?")
        if int(started) < last_finished.get(i % keys, 0):
            violations += 1
        last_finished[i % keys] = int(finished)
    return violations


def state(b: Bench) -> dict[str, Any]:
    """Versioned state: fenced saves from inside jobs, staged writes committed with the
    completion (next to no-op jobs, same run), and unfenced saves from a plain client.
    The jobs run on one worker process at the first concurrency value."""
    concurrency = b.config.concurrencies[0]
    staged, noops = _staged_writes(b, concurrency)
    return {
        "concurrency": concurrency,
        "fenced": _fenced_saves(b, concurrency),
        "staged": staged,
        "noop": noops,
        "unfenced": _unfenced_saves(b),
    }


def _fenced_saves(b: Bench, concurrency: int) -> dict[str, Any]:
    """Jobs that each await k saves, one after the other: each is a state_write call
    that checks the job's lease first. Measured like a drain, so saves/s includes the
    jobs' own fetch and completion."""
    n, k = b.config.state_jobs, b.config.state_saves_per_job
    b.reset()
    ids = b.enqueue(state_saves.prepare(j * k, k) for j in range(n))
    run = _drain_enqueued(b, ids, 1, concurrency, fail_fast=True)
    _check_saves(b, n * k)
    run.update(
        saves=n * k,
        saves_per_job=k,
        saves_per_s=run["jobs_per_s"] * k,
        worker_cpu_us_per_save=run["worker_cpu_us_per_job"] / k,
        server_cpu_us_per_save=run["server_cpu_us_per_job"] / k,
    )
    log(
        f"state, fenced saves in jobs c={concurrency}: {run['saves_per_s']:,.0f} saves/s "
        f"({k} per job; CPU per save: worker {run['worker_cpu_us_per_save']:.0f} us, "
        f"server {run['server_cpu_us_per_save']:.0f} us); as jobs: {_describe_drain(run)}"
    )
    return run


def _staged_writes(b: Bench, concurrency: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Jobs that each stage one write, applied by the complete script; and the same
    number of no-op jobs just before, as the baseline on the same machine state."""
    n = b.config.staged_jobs
    b.reset()
    noops = _drain_enqueued(b, b.enqueue_noops(n), 1, concurrency)
    log(f"state, no-op jobs c={concurrency}: {_describe_drain(noops)}")
    b.reset()
    ids = b.enqueue(state_staged.prepare(f"k{i % STATE_KEYS}", i) for i in range(n))
    staged = _drain_enqueued(b, ids, 1, concurrency, fail_fast=True)
    _check_saves(b, n)
    staged["ratio_to_noop"] = staged["jobs_per_s"] / noops["jobs_per_s"]
    log(
        f"state, one staged write per job c={concurrency}: {_describe_drain(staged)}; "
        f"{staged['ratio_to_noop']:.2f} of no-op jobs"
    )
    return staged, noops


def _check_saves(b: Bench, expected: int) -> None:
    applied = b.state_versions()
    if applied != expected:
        raise BenchError(f"{applied} state saves applied; the jobs made {expected}")


def _unfenced_saves(b: Bench) -> dict[str, Any]:
    """store.save from the benchmark's own process, outside any job, one after the
    other on one connection: each waits for its reply, so this is round-trip bound.
    A run of PINGs on the same connection gives the bare round trip to compare."""
    m = b.config.unfenced_saves
    b.reset()
    store = app.state("bench")
    store.save("warm-up", 0)  # connects and loads the script before the clock starts
    server_cpu, producer_cpu = b.server_cpu(), time.process_time()
    t0 = time.perf_counter()
    for i in range(m):
        store.save(f"k{i % STATE_KEYS}", i)
    seconds = time.perf_counter() - t0
    producer_cpu = time.process_time() - producer_cpu
    server_cpu = b.server_cpu() - server_cpu
    _check_saves(b, m)
    ping = app.client.redis().ping
    pings = 1000
    t0 = time.perf_counter()
    for _ in range(pings):
        ping()
    ping_us = 1e6 * (time.perf_counter() - t0) / pings
    result = {
        "saves": m,
        "saves_per_s": m / seconds,
        "us_per_save": 1e6 * seconds / m,
        "ping_us": ping_us,
        "producer_cpu_us_per_save": 1e6 * producer_cpu / m,
        "server_cpu_us_per_save": 1e6 * server_cpu / m,
    }
    log(
        f"state, unfenced saves: {result['saves_per_s']:,.0f} saves/s "
        f"({result['us_per_save']:.0f} us each, a PING {ping_us:.0f} us; CPU per save: "
        f"producer {result['producer_cpu_us_per_save']:.0f} us, "
        f"server {result['server_cpu_us_per_save']:.0f} us)"
    )
    return result


RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "bulk_enqueue": bulk_enqueue,
    "drain_1": lambda b: drain(b, 1),
    "drain_2": lambda b: drain(b, 2),
    "latency": latency_scenario,
    "sleep_efficiency": sleep_efficiency,
    "round_trips": round_trips,
    "keyed": keyed,
    "state": state,
}


# -- report ------------------------------------------------------------------------------


def machine(b: Bench) -> dict[str, Any]:
    server = b.r.info("server")
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "server": f"Valkey {server.get('valkey_version', server.get('redis_version'))}",
        "fsync": "everysec",
        "redis_py": version("redis"),
        "hiredis": version("hiredis"),
        "redwork": version("redwork"),
        "git": git("rev-parse", "--short", "HEAD"),
        "src_modified": bool(git("status", "--porcelain", "--", "src")),
    }


@dataclass
class Row:
    figure: str
    value: str
    target: str = ""
    ok: bool | None = None


# "Well under 1": at most one round trip per ten jobs.
ROUND_TRIP_LIMIT = 0.1
ROUND_TRIP_TARGET = "<< 1 (<= 0.1)"


def table(results: dict[str, dict[str, Any]]) -> list[Row]:
    rows = [
        Row(f"{name}: failed", "ERROR", "", False) for name, r in results.items() if "error" in r
    ]

    def done(name: str) -> dict[str, Any] | None:
        r = results.get(name)
        return r if r is not None and "error" not in r else None

    if r := done("bulk_enqueue"):
        rate = r["jobs_per_s"]
        figure = "bulk enqueue, jobs/s (prepare + enqueue_many, best of 3)"
        rows.append(Row(figure, f"{rate:,.0f}", ">= 60,000", rate >= 60_000))
        rows.append(Row("  enqueue_many alone, jobs/s", f"{r['enqueue_many_jobs_per_s']:,.0f}"))
        cpu = f"{r['producer_cpu_us_per_job']:.0f} / {r['server_cpu_us_per_job']:.0f}"
        rows.append(Row("  CPU per job, us: producer / server", cpu))
    for name, processes in (("drain_1", "1 process"), ("drain_2", "2 processes")):
        if r := done(name):
            rate = r["jobs_per_s"]
            figure, value = f"drain, {processes}, jobs/s", f"{rate:,.0f} (c={r['concurrency']})"
            if name == "drain_1":
                rows.append(Row(figure, value, ">= 12,000", rate >= 12_000))
            else:
                rows.append(Row(figure, value.replace(")", " each)")))
            cpu = f"{r['worker_cpu_us_per_job']:.0f} / {r['server_cpu_us_per_job']:.0f}"
            rows.append(Row("  CPU per job, us: worker(s) / server", cpu))
    if r := done("latency"):
        p50, p99 = r["p50_ms"], r["p99_ms"]
        rows.append(Row("latency enqueue->start p50, ms", f"{p50:.2f}", "<= 2", p50 <= 2))
        rows.append(Row("latency enqueue->start p99, ms", f"{p99:.2f}", "<= 10", p99 <= 10))
        rows.append(Row("latency enqueue->start max, ms", f"{r['max_ms']:.2f}"))
    if r := done("sleep_efficiency"):
        pct = r["efficiency_pct"]
        rows.append(Row("sleep efficiency, %", f"{pct:.1f}", ">= 97", pct >= 97))
        bound = f"{r['fifo_bound_pct']:.1f}"
        rows.append(Row("  best a zero-overhead FIFO queue could do, %", bound))
    if r := done("round_trips"):
        drains = [(f"worker (drain, c={d['concurrency']})", d) for d in r["drain"]]
        for who, f in [("producer (enqueue)", r["enqueue"]), *drains]:
            per_job = f["client_commands_per_job"]
            ok = per_job <= ROUND_TRIP_LIMIT
            rows.append(Row(f"round trips/job, {who}", f"{per_job:.4f}", ROUND_TRIP_TARGET, ok))
            rows.append(Row("  EVALSHA/job", f"{f['evalsha_per_job']:.4f}"))
            server = f"{f['server_commands_per_job']:.2f}"
            rows.append(Row("  server commands/job, incl. those inside scripts", server))
    if r := done("keyed"):
        figure = f"drain, 1 process, keyed ({r['keys']:,} keys), jobs/s"
        rows.append(Row(figure, f"{r['keyed_jobs_per_s']:,.0f} (c={r['keyed_concurrency']})"))
        unkeyed = f"{r['unkeyed_jobs_per_s']:,.0f} (c={r['unkeyed_concurrency']})"
        rows.append(Row("  the same jobs without keys, jobs/s", unkeyed))
        ratio, target = r["ratio"], f">= {KEYED_RATIO_TARGET:.2f}"
        rows.append(Row("  keyed / unkeyed", f"{ratio:.2f}", target, ratio >= KEYED_RATIO_TARGET))
        best = [max(r[f"{m}_runs"], key=lambda x: x["jobs_per_s"]) for m in ("unkeyed", "keyed")]
        cpu = " / ".join(f"{x['server_cpu_us_per_job']:.0f}" for x in best)
        rows.append(Row("  server CPU per job, us: unkeyed / keyed", cpu))
        violations = r["order_violations"]
        rows.append(
            Row(
                "  started before their key's previous job ended",
                str(violations),
                "0",
                violations == 0,
            )
        )
    if r := done("state"):
        c, fenced, staged = r["concurrency"], r["fenced"], r["staged"]
        figure = f"fenced saves in jobs, saves/s ({fenced['saves_per_job']} per job, 1 process)"
        rows.append(Row(figure, f"{fenced['saves_per_s']:,.0f} (c={c})"))
        cpu = f"{fenced['worker_cpu_us_per_save']:.0f} / {fenced['server_cpu_us_per_save']:.0f}"
        rows.append(Row("  CPU per save, us: worker / server", cpu))
        figure = "jobs with one staged write, jobs/s (1 process)"
        rows.append(Row(figure, f"{staged['jobs_per_s']:,.0f} (c={c})"))
        rows.append(
            Row("  no-op jobs, same run, jobs/s", f"{r['noop']['jobs_per_s']:,.0f} (c={c})")
        )
        rows.append(Row("  staged / no-op", f"{staged['ratio_to_noop']:.2f}"))
        unfenced = r["unfenced"]
        figure = "unfenced saves, one client, sequential, saves/s"
        rows.append(Row(figure, f"{unfenced['saves_per_s']:,.0f}"))
        each = f"{unfenced['us_per_save']:.0f} / {unfenced['ping_us']:.0f}"
        rows.append(Row("  us per save / per PING", each))
    return rows


def render(info: dict[str, Any], config: Config, rows: list[Row]) -> str:
    lines = [
        f"machine: {info['cores']} cores ({info['cpu']}), {info['os']}, "
        f"Python {info['python']}, {info['server']} (appendfsync {info['fsync']}), "
        f"redis-py {info['redis_py']} + hiredis {info['hiredis']}; load average at start "
        f"{', '.join(map(str, info['load_average_at_start']))}",
        f"redwork {info['redwork']} at {info['git']}"
        + (" with uncommitted changes in src/" if info["src_modified"] else ""),
        f"sizes: enqueue {config.enqueue_jobs:,}, drain {config.drain_jobs:,} "
        f"(concurrency {', '.join(map(str, config.concurrencies))}), latency "
        f"{config.latency_rate}/s for {config.latency_seconds:g}s, sleep {config.sleep_jobs}, "
        f"round trips {config.round_trip_jobs:,}; worker prefetch {config.prefetch}",
        f"keyed: drain sizes over {config.keyed_keys:,} keys; state: "
        f"{config.state_jobs:,} jobs x {config.state_saves_per_job} fenced saves, "
        f"{config.staged_jobs:,} staged, {config.unfenced_saves:,} unfenced",
        "",
    ]
    width = max(len(r.figure) for r in rows) if rows else 10
    vwidth = max((len(r.value) for r in rows), default=5)
    lines.append(f"{'figure':<{width}}  {'value':>{vwidth}}  {'target':<14} ok")
    lines.append("-" * (width + vwidth + 22))
    for r in rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        lines.append(f"{r.figure:<{width}}  {r.value:>{vwidth}}  {r.target:<14} {ok}")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--only",
        metavar="NAME",
        help=f"run only these scenarios (comma-separated): {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--concurrency",
        metavar="C[,C...]",
        help="worker concurrency values for drain_* and round_trips (default 50,200)",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=0,
        metavar="N",
        help="REDWORK_PREFETCH for every worker process (default 0, redwork's default)",
    )
    args = parser.parse_args(argv)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            parser.error(f"unknown scenario {', '.join(unknown)}; choose from {SCENARIOS}")
        args.only = names
    if args.concurrency:
        try:
            args.concurrency = tuple(int(c) for c in args.concurrency.split(",") if c)
        except ValueError:
            parser.error("--concurrency takes integers, e.g. 50,200")
    return args


def _no_nan(value: Any) -> Any:
    """NaN (a CPU time that could not be read) as null, which JSON has."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


@contextlib.contextmanager
def running_server() -> Iterator[tuple[ServerProcess, Path]]:
    with tempfile.TemporaryDirectory(prefix="redwork-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "valkey", fsync="everysec")
        server.start()
        try:
            yield server, Path(tmp)
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = Config.make(args.quick, args.concurrency, args.prefetch)
    names = args.only or list(SCENARIOS)
    results: dict[str, dict[str, Any]] = {}
    with running_server() as (server, tmp):
        b = Bench(server, tmp, config)
        try:
            info = machine(b)
            log(f"Valkey at {server.url} (pid {server.pid}); running {', '.join(names)}")
            for name in names:
                log(f"-- {name}")
                try:
                    results[name] = RUNNERS[name](b)
                except (BenchError, redis.RedisError, OSError) as exc:
                    log(f"{name} failed: {exc}")
                    results[name] = {"error": str(exc)}
        finally:
            b.close()
    rows = table(results)
    if args.json:
        document = {
            "machine": info,
            "config": asdict(config),
            "results": results,
            "table": [asdict(r) for r in rows],
        }
        print(json.dumps(_no_nan(document), indent=2))
    else:
        print(render(info, config, rows))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
