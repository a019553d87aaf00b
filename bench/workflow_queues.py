"""redwork workflows across queues: what a workflow whose jobs run in two queues costs,
next to the same workflow in one queue. A chain whose every edge crosses queues, on one
server and on a 3-primary Cluster (its two queues on different primaries), and a chord
whose members run in a second queue and whose callback runs at home. Real servers and
real worker processes, as in bench/run.py; it asserts nothing beyond each workflow
succeeding. See bench/README.md, "Workflows across queues".

    .venv/bin/python bench/workflow_queues.py           # 1,000 steps, 10,000 members, 3 rounds
    .venv/bin/python bench/workflow_queues.py --quick   # 200 steps, 1,000 members, 1 round
    .venv/bin/python bench/workflow_queues.py --steps 2000 --rounds 5 --json
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/workflow_queues.py`, bench/ would come first on sys.path, and its
# http.py would hide the standard library's.
sys.path[:] = [str(ROOT)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")
]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402

from bench.cluster import (  # noqa: E402
    NODE_TIMEOUT_MS,
    PRIMARIES,
    _cpu,
    _dir,
    _table,
    _timings,
    queues_on_distinct_primaries,
)
from bench.http import CpuMeter  # noqa: E402
from bench.run import (  # noqa: E402
    Bench,
    BenchError,
    Config,
    Workers,
    _no_nan,
    _percentile,
    log,
    machine,
    running_server,
)
from bench.tasks import app, gather, step  # noqa: E402
from bench.workflow import _timeout, finished_workflow, spread  # noqa: E402
from redwork import Workflow, chain, group  # noqa: E402
from redwork.errors import RedworkError  # noqa: E402
from redwork.job import new_job_id  # noqa: E402
from redwork.queue import Queue, text  # noqa: E402
from redwork.server import LocalCluster  # noqa: E402
from redwork.settings import Settings  # noqa: E402

# One worker process serving both queues, at bench/workflow.py's default concurrency.
CONCURRENCY = 50
WARM_UP = 20  # steps / members of the unmeasured first run of each variant
STALL_MS = 100  # an edge this long (a step's end to the next one's start) counts as stalled
SUBSCRIBE_TIMEOUT = 10.0
MIN_METERED = 0.05  # seconds: CPU is measured over at least this long


@dataclass(frozen=True)
class Sizes:
    steps: int
    members: int
    rounds: int


@dataclass
class Site:
    """One server or the cluster: where both queues live, and what serves them."""

    name: str
    url: str
    benches: dict[str, Bench]
    """Queue name -> a Bench on the server that holds it, with that queue as its own."""
    servers: list[Bench]
    """One Bench per server (every primary): each is emptied before a run."""
    pids: dict[str, int | None]


@dataclass(frozen=True)
class Variant:
    site: str
    shape: str
    """'chain' or 'chord'."""
    queues: int
    """1: every job at home; 2: a chain alternating, a chord's members in the other."""

    @property
    def key(self) -> str:
        return f"{self.site}/{self.shape}/{self.queues}q"


def variants(sites: list[Site]) -> list[Variant]:
    """One round, in order: the one- and two-queue runs of a shape next to each other,
    so that a busy spell on the shared machine falls on both. The chord on one server."""
    out = []
    for site in sites:
        out += [Variant(site.name, "chain", 1), Variant(site.name, "chain", 2)]
        if site is sites[0]:
            out += [Variant(site.name, "chord", 1), Variant(site.name, "chord", 2)]
    return out


# -- sites -------------------------------------------------------------------------------


def one_server(tmp: Path, home: Bench, queues: list[str], config: Config) -> Site:
    """`home`: a Bench on the server, which becomes the first queue's."""
    benches = {queues[0]: home}
    for name in queues[1:]:
        # The same server, a Bench whose queue is this one (its job hashes, its outbox).
        benches[name] = Bench(home.server, _dir(tmp / name), config)
    for name, b in benches.items():
        b.queue = Queue(name)
    return Site("one server", home.url, benches, [home], {"server": home.server.pid})


