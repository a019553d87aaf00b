"""The `redwork` command: workers, the embedded server, inspection and the demo."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import click
import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from redwork import __version__, logs
from redwork.app import Redwork
from redwork.client import Client
from redwork.errors import JobNotFound, NotCancellable, RedworkError, WorkflowNotFound
from redwork.job import JobRecord, now_ms
from redwork.limits import Limit, read_limits, set_limit
from redwork.queue import QUEUES_KEY, Queue, run_many, text
from redwork.registry import live_workers
from redwork.schedule import Schedule, add_schedules, list_schedules, remove_schedule
from redwork.settings import Settings, to_env
from redwork.workflow import WorkflowRecord

console = Console()


def load_app(path: str) -> Redwork:
    """`pkg.module:attribute`, or `pkg.module` holding a Redwork object."""
    app = load_object(path)
    if not isinstance(app, Redwork):
        raise click.BadParameter(f"{path} names no Redwork app")
    return app


def load_object(path: str) -> Any:
    """The object `pkg.module:attribute` names, or the Redwork app in `pkg.module`."""
    module_name, _, attribute = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name}: {exc}") from exc
    if attribute:
        return getattr(module, attribute, None)
    return next((v for v in vars(module).values() if isinstance(v, Redwork)), None)


def _settings(ctx: click.Context, **explicit: Any) -> Settings:
    return Settings.load(**ctx.obj, **explicit)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    help="Server URL (env REDWORK_REDIS_URL). Default: the embedded Valkey.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Embedded server's data directory (env REDWORK_DATA_DIR, default ./.redwork).",
)
@click.option(
    "--fsync",
    type=click.Choice(["everysec", "always"]),
    help="Embedded server's AOF fsync policy (env REDWORK_FSYNC).",
)
@click.option(
    "--server-binary",
    metavar="PATH",
    help="valkey-server or redis-server to run as the embedded server instead of the "
    "bundled Valkey (env REDWORK_SERVER_BINARY).",
)
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (env REDWORK_LOG_LEVEL).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    help="text lines, or one JSON object per line (env REDWORK_LOG_FORMAT, default text).",
)
@click.version_option(__version__, prog_name="redwork")
@click.pass_context
def cli(
    ctx: click.Context,
    redis_url: str | None,
    data_dir: Path | None,
    fsync: str | None,
    server_binary: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """redwork: a job queue and workers on Redis or Valkey.

    \b
    Examples:
      redwork demo --iterations 100 --workers 4
      redwork worker myapp.tasks --concurrency 20 --queues high,default
      redwork serve myapp.tasks --port 8000
      redwork info
      redwork failed list --queue default
    """
    ctx.obj = {
        "redis_url": redis_url,
        "data_dir": data_dir,
        "fsync": fsync,
        "server_binary": server_binary,
        "log_level": log_level,
        "log_format": log_format,
    }
    settings = Settings.load(log_level=log_level, log_format=log_format)
    logs.setup(settings.log_level, settings.log_format)


@cli.command(short_help="Run workers for the tasks of APP.")
@click.argument("app_path", metavar="APP")
@click.option(
    "-q", "--queues", help="Comma-separated queues, highest priority first (env REDWORK_QUEUES)."
)
@click.option(
    "-c",
    "--concurrency",
    type=int,
    help="Job slots per process (env REDWORK_CONCURRENCY, default 10).",
)
@click.option(
    "-p",
    "--processes",
    type=int,
    help="Worker processes (env REDWORK_PROCESSES, default cores - 1).",
)
@click.option(
    "--prefetch",
    type=int,
    help="Jobs leased beyond the free slots, started without a round trip "
    "(env REDWORK_PREFETCH, default 0).",
)
@click.option(
    "--grace", type=float, help="Seconds to let running jobs finish on stop (default 30)."
)
@click.option(
    "--lease", type=float, help="Seconds a job stays leased without a heartbeat (default 30)."
)
@click.option(
    "--scheduler/--no-scheduler",
    default=None,
    help="Also enqueue periodic jobs as they fall due (env REDWORK_SCHEDULER, default on).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    app_path: str,
    queues: str | None,
    concurrency: int | None,
    processes: int | None,
    prefetch: int | None,
    grace: float | None,
    lease: float | None,
    scheduler: bool | None,
) -> None:
    """Run workers for the tasks of APP (`pkg.module` or `pkg.module:app`).

    \b
    Examples:
      redwork worker myapp.tasks
      redwork worker myapp.tasks:app -q high,default -c 50 -p 3
    The first SIGTERM or Ctrl+C stops fetching and lets running jobs finish within
    --grace seconds, then hands the rest back; a second one hands back at once.
    """
    queue_names = tuple(q for q in (queues or "").split(",") if q) or None
    settings = _settings(
        ctx,
        queues=queue_names,
        concurrency=concurrency,
        processes=processes,
        prefetch=prefetch,
        grace=grace,
        lease=lease,
        scheduler=scheduler,
    )
    # Settings reach an app built at import time through the environment, and the app's
    # own client (used by tasks: state stores, progress) gets them too.
    os.environ.update(to_env(settings))
    app = load_app(app_path)
    app.configure(settings)
    if settings.processes > 1:
        from redwork.connection import resolve_url
        from redwork.supervisor import Supervisor, worker_command

        settings = settings.replace(redis_url=resolve_url(settings))
        env = {**os.environ, **to_env(settings)}
        code = Supervisor(worker_command(app_path), settings.processes, env).run()
        sys.exit(code)
    _run_single_worker(app, settings)


@cli.command(short_help="Serve the HTTP API, live updates and dashboard.")
@click.argument("app_path", metavar="APP")
@click.option("--host", help="Address to listen on (env REDWORK_API_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (env REDWORK_API_PORT, default 8000).")
@click.pass_context
def serve(ctx: click.Context, app_path: str, host: str | None, port: int | None) -> None:
    """Serve the HTTP API, live updates and the dashboard for APP: a Redwork app
    (`pkg.module` or `pkg.module:app`), or an ASGI app made with redwork.api.create_api
    and routes of your own (`pkg.module:api`).

    Set REDWORK_API_TOKEN to require a token for every call and for the dashboard.

    \b
    Examples:
      redwork serve myapp.tasks
      redwork serve myapp.web:api --host 0.0.0.0 --port 8080
    """
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    settings = _settings(ctx, api_host=host, api_port=port)
    # Settings reach an app built at import time through the environment.
    os.environ.update(to_env(settings))
    target = load_object(app_path)
    if isinstance(target, Redwork):
        from redwork.api import create_api

        target.configure(settings)
        target = create_api(target, settings)
    elif not callable(target):
        raise click.BadParameter(f"{app_path} names neither a Redwork app nor an ASGI app")
    if settings.api_host not in ("127.0.0.1", "localhost", "::1") and not settings.api_token:
        logging.getLogger("redwork.api").warning(
            "listening on %s without REDWORK_API_TOKEN: anyone who can reach it can "
            "submit, cancel and purge jobs",
            settings.api_host,
        )
    uvicorn.run(
        target,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        # JSON logs: uvicorn's records go through redwork's handler, not its own format.
        log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
        ws_ping_interval=settings.api_ping_interval,
        # Live streams (an open dashboard) never end by themselves: on SIGTERM, requests
        # get this long to finish, then the streams are cut (the API holds no jobs).
        timeout_graceful_shutdown=SERVE_SHUTDOWN_GRACE,
        proxy_headers=False,
    )


SERVE_SHUTDOWN_GRACE = 5
"""Seconds `redwork serve` lets requests finish after SIGTERM before it cuts them."""


def _run_single_worker(app: Redwork, settings: Settings) -> None:
    import asyncio
    import signal

    from redwork.supervisor import orphaned
    from redwork.worker import Worker

    async def main() -> None:
        worker = Worker(app, settings)

        def on_signal() -> None:
            worker.stop()
            if orphaned():  # the supervisor is gone: nobody will wait for a grace period
                worker.stop()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        logging.getLogger("redwork.worker").info(
            "worker %s: queues %s, concurrency %d",
            worker.id,
            ",".join(settings.queues),
            settings.concurrency,
        )
        await worker.run()

    code = 0
    try:
        asyncio.run(main())
    except BaseException:  # a bug in the worker itself: say so, and exit all the same
        logging.getLogger("redwork.worker").exception("the worker stopped on an error")
        code = 1
    # Threads of plain-function tasks that overran cannot be stopped; do not wait for them
    # (the interpreter's exit would, for as long as they run).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@cli.command("scheduler", short_help="Enqueue periodic jobs as they fall due.")
@click.argument("app_path", metavar="APP")
@click.pass_context
def scheduler_command(ctx: click.Context, app_path: str) -> None:
    """Enqueue the periodic jobs of APP (and every schedule stored at run time) as they
    fall due, without running jobs. Workers do this too unless --no-scheduler; run as
    many schedulers as you like: each tick is enqueued once.

    \b
    Example:
      redwork scheduler myapp.tasks
    """
    import asyncio
    import signal

    from redwork import connection
    from redwork.schedule import Scheduler

    settings = _settings(ctx)
    os.environ.update(to_env(settings))
    app = load_app(app_path)
    app.configure(settings)

    async def main() -> None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        url = await asyncio.to_thread(connection.resolve_url, settings)
        client = connection.async_client(url, settings)
        scheduler = Scheduler(app, settings.result_ttl, settings.idempotency_ms)
        logging.getLogger("redwork.schedule").info(
            "scheduler: %d schedules declared by %s", len(app.schedules), app_path
        )
        try:
            await scheduler.run(client, stopped)
        finally:
            await client.aclose()

    asyncio.run(main())


@cli.group(invoke_without_command=True, short_help="Periodic jobs: list, add, remove.")
@click.pass_context
def schedules(ctx: click.Context) -> None:
    """Periodic jobs: list them with their next run (the default), add or remove one.

    \b
    Examples:
      redwork schedules
      redwork schedules add nightly-report reports.build --cron "0 3 * * *"
      redwork schedules add heartbeat app.ping --every 30 --args '["eu"]'
      redwork schedules remove heartbeat
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(schedules_list)


