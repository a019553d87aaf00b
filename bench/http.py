"""redwork HTTP benchmark: jobs submitted per second over HTTP, and the delay of live
updates (a job's state change to a WebSocket client receiving it) with 1 to 1,000
subscribers on one `redwork serve` process. It asserts nothing; see bench/README.md,
"HTTP API".

    .venv/bin/python bench/http.py            # the full run (about 2.5 minutes)
    .venv/bin/python bench/http.py --quick    # a short smoke run
    .venv/bin/python bench/http.py --json
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `python bench/http.py` puts bench/ first on sys.path, where this file would shadow the
# standard library's `http` package (which httpx and the rest import): put the root there.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from array import array  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from importlib import metadata  # noqa: E402
from typing import Any  # noqa: E402

if importlib.util.find_spec("sniffio") is None:
    # httpcore tries `import sniffio` on every request; not installed, each failed import
    # searches sys.path again (about 0.25 ms of client CPU here). None in sys.modules makes
    # it fail at once, the same way.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

import httpx  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402

from bench.run import BenchError, _no_nan, log, proc_cpu, running_server  # noqa: E402
from bench.run import machine as run_machine  # noqa: E402
from bench.tasks import app, noop  # noqa: E402
from redwork.queue import Queue  # noqa: E402
from redwork.server import ServerProcess, free_port  # noqa: E402
from redwork.settings import Settings  # noqa: E402

QUEUE = "default"
POLL = 0.01  # seconds between polls of a counter: a benchmark may poll, a test may not
STOP_TIMEOUT = 5.0
STOP_JOB = "bench-http-stop"  # the last job of a delay run: clients stop once it completed
DELAY_TARGET_MS = 50.0  # p99 at 1,000 subscribers
DEFAULT_RUNS = "1,100,1000,1000@1"


def sched_wait(pid: int | None) -> float:
    """Seconds the process's main thread has spent runnable but waiting for a CPU."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return math.nan


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return math.nan, math.nan
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    tick = os.sysconf("SC_CLK_TCK")
    return (total - fields[3] - fields[4]) / tick, total / tick


class CpuMeter:
    """CPU used by named processes between start and stop, with the time their main
    threads waited for a CPU, and the machine's total: on a shared 2-core machine the
    rest ("others") competes with the benchmark."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.cpu = {name: proc_cpu(pid) for name, pid in pids.items()}
        self.wait = {name: sched_wait(pid) for name, pid in pids.items()}
        self.own = time.process_time()
        self.busy, self.total = machine_cpu()
        self.t0 = time.perf_counter()

    def stop(self, extra_cpu: float = 0.0) -> dict[str, Any]:
        """Per process: `<name>_cpu_s` and `<name>_wait_pct`; `machine_busy_pct` (100 is
        every core busy) and `others_cpu_pct` (cores' worth of CPU used by processes
        outside the benchmark, in %). `extra_cpu`: CPU seconds of processes that have
        exited (the client processes report their own)."""
        seconds = time.perf_counter() - self.t0
        busy, total = machine_cpu()
        out: dict[str, Any] = {"measured_s": seconds}
        ours = time.process_time() - self.own + extra_cpu
        for name, pid in self.pids.items():
            cpu = proc_cpu(pid) - self.cpu[name]
            out[f"{name}_cpu_s"] = cpu
            out[f"{name}_wait_pct"] = 100 * (sched_wait(pid) - self.wait[name]) / seconds
            ours += cpu
        out["machine_busy_pct"] = 100 * (busy - self.busy) / (total - self.total)
        out["others_cpu_pct"] = 100 * (busy - self.busy - ours) / seconds
        return out


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    if not values:
        return math.nan
    return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]


def raise_open_files() -> int:
    """Soft open-files limit up to the hard one (1,000 WebSockets need 1,000 sockets on
    each side); child processes inherit it. Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65_536 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