def cluster_site(cluster: LocalCluster, tmp: Path, queues: list[str], config: Config) -> Site:
    primaries = cluster.nodes[: cluster.primaries]
    servers = [Bench(p, _dir(tmp / f"primary{i}"), config) for i, p in enumerate(primaries)]
    by_port = {b.server.port: b for b in servers}
    benches = {}
    for name in queues:
        b = by_port[cluster.primary_of(f"{{{name}}}").port]
        b.queue = Queue(name)
        benches[name] = b
    pids = {f"server{i}": b.server.pid for i, b in enumerate(servers)}
    return Site(f"cluster ({cluster.primaries} primaries)", cluster.url, benches, servers, pids)


def use(site: Site) -> None:
    """The producer on this site's URL, connected before anything is timed."""
    app.configure(Settings.load(env={}, redis_url=site.url))
    app.client.redis()


# -- one run -----------------------------------------------------------------------------


@contextlib.contextmanager
def end_of(b: Bench, workflow_id: str) -> Iterator[Callable[[Workers, float], str]]:
    """Subscribed, before the submit, to the channel on which the workflow's home
    publishes its final status; yields a wait for that message. Nothing is polled and
    nothing read while the workflow runs (client.wait_workflow reads every node first,
    10,001 for the chord, inside the measurement), and the subscription comes first, so
    the end cannot be missed."""
    key = b.queue.workflow_key(workflow_id)
    pubsub = b.r.pubsub()
    try:
        pubsub.subscribe(key)
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
        while (m := pubsub.get_message(timeout=1.0)) is None or m["type"] != "subscribe":
            if time.monotonic() > deadline:
                raise BenchError("no confirmation of the subscription to the workflow's end")

        def wait(workers: Workers, timeout: float) -> str:
            deadline = time.monotonic() + timeout
            while True:
                message = pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    return text(message["data"])
                workers.check()
                if time.monotonic() > deadline:
                    ended, total = b.r.hmget(key, "ended", "total")
                    raise BenchError(
                        f"workflow {workflow_id} not over after {timeout:.0f}s: "
                        f"{text(ended or b'0')} of {text(total or b'?')} nodes ended"
                    )

        yield wait
    finally:
        pubsub.close()


def commands(site: Site) -> Counter[str]:
    out: Counter[str] = Counter()
    for b in site.servers:
        out.update(b.commandstats())
    return out


def run_workflow(site: Site, queues: list[str], shape: Any, jobs: int) -> dict[str, Any]:
    """Empty servers, one worker process serving `queues` blocked on its wake-up
    markers, then one app.submit; timed from just before it to the workflow's
    finished_at (server clock, ms; one machine, one clock). The workflow must succeed."""
    home = site.benches[queues[0]]
    for b in site.servers:
        b.reset()
    workflow_id = new_job_id()
    env = {"REDWORK_QUEUES": ",".join(site.benches)}  # every run: the same worker
    with Workers(home, 1, CONCURRENCY, url=site.url, env=env) as workers:
        for b in {id(b): b for b in site.benches.values()}.values():
            b.wait_idle(workers)  # on a cluster it blocks on each primary apart
        logs = [path for _, path in workers.procs]
        with end_of(home, workflow_id) as wait:
            meter = CpuMeter({**site.pids, "worker": workers.procs[0][0].pid})
            before = commands(site)
            t0 = time.time()
            app.submit(shape, workflow_id=workflow_id)
            submit_s = time.time() - t0
            status = wait(workers, _timeout(jobs))
            # CpuMeter divides by the machine's clock ticks (10 ms) that passed: a tiny
            # run (the warm-up) could see none. The workflow's end is already stamped.
            time.sleep(max(0.0, t0 + MIN_METERED - time.time()))
            cpu = meter.stop()
            counted = commands(site) - before
    counted.pop("info", None)  # our own, taking the counts
    wf = finished_workflow(home, workflow_id, jobs)
    left = sum(
        int(b.r.llen(b.queue.outbox)) + int(b.r.llen(b.queue.refused))
        for b in site.benches.values()
    )
    warnings = [
        line for path in logs for line in path.read_text(errors="replace").splitlines() if line
    ]
    for line in warnings[:5]:
        log(f"worker log: {line}")
    cost = _cpu(cpu, jobs)
    return {
        "jobs": jobs,
        "status": status,
        "end_to_end_s": wf["finished_at"] / 1000 - t0,
        "submit_s": submit_s,
        "finished_at_ms": wf["finished_at"],
        "evalsha_per_job": counted["evalsha"] / jobs,
        "relay_reads_per_job": (counted["lrange"] + counted["lrem"]) / jobs,
        "server_commands_per_job": (+counted).total() / jobs,
        "left_in_outboxes": left,
        "worker_log_lines": len(warnings),
        **cost,
        "cpu_us_per_job": cost["server_cpu_us_per_job"] + cost["worker_cpu_us_per_job"],
    }