def _when(ms: int | None) -> str:
    """A server time as UTC."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def schedules_list(ctx: click.Context, as_json: bool = False) -> None:
    """List every schedule with its last and next run."""
    states = list_schedules(_client(ctx).redis())
    if as_json:
        rows = [s.as_dict() for s in states]
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("name", "task", "queue", "when", "missed", "last tick (UTC)", "next (UTC)")
    for s in states:
        schedule = s.schedule
        table.add_row(
            schedule.name,
            schedule.task,
            schedule.queue,
            schedule.when,
            schedule.missed,
            _when(s.last_tick),
            _when(s.next_tick),
        )
    Console().print(table if states else "no schedules")


@schedules.command("add")
@click.argument("name")
@click.argument("task")
@click.option("--cron", help="Cron expression: five fields, or six with seconds first.")
@click.option("--every", type=float, help="Seconds between runs.")
@click.option("--args", "args_json", default="[]", help="Positional arguments, a JSON array.")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments, a JSON object.")
@click.option("-q", "--queue", default="default", show_default=True)
@click.option("--missed", type=click.Choice(["skip", "once"]), default="skip", show_default=True)
@click.option("--timezone", default="UTC", show_default=True, help="Zone the cron is read in.")
@click.pass_context
def schedules_add(
    ctx: click.Context,
    name: str,
    task: str,
    cron: str | None,
    every: float | None,
    args_json: str,
    kwargs_json: str,
    queue: str,
    missed: str,
    timezone: str,
) -> None:
    """Store a schedule for the task named TASK (replacing one of the same NAME)."""
    args, kwargs = (
        _json_option("--args", args_json, list),
        _json_option("--kwargs", kwargs_json, dict),
    )
    try:
        schedule = Schedule(
            name=name,
            task=task,
            cron=cron,
            every=every,
            queue=queue,
            args=args,
            kwargs=kwargs,
            missed=missed,
            timezone=timezone,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    add_schedules(_client(ctx).redis(), [schedule])
    click.echo(
        f"schedule {name}: {schedule.when}, next run {_when(schedule.next_tick(now_ms()))} UTC"
    )


def _json_option(name: str, raw: str, kind: type) -> Any:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=name) from exc
    if not isinstance(value, kind):
        raise click.BadParameter(
            f"must be a JSON {'array' if kind is list else 'object'}", param_hint=name
        )
    return value


@schedules.command("remove")
@click.argument("name")
@click.pass_context
def schedules_remove(ctx: click.Context, name: str) -> None:
    """Delete a schedule (one declared in code returns when its scheduler restarts)."""
    if not remove_schedule(_client(ctx).redis(), name):
        raise click.ClickException(f"no schedule {name}")
    click.echo(f"removed schedule {name}")


@cli.group(invoke_without_command=True, short_help="A queue's rate and concurrency limits.")
@click.option("-q", "--queue", default="default", show_default=True)
@click.pass_context
def limits(ctx: click.Context, queue: str) -> None:
    """Rate and concurrency limits of a queue: list them (the default), set or clear one.
    A scope is `queue`, `group` (each group of jobs, separately) or `task:<task name>`.

    \b
    Examples:
      redwork limits -q mail
      redwork limits -q mail set queue --rate 100/s
      redwork limits set group --concurrency 1
      redwork limits set task:shop.tasks.sync_stock --concurrency 3
      redwork limits clear group
    """
    if ctx.invoked_subcommand is None:
        found = _client(ctx).run(read_limits(Queue(queue)))
        for scope, limit in sorted(found.items()):
            click.echo(f"{scope}: {limit}")
        if not found:
            click.echo(f"no limits on queue {queue}")


@limits.command("set")
@click.argument("scope")
@click.option("--concurrency", type=int, help="At most this many running at once.")
@click.option("--rate", help="At most so many starting per period: 50/s, 10/5s, 1000/h.")
@click.pass_context
def limits_set(ctx: click.Context, scope: str, concurrency: int | None, rate: str | None) -> None:
    """Set the limit of SCOPE (replacing its previous one)."""
    assert ctx.parent is not None
    try:
        limit = Limit.of(concurrency, rate)
        op = set_limit(Queue(ctx.parent.params["queue"]), scope, limit)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    _client(ctx).run(op)
    click.echo(f"{scope}: {limit}")


@limits.command("clear")
@click.argument("scope")
@click.pass_context
def limits_clear(ctx: click.Context, scope: str) -> None:
    """Remove the limit of SCOPE; the jobs it held back go back to the queue."""
    assert ctx.parent is not None
    try:
        op = set_limit(Queue(ctx.parent.params["queue"]), scope, None)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    released = _client(ctx).run(op)
    click.echo(f"{scope}: no limit ({released} jobs released)")


@cli.group(short_help="Start, stop or inspect the embedded server.")
def server() -> None:
    """Start, stop or inspect the embedded Valkey server of a data directory.

    \b
    Examples:
      redwork server start                 # prints its URL
      redwork --data-dir /var/lib/redwork server status
      redwork server stop                  # data stays in the data directory
    """


def _embedded(ctx: click.Context) -> Any:
    from redwork.server import EmbeddedServer

    settings = _settings(ctx.find_root())
    return EmbeddedServer(settings.data_dir, fsync=settings.fsync, binary=settings.server_binary)


@server.command("start")
@click.pass_context
def server_start(ctx: click.Context) -> None:
    """Start the embedded server (or find it running); prints its URL."""
    click.echo(_embedded(ctx).ensure_running())


@server.command("stop")
@click.pass_context
def server_stop(ctx: click.Context) -> None:
    """Stop the embedded server; its data stays in the data directory."""
    click.echo("stopped" if _embedded(ctx).stop() else "not running")


@server.command("status")
@click.pass_context
def server_status(ctx: click.Context) -> None:
    """Show whether the embedded server runs, where, and its version."""
    status = _embedded(ctx).status()
    click.echo(f"running: {'yes' if status.running else 'no'}")
    click.echo(f"data dir: {status.data_dir}")
    if status.running:
        click.echo(f"url: {status.url}\npid: {status.pid}\nversion: {status.version}")


def _client(ctx: click.Context) -> Client:
    return Client(_settings(ctx.find_root()))


def _queue_names(client: Client) -> list[str]:
    return sorted(n.decode() for n in cast(set[bytes], client.redis().smembers(QUEUES_KEY)))


@cli.command(short_help="Queues, their counts and totals, running jobs, workers.")
@click.pass_context
def info(ctx: click.Context) -> None:
    """Queues (waiting, held behind a key, held back by a limit, running, delayed, failed,
    throughput), the longest-running jobs with their progress, and live workers.

    \b
    Example:
      redwork --redis redis://localhost:6379/0 info
    """
    import time

    client = _client(ctx)
    seconds, _ = client.redis().time()  # the scripts count completions by server minute
    minute = int(seconds) // 60
    now_table = Table(title="queues now")
    totals = Table(title="queue totals")
    for table, columns in (
        (
            now_table,
            (
                "queue",
                "waiting",
                "held",
                "limited",
                "active",
                "delayed",
                "failed",
                "done/min, last 5",
            ),
        ),
        (totals, ("queue", "enqueued", "completed", "failed", "retried", "recovered", "fenced")),
    ):
        for column in columns:
            table.add_column(column, justify="left" if column == "queue" else "right")
    for name in _queue_names(client):
        queue = Queue(name)
        counts = client.run(queue.counts())
        recent = client.run(queue.completed_per_minute(range(minute - 4, minute + 1)))
        now_table.add_row(
            name,
            str(counts.waiting),
            str(counts.held),
            str(counts.limited),
            str(counts.active),
            str(counts.delayed),
            str(counts.failed),
            " ".join(str(n) for n in recent),
        )
        totals.add_row(
            name,
            *(
                str(counts.stats.get(k, 0))
                for k in ("enqueued", "completed", "failed", "retried", "recovered", "fenced")
            ),
        )
    console.print(now_table)
    console.print(totals)
    console.print(_running_jobs(client, int(seconds) * 1000))
    workers = Table(title="workers")
    for column in ("worker", "queues", "concurrency", "running", "done", "failed", "last seen"):
        workers.add_column(column)
    now = time.time() * 1000
    for worker in live_workers(client.redis()):
        workers.add_row(
            worker.id,
            ",".join(worker.queues),
            "" if worker.concurrency is None else str(worker.concurrency),
            str(worker.running),
            str(worker.done),
            str(worker.failed),
            f"{(now - worker.last_seen) / 1000:.1f}s ago",
        )
    console.print(workers)


# Running jobs `redwork info` lists, the longest-running first.
RUNNING_SHOWN = 20


def _running_jobs(client: Client, now_ms: int) -> Table:
    records = []
    for name in _queue_names(client):
        queue = Queue(name)
        ids = cast(list[bytes], client.redis().zrange(queue.active, 0, RUNNING_SHOWN - 1))
        ops = [queue.job(text(i)) for i in ids]
        records += [record for record in run_many(client.redis(), ops) if record is not None]
    records.sort(key=lambda r: r.started_at or now_ms)
    table = Table(title=f"running jobs (the {RUNNING_SHOWN} longest-running at most)")
    for column in ("job", "queue", "task", "worker", "running for", "progress"):
        table.add_column(column)
    for record in records[:RUNNING_SHOWN]:
        envelope = record.envelope
        started = record.started_at or now_ms
        table.add_row(
            record.id,
            record.queue,
            envelope.task if envelope else "?",
            record.worker or "",
            f"{max(0, now_ms - started) / 1000:.1f}s",
            _progress_text(record.progress),
        )
    return table


def _progress_text(progress: bytes | None) -> str:
    """`ctx.progress(0.4, "step 2 of 5")` as "40% step 2 of 5"; other values as JSON."""
    if progress is None:
        return ""
    value = orjson.loads(progress)
    if isinstance(value, dict) and isinstance(value.get("fraction"), int | float):
        return f"{value['fraction']:.0%} {value.get('message') or ''}".strip()
    return progress.decode(errors="replace")


@cli.group()
def job() -> None:
    """Look at one job, or cancel it.

    \b
    Examples:
      redwork job show 6f1c2e0d9a8b4c3d2e1f0a9b
      redwork job cancel 6f1c2e0d9a8b4c3d2e1f0a9b
    """


def _find_job(client: Client, job_id: str, queue: str | None) -> JobRecord:
    for name in [queue] if queue else _queue_names(client):
        try:
            return client.job(name, job_id)
        except JobNotFound:
            continue
    raise click.ClickException(f"no job {job_id}" + (f" in queue {queue}" if queue else ""))


@job.command("show")
@click.argument("job_id")
@click.option("-q", "--queue", help="The job's queue (default: search every queue).")
@click.pass_context
def job_show(ctx: click.Context, job_id: str, queue: str | None) -> None:
    """Print a job's document, state, progress, result or error as JSON.

    \b
    Example:
      redwork job show 6f1c2e0d9a8b4c3d2e1f0a9b -q default
    """
    record = _find_job(_client(ctx), job_id, queue)
    click.echo(orjson.dumps(record.as_dict(), option=orjson.OPT_INDENT_2).decode())


@job.command("cancel")
@click.argument("job_id")
@click.option("-q", "--queue", help="The job's queue (default: search every queue).")
@click.pass_context
def job_cancel(ctx: click.Context, job_id: str, queue: str | None) -> None:
    """Cancel a job: one that has not started never will; a running one is aborted by
    its worker and ends as cancelled.

    \b
    Example:
      redwork job cancel 6f1c2e0d9a8b4c3d2e1f0a9b
    """
    client = _client(ctx)
    record = _find_job(client, job_id, queue)
    try:
        outcome = client.cancel(record.queue, job_id)
    except NotCancellable as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"job {job_id}: {outcome}")


@cli.group(short_help="Workflows: list, show, cancel.")
def workflow() -> None:
    """Workflows: list them, draw one with its jobs' states, cancel one.

    \b
    Examples:
      redwork workflow list -q default
      redwork workflow show WORKFLOW_ID
      redwork workflow cancel WORKFLOW_ID
    """


def _find_workflow(client: Client, workflow_id: str, queue: str | None) -> WorkflowRecord:
    for name in [queue] if queue else _queue_names(client):
        try:
            return client.workflow(name, workflow_id)
        except WorkflowNotFound:
            continue
    raise click.ClickException(
        f"no workflow {workflow_id}" + (f" in queue {queue}" if queue else "")
    )


@workflow.command("show")
@click.argument("workflow_id")
@click.option("-q", "--queue", help="The workflow's queue (default: search every queue).")
@click.option("--json", "as_json", is_flag=True, help="Print the workflow as JSON instead.")
@click.pass_context
def workflow_show(ctx: click.Context, workflow_id: str, queue: str | None, as_json: bool) -> None:
    """Draw a workflow: its jobs level by level (a job's level is one more than its
    deepest dependency's), each with its state and what it waits for."""
    record = _find_workflow(_client(ctx), workflow_id, queue)
    if as_json:
        click.echo(orjson.dumps(record.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        console.print(draw_workflow(record))


@workflow.command("list")
@click.option("-q", "--queue", default="default", show_default=True)
@click.option("-n", "--limit", default=20, show_default=True)
@click.pass_context
def workflow_list(ctx: click.Context, queue: str, limit: int) -> None:
    """A queue's workflows, newest first."""
    client = _client(ctx)
    table = Table(title=f"workflows in {queue}")
    for column in ("id", "name", "status", "jobs", "ended", "failed", "skipped"):
        table.add_column(column)
    for workflow_id in client.run(client.queue(queue).workflow_ids(0, limit - 1)):
        try:
            record = client.workflow(queue, workflow_id)
        except WorkflowNotFound:
            continue  # expired
        counts = record.counts
        table.add_row(
            workflow_id,
            record.name,
            _styled_status(record.status.value),
            str(counts["total"]),
            str(counts["ended"]),
            str(counts["failed"]),
            str(counts["skipped"]),
        )
    console.print(table)


@workflow.command("cancel")
@click.argument("workflow_id")
@click.option("-q", "--queue", help="The workflow's queue (default: search every queue).")
@click.pass_context
def workflow_cancel(ctx: click.Context, workflow_id: str, queue: str | None) -> None:
    """Cancel every job of a workflow that has not started."""
    client = _client(ctx)
    record = _find_workflow(client, workflow_id, queue)
    click.echo(f"cancelled {client.cancel_workflow(record.queue, workflow_id)} jobs")


_STATE_MARKS = {
    "pending": ("·", "dim"),
    "waiting": ("○", "cyan"),
    "delayed": ("◔", "yellow"),
    "active": ("▶", "bold blue"),
    "completed": ("✔", "green"),
    "failed": ("✘", "bold red"),
    "skipped": ("⊘", "magenta"),
    "cancelled": ("■", "dim"),
}


_STATUS_COLOURS = {"succeeded": "green", "failed": "red", "running": "blue"}


def _styled_status(status: str) -> str:
    colour = _STATUS_COLOURS.get(status, "dim")
    return f"[{colour}]{status}[/{colour}]"


def draw_workflow(record: WorkflowRecord) -> Text:
    """The workflow as text: a header, then each level's jobs with state marks and
    arrows from their dependencies."""
    level: dict[str, int] = {}
    for node in record.nodes:  # submit order: every dependency comes first
        level[node.id] = 1 + max((level.get(d, 0) for d in node.depends_on), default=-1)
    short = _short_ids([n.id for n in record.nodes])
    counts = record.counts
    out = Text()
    out.append(f"workflow {record.id}", style="bold")
    if record.name:
        out.append(f" ({record.name})")
    out.append(" - ")
    out.append(record.status.value, style=_STATUS_COLOURS.get(record.status.value, "dim"))
    out.append(
        f"  {counts['ended']}/{counts['total']} ended: {counts['succeeded']} succeeded, "
        f"{counts['failed']} failed, {counts['skipped']} skipped, "
        f"{counts['cancelled']} cancelled\n"
    )
    for depth in range(max(level.values(), default=-1) + 1):
        out.append(f"level {depth}\n", style="dim")
        for node in (n for n in record.nodes if level[n.id] == depth):
            mark, style = _STATE_MARKS.get(node.state.value, ("?", ""))
            out.append(f"  {mark} ", style=style)
            out.append(f"{short[node.id]:<10} {node.task or '?':<24}")
            if node.depends_on:
                arrows = ", ".join(short[d] for d in node.depends_on)
                out.append(f" <- {arrows}", style="dim")
            out.append(f"  {node.state.value}", style=style)
            if node.state.value == "completed":
                out.append(f"  = {_preview(node.result)}", style="dim")
            elif node.error:
                out.append(f"  {node.reason}: {node.error.strip().splitlines()[-1][:80]}")
            out.append("\n")
    out.rstrip()
    return out


def _short_ids(ids: list[str]) -> dict[str, str]:
    """Ids of up to 16 characters as they are; longer ones (generated) cut to the
    shortest prefix of 8 characters or more that tells them apart."""
    for length in (8, 12, 16, 128):
        short = {i: i if len(i) <= 16 else i[:length] for i in ids}
        if len(set(short.values())) == len(ids):
            return short
    return {i: i for i in ids}


def _preview(result: bytes | None) -> str:
    text = (result or b"null").decode(errors="replace")
    return text if len(text) <= 60 else text[:57] + "..."


@cli.group(short_help="The failed store: list, show, retry, purge.")
def failed() -> None:
    """The failed store (dead letters): list, show, retry or purge failed jobs.

    \b
    Examples:
      redwork failed list -q default
      redwork failed show JOB_ID
      redwork failed retry --all -q default
      redwork failed purge JOB_ID JOB_ID
    """


@failed.command("list")
@click.option("-q", "--queue", default="default", show_default=True)
@click.option("-n", "--limit", default=50, show_default=True)
@click.pass_context
def failed_list(ctx: click.Context, queue: str, limit: int) -> None:
    """The most recent failed jobs of a queue."""
    client = _client(ctx)
    table = Table(title=f"failed jobs in {queue}")
    for column in ("id", "task", "attempt", "reason", "error"):
        table.add_column(column)
    for record in client.failed_jobs(queue, limit):
        envelope = record.envelope
        last_line = (record.error or "").strip().splitlines()[-1:] or [""]
        table.add_row(
            record.id,
            envelope.task if envelope else "(undecodable)",
            str(record.attempt),
            record.reason or "",
            last_line[0][:80],
        )
    console.print(table)


@failed.command("show")
@click.argument("job_id")
@click.option("-q", "--queue", default="default", show_default=True)
@click.pass_context
def failed_show(ctx: click.Context, job_id: str, queue: str) -> None:
    """A failed job in full, with its traceback."""
    ctx.invoke(job_show, job_id=job_id, queue=queue)


@failed.command("retry")
@click.argument("job_ids", nargs=-1)
@click.option("-q", "--queue", default="default", show_default=True)
@click.option("--all", "everything", is_flag=True, help="Retry every failed job of the queue.")
@click.pass_context
def failed_retry(
    ctx: click.Context, job_ids: tuple[str, ...], queue: str, everything: bool
) -> None:
    """Send failed jobs back to their queue with a fresh attempt budget."""
    if not job_ids and not everything:
        raise click.UsageError("name job ids, or pass --all")
    client = _client(ctx)
    click.echo(f"requeued {client.retry_failed(queue, job_ids)}")


@failed.command("purge")
@click.argument("job_ids", nargs=-1)
@click.option("-q", "--queue", default="default", show_default=True)
@click.option("--all", "everything", is_flag=True, help="Delete every failed job of the queue.")
@click.pass_context
def failed_purge(
    ctx: click.Context, job_ids: tuple[str, ...], queue: str, everything: bool
) -> None:
    """Delete failed jobs for good."""
    if not job_ids and not everything:
        raise click.UsageError("name job ids, or pass --all")
    client = _client(ctx)
    click.echo(f"deleted {client.run(client.queue(queue).purge_failed(job_ids))}")


@cli.command(short_help="Run the worker-pattern demo on a private server.")
@click.option("--iterations", default=100, show_default=True, help="Sleep jobs to run.")
@click.option("--workers", default=4, show_default=True, help="Worker processes.")
@click.option("--concurrency", default=1, show_default=True, help="Job slots per worker process.")
@click.option("--seed", default=None, type=int, help="Seed for the random sleep times.")
@click.pass_context
def demo(
    ctx: click.Context, iterations: int, workers: int, concurrency: int, seed: int | None
) -> None:
    """Run N sleep jobs (10-60 ms each) on W worker processes, as the worker-pattern
    seeds do, on a private embedded server; report time slept per worker.

    \b
    Example:
      redwork demo --iterations 100 --workers 4
    """
    from redwork.demo import run_demo

    run_demo(_settings(ctx.find_root()), iterations, workers, concurrency, seed, console)


@cli.command(short_help="Print a shell completion script (bash, zsh, fish).")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell's completion script for redwork (commands, options, choices).

    \b
    Examples:
      redwork completion bash > ~/.local/share/bash-completion/completions/redwork
      redwork completion zsh > "${fpath[1]}/_redwork"
      redwork completion fish > ~/.config/fish/completions/redwork.fish
    """
    from click.shell_completion import get_completion_class

    completion_class = get_completion_class(shell)
    assert completion_class is not None  # the three choices are click's own shells
    # The same script click prints for _REDWORK_COMPLETE=<shell>_source redwork.
    script = completion_class(cli, {}, "redwork", "_REDWORK_COMPLETE").source()
    click.echo(script)


def main() -> None:
    try:
        cli(prog_name="redwork")
    except RedworkError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