@dataclass(frozen=True)
class Config:
    submit_jobs: int
    connections: int
    batch_jobs: int
    batch_size: int
    delay_runs: tuple[tuple[int, int], ...]
    """(subscribers, jobs per second) of each delay run"""
    seconds: float
    worker_concurrency: int
    client_processes: int
    compression: bool

    @classmethod
    def make(cls, args: argparse.Namespace) -> Config:
        return cls(
            submit_jobs=1_000 if args.quick else 5_000,
            connections=50,
            batch_jobs=10_000 if args.quick else 50_000,
            batch_size=100,
            delay_runs=tuple((n, rate or args.rate) for n, rate in args.subscribers),
            seconds=args.seconds or (3.0 if args.quick else 10.0),
            worker_concurrency=50,
            client_processes=args.client_processes,
            compression=args.compression,
        )


# -- processes -----------------------------------------------------------------------------


def child_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDWORK_")}
    env.update(
        REDWORK_REDIS_URL=url,
        REDWORK_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    )
    return env


class Child:
    """A child process with its output in a log file; SIGTERM (then SIGKILL) on stop."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"{self.name} (pid {self.pid}) exited with {code}:\n{self.tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> float:
        """Seconds it took to exit after SIGTERM (`timeout` if it had to be killed)."""
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            log(f"{self.name} (pid {self.pid}) alive {timeout:g}s after SIGTERM; killed")
        return time.perf_counter() - t0


class Bench:
    def __init__(self, server: ServerProcess, tmp: Path, config: Config) -> None:
        self.server = server
        self.tmp = tmp
        self.config = config
        self.r = redis.Redis.from_url(server.url)
        self.queue = Queue(QUEUE)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.serve: Child | None = None
        self.workers = 0
        self.serve_exit_s: float | None = None
        app.configure(Settings.load(env={}, redis_url=server.url))

    def start_serve(self) -> None:
        command = [sys.executable, "-m", "redwork", "serve", "bench.tasks:app"]
        command += ["--port", str(self.port)]
        self.serve = Child("serve", command, child_env(self.server.url), self.tmp)
        deadline = time.monotonic() + 30
        while True:
            self.serve.check()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"redwork serve did not answer in 30s:\n{self.serve.tail()}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.serve is not None:
            # uvicorn waits for the open WebSocket handlers to end; see bench/README.md.
            self.serve_exit_s = self.serve.stop(timeout=30)
            log(f"redwork serve exited {self.serve_exit_s:.1f}s after SIGTERM")
        app.client.close()
        self.r.close()

    @property
    def serve_pid(self) -> int | None:
        return self.serve.pid if self.serve else None

    def reset(self) -> None:
        """An empty database and a fresh AOF (as in bench/run.py)."""
        self.r.flushall(asynchronous=False)
        with contextlib.suppress(redis.ResponseError):
            self.r.bgrewriteaof()
        deadline = time.monotonic() + 60
        while True:
            persistence = self.r.info("persistence")
            if not (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]):
                return
            if time.monotonic() > deadline:
                raise BenchError("the AOF rewrite after FLUSHALL did not finish in 60s")
            time.sleep(POLL)

    def stat(self, name: str) -> int:
        return int(self.r.hget(self.queue.stats, name) or 0)

    def worker(self, concurrency: int) -> Child:
        self.workers += 1
        command = [sys.executable, "-m", "redwork", "worker", "bench.tasks:app"]
        command += ["--processes", "1", "--concurrency", str(concurrency)]
        env = child_env(self.server.url) | {"REDWORK_QUEUES": QUEUE, "REDWORK_GRACE": "5"}
        return Child(f"worker-{self.workers}", command, env, self.tmp)

    def wait_completed(self, n: int, watch: list[Child], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (done := self.stat("completed")) < n:
            for child in watch:
                child.check()
            if time.monotonic() > deadline:
                raise BenchError(f"only {done} of {n} jobs completed after {timeout:.0f}s")
            time.sleep(POLL)


# -- 1. submitting jobs over HTTP -------------------------------------------------------------


async def _submit(
    base: str, connections: int, requests: int, path: str, body: bytes, jobs_per_request: int
) -> dict[str, Any]:
    """`requests` POSTs of `body`, `connections` at a time, on one keep-alive pool."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        # Open every connection first, so that connection set-up is not measured.
        warm = [client.get("/healthz") for _ in range(connections)]
        await asyncio.gather(*warm)
        left = requests
        errors: list[str] = []

        async def loop() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                response = await client.post(path, content=body, headers=headers)
                if response.status_code != 201:
                    errors.append(f"{response.status_code} {response.text[:200]}")

        cpu = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(connections)))
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu
    if errors:
        raise BenchError(f"{len(errors)} of {requests} requests failed, e.g. {errors[0]}")
    jobs = requests * jobs_per_request
    return {"jobs": jobs, "seconds": seconds, "jobs_per_s": jobs / seconds, "client_cpu": cpu}