def chain_run(site: Site, n: int, queues: list[str]) -> dict[str, Any]:
    """A chain of n no-op steps (n - 1 edges), step i in queues[i % len(queues)]: with
    two queues every edge crosses, each step's end relayed to the home and the next
    step's release relayed to its queue."""
    tasks = [step.options(queue=q) for q in queues]  # made once: options() builds a Task
    steps = [tasks[i % len(tasks)].s() for i in range(n)]
    run = run_workflow(site, queues, chain(*steps), n)
    by_id: dict[str, tuple[int, int]] = {}
    for i, name in enumerate(queues):
        ids = [s.id for s in steps[i :: len(queues)]]
        by_id.update(zip(ids, _timings(site.benches[name], ids), strict=True))
    times = [by_id[s.id] for s in steps]
    # A step's start after the previous step's end, server ms (1 ms resolution).
    gaps = sorted(times[i][0] - times[i - 1][1] for i in range(1, n))
    return {
        **run,
        "edges": n - 1,
        "per_edge_us": 1e6 * run["end_to_end_s"] / (n - 1),
        "gap_p50_ms": _percentile(gaps, 50),
        "gap_p99_ms": _percentile(gaps, 99),
        "gap_max_ms": gaps[-1],
        "stalled_edges": sum(g >= STALL_MS for g in gaps),
        "order_violations": sum(g < 0 for g in gaps),
        "last_end_to_workflow_end_ms": run["finished_at_ms"] - times[-1][1],
    }


def chord_run(site: Site, m: int, queues: list[str]) -> dict[str, Any]:
    """m no-op members in queues[-1] and a callback at home (queues[0]) given their m
    results. A graph with the callback added first: the home is the first node's queue,
    and chord(group(...), callback) would make it the first member's."""
    home, there = queues[0], queues[-1]
    member = step.options(queue=there)
    members = [member.s() for _ in range(m)]
    callback = gather.options(queue=home).s()
    graph = Workflow()
    graph.add(callback, depends_on=[x.id for x in members], pass_results=True)
    graph.add(group(members))
    run = run_workflow(site, queues, graph, m + 1)
    b = site.benches[home]
    result = b.r.hget(b.queue.job_key(callback.id), "result")
    if result is None or json.loads(result) != m:
        raise BenchError(f"the callback returned {result!r}; expected {m}")
    spans = _timings(site.benches[there], [x.id for x in members])
    (cb_start, cb_end) = _timings(b, [callback.id])[0]
    first, last = min(s for s, _ in spans), max(f for _, f in spans)
    return {
        **run,
        "edges": m,
        "per_edge_us": 1e6 * run["end_to_end_s"] / m,
        "members_first_start_to_last_end_s": (last - first) / 1000,
        "last_member_end_to_callback_start_ms": cb_start - last,
        "callback_end_to_workflow_end_ms": run["finished_at_ms"] - cb_end,
    }


def run_variant(variant: Variant, site: Site, sizes: Sizes, warm_up: bool = False) -> Any:
    queues = list(site.benches)[: variant.queues]
    if variant.shape == "chain":
        return chain_run(site, WARM_UP if warm_up else sizes.steps, queues)
    return chord_run(site, WARM_UP if warm_up else sizes.members, queues)