def submit(b: Bench, batch: bool) -> dict[str, Any]:
    c = b.config
    if batch:
        path, per_request, total = "/api/jobs/batch", c.batch_size, c.batch_jobs
        body = orjson.dumps({"jobs": [{"task": "bench.noop"}] * per_request})
    else:
        path, per_request, total = "/api/jobs", 1, c.submit_jobs
        body = orjson.dumps({"task": "bench.noop"})
    b.reset()
    meter = CpuMeter({"serve": b.serve_pid, "valkey": b.server.pid})
    result = asyncio.run(
        _submit(b.base, c.connections, total // per_request, path, body, per_request)
    )
    cpu = meter.stop()
    serve_cpu, server_cpu = cpu["serve_cpu_s"], cpu["valkey_cpu_s"]
    stored = b.stat("enqueued")
    if stored != result["jobs"]:
        raise BenchError(f"{result['jobs']} jobs submitted but the queue counted {stored}")
    jobs, seconds = result["jobs"], result["seconds"]
    result.update(
        path=path,
        jobs_per_request=per_request,
        connections=c.connections,
        requests_per_s=jobs / per_request / seconds,
        client_cpu_us_per_job=1e6 * result.pop("client_cpu") / jobs,
        serve_cpu_us_per_job=1e6 * serve_cpu / jobs,
        valkey_cpu_us_per_job=1e6 * server_cpu / jobs,
        serve_cpu_pct=100 * serve_cpu / seconds,
        serve_wait_pct=cpu["serve_wait_pct"],
        machine_busy_pct=cpu["machine_busy_pct"],
        others_cpu_pct=cpu["others_cpu_pct"],
    )
    log(
        f"POST {path} ({per_request}/request, {c.connections} connections): "
        f"{result['jobs_per_s']:,.0f} jobs/s; CPU per job: client "
        f"{result['client_cpu_us_per_job']:.0f} us, serve {result['serve_cpu_us_per_job']:.0f}"
        f" us ({result['serve_cpu_pct']:.0f}% of a core), Valkey "
        f"{result['valkey_cpu_us_per_job']:.0f} us; machine {result['machine_busy_pct']:.0f}% "
        f"busy, other processes {result['others_cpu_pct']:.0f}% of a core"
    )
    return result


# -- 2. update delay -------------------------------------------------------------------------


async def _client_main(url: str, count: int, out: Path, compression: bool) -> dict[str, Any]:
    """One client process: `count` WebSockets on the firehose; each records, for every
    message with an `at`, its receive time minus `at` (ms), until it sees STOP_JOB
    completed. Prints "ready" once every connection is open."""
    from websockets.asyncio.client import connect

    delays = array("d")
    dropped = 0
    stopped = 0
    gate = asyncio.Semaphore(50)  # connections opening at once
    sockets: list[Any] = []

    async def open_one() -> None:
        async with gate:
            ws = await connect(
                url,
                compression="deflate" if compression else None,
                max_queue=None,
                open_timeout=60,
                ping_interval=None,
            )
            sockets.append(ws)

    await asyncio.gather(*(open_one() for _ in range(count)))
    print("ready", flush=True)
    cpu, wall, wait = time.process_time(), time.perf_counter(), sched_wait(os.getpid())

    async def listen(ws: Any) -> None:
        nonlocal dropped, stopped
        async for raw in ws:
            received = time.time() * 1000
            message = orjson.loads(raw)
            at = message.get("at")
            if at is not None:
                delays.append(received - at)
            kind = message.get("type")
            if kind == "dropped":
                dropped += 1
                return
            if (
                kind == "event"
                and message.get("event") == "completed"
                and STOP_JOB in message.get("jobs", ())
            ):
                stopped += 1
                return

    await asyncio.gather(*(listen(ws) for ws in sockets), return_exceptions=True)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    wait = sched_wait(os.getpid()) - wait
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    with open(out, "wb") as f:
        delays.tofile(f)
    return {"clients": count, "messages": len(delays), "dropped": dropped, "stopped": stopped,
            "cpu_s": cpu, "wall_s": wall, "wait_s": wait}  # fmt: skip


def client_process(args: argparse.Namespace) -> int:
    raise_open_files()
    result = asyncio.run(_client_main(args.client, args.count, Path(args.out), args.compression))
    print(json.dumps(result), flush=True)
    return 0


class Clients:
    """`total` firehose WebSockets spread over `processes` client processes."""

    def __init__(self, b: Bench, total: int, processes: int) -> None:
        self.b = b
        self.procs: list[tuple[subprocess.Popen[str], Path, int]] = []
        url = f"ws://127.0.0.1:{b.port}/api/ws"
        processes = max(1, min(processes, total))
        for index in range(processes):
            count = total // processes + (1 if index < total % processes else 0)
            out = b.tmp / f"delays-{index}.bin"
            command = [sys.executable, str(Path(__file__).resolve()), "--client", url]
            command += ["--count", str(count), "--out", str(out)]
            if b.config.compression:
                command.append("--compression")
            proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            self.procs.append((proc, out, count))

    def wait_ready(self) -> None:
        for proc, _, _ in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise BenchError(f"client process {proc.pid} failed to connect ({line!r})")

    def results(self, timeout: float) -> tuple[list[dict[str, Any]], list[float]]:
        reports, delays = [], array("d")
        for proc, out, _ in self.procs:
            try:
                stdout, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"client process {proc.pid} did not finish") from exc
            if proc.returncode != 0:
                raise BenchError(f"client process {proc.pid} exited with {proc.returncode}")
            reports.append(json.loads(stdout.strip().splitlines()[-1]))
            with open(out, "rb") as f:
                delays.frombytes(f.read())
        return reports, sorted(delays)

    def kill(self) -> None:
        for proc, _, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _produce(rate: int, seconds: float) -> int:
    """`rate` no-op jobs a second for `seconds`, paced by the clock, one enqueue each;
    then STOP_JOB."""
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(n):
        pause = t0 + i / rate - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        await noop.aenqueue()
    await noop.options(job_id=STOP_JOB).aenqueue()
    await app.client.aclose()
    return n + 1


def update_delay(b: Bench, subscribers: int, rate: int) -> dict[str, Any]:
    c = b.config
    b.reset()
    processes = 1 if subscribers < 100 else c.client_processes
    worker = b.worker(c.worker_concurrency)
    clients: Clients | None = None
    try:
        noop.enqueue()  # the worker is up once it has run this one
        b.wait_completed(1, [worker, b.serve] if b.serve else [worker], 60)
        clients = Clients(b, subscribers, processes)
        clients.wait_ready()
        log(f"{subscribers} subscribers connected ({len(clients.procs)} client processes)")
        events_before = int(b.r.xlen(b.queue.events))
        meter = CpuMeter({"serve": b.serve_pid, "valkey": b.server.pid, "worker": worker.pid})
        jobs = asyncio.run(_produce(rate, c.seconds))
        b.wait_completed(jobs + 1, [worker], 60)
        reports, delays = clients.results(timeout=120)
        cpu = meter.stop(extra_cpu=sum(r["cpu_s"] for r in reports))
    finally:
        if clients is not None:
            clients.kill()
        worker.stop()
    seconds = cpu["measured_s"]
    events = int(b.r.xlen(b.queue.events)) - events_before
    messages = len(delays)
    dropped = sum(r["dropped"] for r in reports)
    client_cpu = sum(r["cpu_s"] for r in reports)
    result = {
        "subscribers": subscribers,
        "client_processes": len(reports),
        "jobs": jobs,
        "rate": rate,
        "seconds": seconds,
        "events": events,
        "messages": messages,
        "messages_per_s": messages / seconds,
        "missing_messages": subscribers * events - messages,
        "dropped_clients": dropped,
        "p50_ms": percentile(delays, 50),
        "p90_ms": percentile(delays, 90),
        "p99_ms": percentile(delays, 99),
        "max_ms": delays[-1] if delays else math.nan,
        "serve_cpu_pct": 100 * cpu["serve_cpu_s"] / seconds,
        "serve_wait_pct": cpu["serve_wait_pct"],
        "serve_cpu_us_per_message": 1e6 * cpu["serve_cpu_s"] / messages if messages else None,
        "valkey_cpu_pct": 100 * cpu["valkey_cpu_s"] / seconds,
        "worker_cpu_pct": 100 * cpu["worker_cpu_s"] / seconds,
        "client_cpu_pct": 100 * client_cpu / seconds,
        "client_cpu_pct_by_process": [100 * r["cpu_s"] / r["wall_s"] for r in reports],
        "client_wait_pct_by_process": [100 * r["wait_s"] / r["wall_s"] for r in reports],
        "client_cpu_us_per_message": 1e6 * client_cpu / messages if messages else None,
        "machine_busy_pct": cpu["machine_busy_pct"],
        "others_cpu_pct": cpu["others_cpu_pct"],
    }
    log(
        f"{subscribers} subscribers, {rate} jobs/s: {messages:,} messages "
        f"({result['messages_per_s']:,.0f}/s), delay p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms, max "
        f"{result['max_ms']:.1f} ms; CPU, % of a core: serve {result['serve_cpu_pct']:.0f} "
        f"(waited for a CPU {result['serve_wait_pct']:.0f}), clients "
        f"{result['client_cpu_pct']:.0f} ({len(reports)} processes), Valkey "
        f"{result['valkey_cpu_pct']:.0f}, worker {result['worker_cpu_pct']:.0f}, other "
        f"processes {result['others_cpu_pct']:.0f}; machine {result['machine_busy_pct']:.0f}% busy"
        + (f"; {dropped} clients dropped" if dropped else "")
    )
    return result