def describe(variant: Variant, run: dict[str, Any]) -> str:
    parts = [
        f"{variant.key}: end to end {run['end_to_end_s']:.3f}s",
        f"{run['per_edge_us']:,.0f} us/edge",
        f"submit call {run['submit_s']:.3f}s",
    ]
    if variant.shape == "chain":
        parts.append(
            f"edge gap p50/p99/max {run['gap_p50_ms']}/{run['gap_p99_ms']}/{run['gap_max_ms']} "
            f"ms, {run['stalled_edges']} over {STALL_MS} ms"
        )
    else:
        parts.append(
            f"members {run['members_first_start_to_last_end_s']:.3f}s, last member end -> "
            f"callback start {run['last_member_end_to_callback_start_ms']} ms"
        )
    parts.append(
        f"EVALSHA/job {run['evalsha_per_job']:.2f}, LRANGE+LREM/job "
        f"{run['relay_reads_per_job']:.2f}; CPU/job servers {run['server_cpu_us_per_job']:.0f} "
        f"us, worker {run['worker_cpu_us_per_job']:.0f} us; others "
        f"{run['others_cpu_pct']:.0f}% of a core"
    )
    if run["left_in_outboxes"] or run["worker_log_lines"]:
        parts.append(
            f"LEFT IN OUTBOXES {run['left_in_outboxes']}, worker log lines "
            f"{run['worker_log_lines']}"
        )
    return "; ".join(parts)


# -- summary -----------------------------------------------------------------------------

FIELDS = (
    "end_to_end_s",
    "per_edge_us",
    "submit_s",
    "gap_max_ms",
    "stalled_edges",
    "last_end_to_workflow_end_ms",
    "last_member_end_to_callback_start_ms",
    "evalsha_per_job",
    "relay_reads_per_job",
    "server_cpu_us_per_job",
    "worker_cpu_us_per_job",
    "cpu_us_per_job",
    "others_cpu_pct",
)


def summarise(runs: dict[str, list[dict[str, Any]]], order: list[Variant]) -> dict[str, Any]:
    """Min, median and max of each figure; the two-queue cost per edge over the one-queue
    run of the same round (run next to it)."""
    out: dict[str, Any] = {}
    for variant in order:
        r = runs[variant.key]
        out[variant.key] = {f: spread([x[f] for x in r]) for f in FIELDS if f in r[0]}
        if variant.queues == 2:
            one = runs[Variant(variant.site, variant.shape, 1).key]
            extra = [
                1e6 * (two["end_to_end_s"] - base["end_to_end_s"]) / two["edges"]
                for two, base in zip(r, one, strict=True)
            ]
            out[variant.key]["extra_us_per_edge"] = spread(extra)
    return out