# -- report ----------------------------------------------------------------------------------


def machine(b: Bench) -> dict[str, Any]:
    """bench/run.py's description of the machine, with what the HTTP side runs on."""
    packages = ("fastapi", "starlette", "uvicorn", "websockets", "httpx")
    return {
        **run_machine(b),  # type: ignore[arg-type]  # it reads b.r only
        "packages": {name: _version(name) for name in packages},
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def render(info: dict[str, Any], config: Config, results: dict[str, Any]) -> str:
    lines = [
        f"machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
        f"{info['server']}; load average at start "
        f"{', '.join(map(str, info['load_average_at_start']))}; redwork at {info['git']}"
        + (" with uncommitted changes in src/" if info["src_modified"] else ""),
        f"delay runs: no-op jobs enqueued at a steady rate for {config.seconds:g} s, one worker;"
        f" every client on the firehose /api/ws, permessage-deflate "
        f"{'on' if config.compression else 'off'}; CPU in % of one core",
        "",
        "| figure | value | CPU | target |",
        "|---|---|---|---|",
    ]
    for name in ("submit", "submit_batch"):
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:60]} | | |")
            continue
        figure = (
            f"POST {r['path']}, {r['jobs_per_request']}/request, {r['connections']} connections"
        )
        cpu = (
            f"per job: client {r['client_cpu_us_per_job']:.0f} us, serve "
            f"{r['serve_cpu_us_per_job']:.0f} us, Valkey {r['valkey_cpu_us_per_job']:.0f} us; "
            f"other processes {r['others_cpu_pct']:.0f}%"
        )
        lines.append(f"| {figure} | {r['jobs_per_s']:,.0f} jobs/s | {cpu} | |")
    for r in results.get("delay", []):
        n, rate = r["subscribers"], r["rate"]
        figure = f"update delay p50 / p99 ms, {n:,} subscriber{'s' * (n != 1)}, {rate} jobs/s"
        if "error" in r:
            lines.append(f"| {figure} | failed: {r['error'][:60]} | | |")
            continue
        value = f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} (max {r['max_ms']:.0f})"
        cpu = (
            f"serve {r['serve_cpu_pct']:.0f}%, clients {r['client_cpu_pct']:.0f}% "
            f"({r['client_processes']} proc.), other processes {r['others_cpu_pct']:.0f}%; "
            f"{r['messages_per_s']:,.0f} msg/s ({r['events'] / r['seconds']:.0f} events/s)"
        )
        if r["dropped_clients"]:
            cpu += f"; {r['dropped_clients']} dropped"
        target = ""
        if n == 1000:
            ok = r["p99_ms"] <= DELAY_TARGET_MS and not r["dropped_clients"]
            target = f"p99 <= {DELAY_TARGET_MS:g}: {'met' if ok else 'missed'}"
        lines.append(f"| {figure} | {value} | {cpu} | {target} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--only", choices=("submit", "delay"), help="run only the submission or delay part"
    )
    parser.add_argument(
        "--subscribers",
        metavar="N[@RATE],...",
        default=DEFAULT_RUNS,
        help=f"subscribers of each delay run, @RATE: its jobs/s (default {DEFAULT_RUNS})",
    )
    parser.add_argument("--rate", type=int, default=50, help="jobs/s where no @RATE (50)")
    parser.add_argument("--seconds", type=float, help="length of a delay run (10; quick 3)")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=2,
        metavar="N",
        help="processes the WebSocket clients are spread over, from 100 subscribers (2)",
    )
    parser.add_argument(
        "--compression",
        action="store_true",
        help="clients offer permessage-deflate, as browsers do (default: off)",
    )
    # The client processes this script starts for itself.
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        runs = [item.partition("@") for item in args.subscribers.split(",") if item]
        args.subscribers = [(int(n), int(rate) if rate else None) for n, _, rate in runs]
    except ValueError:
        parser.error(f"--subscribers takes N or N@RATE items, e.g. {DEFAULT_RUNS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client:
        return client_process(args)
    config = Config.make(args)
    limit = raise_open_files()  # `redwork serve` inherits it
    most = max((n for n, _ in config.delay_runs), default=0)
    if limit < most + 100:
        log(f"open-files limit {limit}: too low for {most} subscribers")
    results: dict[str, Any] = {}
    failed = False
    with running_server() as (server, tmp):
        b = Bench(server, tmp, config)
        try:
            info = machine(b)
            b.start_serve()
            log(f"Valkey at {server.url}, redwork serve at {b.base} (pid {b.serve.pid})")  # type: ignore[union-attr]
            if args.only in (None, "submit"):
                for name, batch in (("submit", False), ("submit_batch", True)):
                    try:
                        results[name] = submit(b, batch)
                    except (BenchError, httpx.HTTPError, redis.RedisError, OSError) as exc:
                        log(f"{name} failed: {exc}")
                        results[name] = {"error": str(exc)}
                        failed = True
            if args.only in (None, "delay"):
                results["delay"] = []
                for n, rate in config.delay_runs:
                    try:
                        results["delay"].append(update_delay(b, n, rate))
                    except (BenchError, redis.RedisError, OSError) as exc:
                        log(f"delay with {n} subscribers failed: {exc}")
                        results["delay"].append({"subscribers": n, "rate": rate, "error": str(exc)})
                        failed = True
        finally:
            b.close()
    if args.json:
        results["serve_exit_s"] = b.serve_exit_s
        document = {"machine": info, "config": asdict(config), "results": results}
        print(json.dumps(_no_nan(document), indent=2))
    else:
        print(render(info, config, results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