def render(
    info: dict[str, Any], sizes: Sizes, queues: list[str], order: list[Variant], s: dict[str, Any]
) -> str:
    lines = [
        f"machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
        f"{info['server']} (appendfsync everysec), redis-py {info['redis_py']}; redwork at "
        f"{info['git']}" + (" with uncommitted changes in src/" if info["src_modified"] else ""),
        f"load average at start {', '.join(map(str, info['load_average_at_start']))}, at end "
        f"{', '.join(map(str, info['load_average_at_end']))}",
        f"{sizes.rounds} round(s); chain of {sizes.steps:,} no-op steps, chord of "
        f"{sizes.members:,} members + callback; queues {queues[0]} (home) and {queues[1]}, on "
        "different primaries of the cluster; 1 worker process serving both, concurrency "
        f"{CONCURRENCY}",
        "",
    ]

    def cell(key: str, field: str, fmt: str) -> str:
        x = s[key].get(field)
        if x is None:
            return "-"
        return f"{fmt.format(x['median'])} ({fmt.format(x['min'])})"

    rows = []
    for v in order:
        name = f"{v.site}, {v.shape}, {v.queues} queue{'s' if v.queues > 1 else ''}"
        rows.append(
            (
                name,
                cell(v.key, "end_to_end_s", "{:.3f}"),
                cell(v.key, "per_edge_us", "{:,.0f}"),
                cell(v.key, "extra_us_per_edge", "{:,.0f}"),
                cell(v.key, "submit_s", "{:.3f}"),
                cell(v.key, "gap_max_ms", "{:,.0f}"),
                cell(v.key, "evalsha_per_job", "{:.2f}"),
                cell(v.key, "relay_reads_per_job", "{:.2f}"),
                cell(v.key, "cpu_us_per_job", "{:,.0f}"),
                cell(v.key, "others_cpu_pct", "{:.0f}"),
            )
        )
    header = (
        "variant",
        "submit -> end, s",
        "per edge, us",
        "+us/edge vs 1 queue",
        "submit call, s",
        "max gap, ms",
        "EVALSHA/job",
        "LRANGE+LREM/job",
        "CPU us/job",
        "others %",
    )
    lines += _table(header, rows)
    lines.append(
        "median (min) over the rounds. submit -> end: from just before app.submit to the "
        "workflow's finished_at;\nper edge: that over the edges (chain: steps - 1, chord: "
        "members); +us/edge: minus the 1-queue run of the same round;\nmax gap: longest "
        "time from a step's end to the next step's start (server ms); CPU: servers + "
        "worker; others: CPU\nof processes outside the benchmark, % of a core"
    )
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 steps, 1,000 members, 1 round")
    parser.add_argument("--steps", type=int, metavar="N", help="steps of the chains (1,000)")
    parser.add_argument("--members", type=int, metavar="M", help="members of the chords (10,000)")
    parser.add_argument("--rounds", type=int, metavar="R", help="rounds of every variant (3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    args.sizes = Sizes(
        steps=args.steps or (200 if args.quick else 1_000),
        members=args.members or (1_000 if args.quick else 10_000),
        rounds=args.rounds or (1 if args.quick else 3),
    )
    if args.sizes.steps < 2 or args.sizes.members < 1 or args.sizes.rounds < 1:
        parser.error("a chain needs 2 steps or more, a chord 1 member or more, 1 round or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes: Sizes = args.sizes
    config = Config.make(args.quick, (CONCURRENCY,), 0)
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    error = None
    with (
        running_server() as (server, tmp),
        LocalCluster(
            tmp / "cluster",
            primaries=PRIMARIES,
            replicas=0,
            fsync="everysec",
            node_timeout_ms=NODE_TIMEOUT_MS,
        ) as cluster,
    ):
        queues = queues_on_distinct_primaries(cluster, 2)
        single = Bench(server, tmp, config)
        sites = [
            one_server(tmp, single, queues, config),
            cluster_site(cluster, tmp, queues, config),
        ]
        info = machine(single)
        order = variants(sites)
        by_name = {site.name: site for site in sites}
        log(
            f"Valkey at {server.url}; cluster at {cluster.url}; queues {', '.join(queues)} "
            f"(cluster primaries {', '.join(str(sites[1].benches[q].server.port) for q in queues)})"
        )
        try:
            for v in order:  # scripts loaded, connections open, code paths warm
                use(by_name[v.site])
                run_variant(v, by_name[v.site], sizes, warm_up=True)
            for round_ in range(1, sizes.rounds + 1):
                for v in order:
                    site = by_name[v.site]
                    use(site)
                    run = run_variant(v, site, sizes)
                    runs[v.key].append(run)
                    log(f"round {round_}: {describe(v, run)}")
        except (BenchError, RedworkError, redis.RedisError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            log(f"failed: {error}")
        finally:
            for b in {id(b): b for s in sites for b in [*s.servers, *s.benches.values()]}.values():
                b.close()
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    complete = error is None and all(len(runs[v.key]) == sizes.rounds for v in order)
    summary = summarise(runs, order) if complete else {}
    if args.json:
        document = {
            "machine": info,
            "sizes": asdict(sizes),
            "queues": queues,
            "summary": summary,
            "runs": runs,
            "error": error,
        }
        print(json.dumps(_no_nan(document), indent=2))
    elif summary:
        print(render(info, sizes, queues, order, summary))
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
