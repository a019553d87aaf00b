"""The HTTP API (`redwork serve`): submit and inspect jobs, cancel them, the queues,
workers and failed store, live updates over WebSocket and Server-Sent Events, the
dashboard, Prometheus metrics, and the subset of Dapr's state API that seed 000 uses.

Every route is described in the OpenAPI schema (/openapi.json, browsable at /docs) and
in docs/http-api.md. Bad input is always a 4xx with a message: 422 for a malformed
request, 404 for an unknown job, 409 for a state that forbids the action, 413 for a body
over `api_max_body`, 401 without the token when `api_token` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import datetime
from importlib import resources
from typing import Annotated, Any, Literal, cast
from urllib.parse import parse_qs

import orjson
from fastapi import (
    Body,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    WebSocket,
    WebSocketDisconnect,
    WebSocketException,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from redwork import connection
from redwork.app import Redwork
from redwork.connection import AsyncRedis
from redwork.errors import (
    InvalidName,
    JobNotFound,
    NotCancellable,
    RedworkError,
    StateConflict,
    WorkflowNotFound,
)
from redwork.job import NAME_PATTERN, Envelope, JobRecord
from redwork.live import DurationTracker, Hub, Overflow, Subscription, encoded, job_message
from redwork.metrics import Metrics
from redwork.queue import QUEUES_KEY, Op, Queue, arun, arun_many
from redwork.registry import WorkerInfo, alive_workers
from redwork.settings import Settings
from redwork.workflow import COUNTS, Workflow, WorkflowRecord, plan

log = logging.getLogger("redwork.api")
TOKEN_COOKIE = "redwork_token"

# -- request and response bodies -------------------------------------------------------


class JobSubmission(BaseModel):
    task: str = Field(description="registered task name")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(default=None, description="default: the task's queue")
    job_id: str | None = Field(default=None, description="an id of your own; idempotent")
    key: str | None = Field(default=None, description="per-key ordering")
    idempotency_key: str | None = Field(default=None, description="accepted once per window")
    retries: int | None = Field(default=None, ge=0, le=1000)
    timeout: float | None = Field(default=None, gt=0)
    meta: dict[str, Any] | None = None
    priority: int | None = Field(default=None, ge=0, le=9, description="higher starts first")
    retry_priority: int | None = Field(
        default=None, ge=0, le=9, description="the priority its retries run at"
    )
    countdown: float | None = Field(
        default=None, ge=0, le=10 * 365 * 86_400, description="seconds before it may start"
    )
    eta: datetime | None = Field(default=None, description="when it may start (ISO 8601)")
    unique_key: str | None = Field(
        default=None, min_length=1, max_length=512, description="one queued or running per key"
    )
    unique: Literal["reject", "replace"] = Field(
        default="reject", description="what a second job with the same unique_key does"
    )
    group: str | None = Field(
        default=None, min_length=1, max_length=512, description="its group, for group limits"
    )


class WorkflowNodeSubmission(JobSubmission):
    depends_on: list[str] = Field(
        default_factory=list, max_length=10_000, description="job ids of this workflow"
    )
    pass_results: Literal["one", "list"] | None = Field(
        default=None,
        description="give the job its dependencies' results as first argument: the single "
        "dependency's result ('one') or a list in depends_on order ('list')",
    )
    collect: bool = Field(
        default=False, description="run even if a dependency did not succeed (given its error)"
    )


class WorkflowSubmission(BaseModel):
    nodes: list[WorkflowNodeSubmission] = Field(min_length=1, max_length=100_000)
    workflow_id: str | None = Field(default=None, description="an id of your own; idempotent")
    queue: str | None = Field(default=None, description="default: the queue its tasks name")
    name: str = Field(default="", max_length=200)


class SubmittedWorkflow(BaseModel):
    id: str
    queue: str
    nodes: list[str] = Field(description="the job ids, in submit order")
    duplicate: bool = Field(description="a workflow with this id existed: nothing was added")


class NodeView(BaseModel):
    id: str
    task: str | None
    queue: str | None = Field(
        default=None, description="the queue it runs in, when not the workflow's"
    )
    state: str
    depends_on: list[str]
    result: Any = None
    reason: str | None
    error: str | None
    progress: Any = None


class WorkflowSummary(BaseModel):
    id: str
    queue: str
    name: str
    status: str
    counts: dict[str, int]
    created_at: int | None
    finished_at: int | None


class WorkflowView(WorkflowSummary):
    started_at: int | None
    nodes: list[NodeView]


class BatchSubmission(BaseModel):
    jobs: list[JobSubmission] = Field(min_length=1, max_length=10_000)


class SubmittedJob(BaseModel):
    id: str
    queue: str
    duplicate: bool = Field(description="an earlier job had this id or idempotency key")


class Batch(BaseModel):
    jobs: list[SubmittedJob]


class JobView(BaseModel):
    id: str
    queue: str
    state: str
    task: str | None
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    key: str | None
    workflow: str | None = Field(default=None, description="its workflow's id, if any")
    priority: int = 0
    due_at: int | None = Field(default=None, description="delayed until (server ms)")
    cancel_requested: bool = Field(default=False, description="cancelled while running")
    attempt: int
    max_attempts: int | None
    losses: int
    worker: str | None
    enqueued_at: int | None
    started_at: int | None
    finished_at: int | None
    progress: Any = None
    result: Any = None
    reason: str | None
    error: str | None
    raw: str | None


class TimelineEntry(BaseModel):
    event: str
    attempt: int
    at: int


class QueueView(BaseModel):
    name: str
    waiting: int
    held: int
    limited: int = Field(default=0, description="jobs held back by a rate or concurrency limit")
    active: int
    delayed: int
    failed: int
    totals: dict[str, int]
    completed_per_minute: list[int] = Field(description="the last five minutes, oldest first")


class FailedPage(BaseModel):
    total: int
    jobs: list[JobView]


class IdSelection(BaseModel):
    ids: list[str] = Field(default_factory=list, max_length=10_000)
    all: bool = Field(default=False, description="every failed job of the queue")


class Count(BaseModel):
    count: int


class StateEntry(BaseModel):
    key: str
    value: Any
    etag: str | int | None = None


class BulkGet(BaseModel):
    keys: list[str] = Field(max_length=10_000)


# -- errors ------------------------------------------------------------------------------


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class BodyLimit:
    """413 for a request body over `limit` bytes: at once when it declares so
    (Content-Length), else as soon as what arrived passes the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _error(413, self.message)(scope, receive, send)
                return
        received = 0

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # An HTTPException passes through FastAPI's body parsing untouched.
                raise StarletteHTTPException(413, self.message)
            return message

        await self.app(scope, counting, send)

    @property
    def message(self) -> str:
        return f"the request body is over the limit of {self.limit} bytes"


# -- the application -------------------------------------------------------------------


class Service:
    """What the routes share: the app, its settings, the live-update hub."""

    def __init__(self, app: Redwork, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.metrics = Metrics()
        self.hub: Hub | None = None
        self.stats_feed = StatsFeed(self)

    async def redis(self) -> AsyncRedis:
        return await self.app.client.aredis()

    async def start(self) -> None:
        reader = await self.redis()
        url = self.app.client.url
        self.hub = Hub(
            lambda: connection.async_client(url, self.settings, single=True),
            reader,
            mailbox_limit=self.settings.api_client_buffer,
            on_event=DurationTracker(self.metrics.observe_duration),
        )
        await self.hub.start()

    async def stop(self) -> None:
        await self.stats_feed.stop()
        if self.hub is not None:
            await self.hub.stop()
        await self.app.client.aclose()

    async def queue_names(self) -> list[str]:
        names = cast(set[bytes], await (await self.redis()).smembers(QUEUES_KEY))
        return sorted(n.decode() for n in names)

    async def find(self, job_id: str, queue: str | None) -> JobRecord:
        """The job, looked up in `queue`, or in every known queue when not given."""
        return (await self.find_many([job_id], queue))[0]

    async def find_many(self, job_ids: list[str], queue: str | None) -> list[JobRecord]:
        """`find` for several jobs, in one pipelined round trip."""
        for job_id in job_ids:
            check_job_id(job_id)
        queues = [check_queue(queue)] if queue else await self.queue_names()
        ops = [Queue(q).job(job_id) for job_id in job_ids for q in queues]
        records = iter(await arun_many(await self.redis(), ops))
        found = []
        for job_id in job_ids:
            candidates = [next(records) for _ in queues]
            record = next((r for r in candidates if r is not None), None)
            if record is None:
                where = f"queue {queue}" if queue else "any queue"
                raise JobNotFound(f"no job {job_id} in {where} (it never existed, or it expired)")
            found.append(record)
        return found

    def envelope(
        self, submission: JobSubmission, idempotency_key: str | None, given: int = 0
    ) -> Envelope:
        """The job to enqueue; `given`: arguments a workflow puts before the job's own."""
        task = self.app.get_task(submission.task)
        try:
            task.signature.bind(*[None] * given, *submission.args, **submission.kwargs)
        except TypeError as exc:
            raise InvalidSubmission(f"{task.name}{task.signature}: {exc}") from exc
        changes: dict[str, Any] = {}
        for name in (
            "queue",
            "job_id",
            "key",
            "timeout",
            "meta",
            "retries",
            "priority",
            "retry_priority",
            "countdown",
            "eta",
            "unique_key",
            "group",
        ):
            value = getattr(submission, name)
            if value is not None:
                changes[name] = value
        key = submission.idempotency_key or idempotency_key
        if key is not None:
            changes["idempotency_key"] = key
        changes["unique"] = submission.unique
        try:
            return task.options(**changes).prepare(*submission.args, **submission.kwargs)
        except ValueError as exc:  # countdown with eta
            raise InvalidSubmission(str(exc)) from exc

    async def submit(
        self, submissions: list[JobSubmission], idempotency_key: str | None = None
    ) -> list[SubmittedJob]:
        envelopes = [self.envelope(s, idempotency_key) for s in submissions]
        ids = await self.app.client.aenqueue(envelopes)
        return [
            SubmittedJob(id=job_id, queue=e.queue, duplicate=job_id != e.id)
            for e, job_id in zip(envelopes, ids, strict=True)
        ]

    async def submit_workflow(self, submission: WorkflowSubmission) -> SubmittedWorkflow:
        graph = Workflow()
        for node in submission.nodes:
            graph.add(
                self.envelope(node, None, 1 if node.pass_results else 0),
                depends_on=node.depends_on,
                pass_results=node.pass_results or False,
                collect=node.collect,
            )
        checked = plan(graph, submission.workflow_id, submission.queue, self.settings.max_payload)
        added = await self.app.client.asubmit_workflow(checked, submission.name)
        ids = [n.id for n in checked.nodes]
        if not added:  # the stored workflow's jobs, not the ids generated for this request
            stored = await self.app.client.aworkflow(checked.queue, checked.id)
            ids = [n.id for n in stored.nodes]
        return SubmittedWorkflow(id=checked.id, queue=checked.queue, nodes=ids, duplicate=not added)

    async def find_workflow(self, workflow_id: str, queue: str | None) -> WorkflowRecord:
        """The workflow, looked up in `queue`, or in every known queue when not given."""
        check_job_id(workflow_id)
        for name in [check_queue(queue)] if queue else await self.queue_names():
            try:
                return await self.app.client.aworkflow(name, workflow_id)
            except WorkflowNotFound:
                continue
        where = f"queue {queue}" if queue else "any queue"
        raise WorkflowNotFound(
            f"no workflow {workflow_id} in {where} (it never existed, or it expired)"
        )


class InvalidSubmission(RedworkError):
    """A submitted job's arguments do not fit its task."""


def check_job_id(job_id: str) -> str:
    if not NAME_PATTERN.fullmatch(job_id):
        raise InvalidName(
            f"job id {job_id!r} is malformed: job ids are 1 to 128 characters from "
            "A-Z a-z 0-9 _ . : -"
        )
    return job_id


def check_queue(queue: str) -> str:
    if not NAME_PATTERN.fullmatch(queue):
        raise InvalidName(
            f"queue name {queue!r} is malformed: 1 to 128 characters from A-Z a-z 0-9 _ . : -"
        )
    return queue


def view(record: JobRecord) -> JobView:
    return JobView(**record.as_dict())


class StatsFeed:
    """Queue counts and workers, read once a second while anyone listens, for every
    dashboard of this process."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.listeners: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> Subscription:
        subscription = Subscription(None, 100)
        self.listeners.add(subscription)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="stats-feed")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.listeners.discard(subscription)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while self.listeners:
            try:
                snapshot = {
                    "type": "stats",
                    "queues": [q.model_dump() for q in await queues(self.service)],
                    "workers": [asdict(w) for w in await workers(self.service)],
                }
                for listener in list(self.listeners):
                    listener.push(snapshot)
            except connection.TRANSIENT as exc:
                log.warning("stats feed: %s", exc)
            await asyncio.sleep(1.0)


async def queues(service: Service) -> list[QueueView]:
    client = await service.redis()
    names = await service.queue_names()
    seconds, _ = await client.time()
    minute = int(seconds) // 60
    ops: list[Any] = []
    for name in names:
        queue = Queue(name)
        ops += [queue.counts(), queue.completed_per_minute(range(minute - 4, minute + 1))]
    replies = await arun_many(client, ops)
    views = []
    for index, name in enumerate(names):
        counts, recent = replies[2 * index], replies[2 * index + 1]
        views.append(
            QueueView(
                name=name,
                waiting=counts.waiting,
                held=counts.held,
                limited=counts.limited,
                active=counts.active,
                delayed=counts.delayed,
                failed=counts.failed,
                totals=counts.stats,
                completed_per_minute=recent,
            )
        )
    return views


async def workers(service: Service) -> list[WorkerInfo]:
    return await alive_workers(await service.redis())


def create_api(app: Redwork, settings: Settings | None = None) -> FastAPI:
    """The ASGI application of `redwork serve`, for `app`'s tasks and Redis. Add routes
    of your own to it (examples/uppercase does)."""
    settings = settings or app.settings
    service = Service(app, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    api = FastAPI(
        title="redwork",
        summary="Jobs, queues, workers and live updates of a redwork deployment.",
        version="1",
        lifespan=lifespan,
    )
    api.state.service = service
    _handle_errors(api)
    if settings.api_cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        api.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.api_cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    api.add_middleware(BodyLimit, limit=settings.api_max_body)
    authorized = Depends(token_check(settings))
    _job_routes(api, service, authorized)
    _workflow_routes(api, service, authorized)
    _admin_routes(api, service, authorized)
    _live_routes(api, service, settings)
    _state_routes(api, service, authorized)
    _dashboard_routes(api, service, settings, authorized)
    # Routes an app adds to this API afterwards (examples/orchestrator's /tasks) need the
    # token too: FastAPI gives a router's dependencies to each route added later.
    api.router.dependencies.append(authorized)
    return api


def token_check(settings: Settings) -> Callable[[HTTPConnection], Awaitable[None]]:
    async def check(connection: HTTPConnection) -> None:
        if authorized(settings, connection.headers.get("authorization"), connection.cookies):
            return
        if isinstance(connection, WebSocket):
            raise WebSocketException(4401, "a valid token is required")
        raise HTTPException(401, "a valid token is required: Authorization: Bearer <token>")

    return check


def authorized(settings: Settings, header: str | None, cookies: dict[str, str]) -> bool:
    expected = settings.api_token
    if not expected:
        return True
    given = cookies.get(TOKEN_COOKIE, "")
    if header and header.lower().startswith("bearer "):
        given = header[7:].strip()
    return hmac.compare_digest(given.encode(), expected.encode())


def _handle_errors(api: FastAPI) -> None:
    async def validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _error(
            422,
            _describe_validation(exc),
            # Not the offending input itself: it can be anything (a 100-digit integer).
            detail=[
                {
                    "loc": [str(p) for p in e.get("loc", ())],
                    "msg": e.get("msg"),
                    "type": e.get("type"),
                }
                for e in exc.errors()
            ],
        )

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _error(exc.status_code, str(exc.detail))

    async def redwork_error(_: Request, exc: Exception) -> JSONResponse:
        status = 422
        if isinstance(exc, JobNotFound | WorkflowNotFound):
            status = 404
        elif isinstance(exc, NotCancellable | StateConflict):
            status = 409
        return _error(status, str(exc))

    async def server_away(_: Request, exc: Exception) -> JSONResponse:
        return _error(503, f"the Redis server is unavailable: {exc}")

    api.add_exception_handler(RequestValidationError, validation)
    api.add_exception_handler(StarletteHTTPException, http_error)
    api.add_exception_handler(RedworkError, redwork_error)
    for kind in connection.TRANSIENT:
        api.add_exception_handler(kind, server_away)


StoreName = Annotated[str, Path(max_length=200, description="state store name")]
StateKey = Annotated[str, Path(max_length=512, description="state key")]
JobId = Annotated[str, Path(description="a job id", max_length=200)]
QueueParam = Annotated[
    str | None, Query(description="the job's queue; default: look in every queue", max_length=200)
]


def _job_routes(api: FastAPI, service: Service, authorized: Any) -> None:
    @api.post("/api/jobs", status_code=201, response_model=SubmittedJob, tags=["jobs"])
    async def submit_job(
        submission: JobSubmission,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=512)] = None,
        _: None = authorized,
    ) -> SubmittedJob:
        """Enqueue one job. An `Idempotency-Key` header (or `idempotency_key` in the body)
        already used within the window answers 200 with the first job's id."""
        (submitted,) = await service.submit([submission], idempotency_key)
        if submitted.duplicate:
            response.status_code = 200
        return submitted

    @api.post("/api/jobs/batch", status_code=201, response_model=Batch, tags=["jobs"])
    async def submit_batch(batch: BatchSubmission, _: None = authorized) -> Batch:
        """Enqueue many jobs, all or none when one is invalid."""
        return Batch(jobs=await service.submit(batch.jobs))

    @api.get("/api/jobs/{job_id}", response_model=JobView, tags=["jobs"])
    async def get_job(job_id: JobId, queue: QueueParam = None, _: None = authorized) -> JobView:
        """A job: state, attempts, result or error, timestamps, progress."""
        return view(await service.find(job_id, queue))

    @api.post("/api/jobs/{job_id}/cancel", response_model=JobView, tags=["jobs"])
    async def cancel_job(job_id: JobId, queue: QueueParam = None, _: None = authorized) -> JobView:
        """Cancel a job: one that has not started is withdrawn (state `cancelled`); a
        running one is aborted by its worker (`cancel_requested` is true until it ends
        as `cancelled`). 409 once it has ended."""
        record = await service.find(job_id, queue)
        await service.app.client.acancel(record.queue, job_id)
        return view(await service.find(job_id, record.queue))

    @api.get("/api/jobs/{job_id}/timeline", response_model=list[TimelineEntry], tags=["jobs"])
    async def job_timeline(
        job_id: JobId, queue: QueueParam = None, _: None = authorized
    ) -> list[TimelineEntry]:
        """The job's events, oldest first, as far back as the queue's event stream goes
        (about the last 10,000 events)."""
        record = await service.find(job_id, queue)
        entries = await arun(await service.redis(), Queue(record.queue).timeline(job_id))
        return [TimelineEntry(event=e, attempt=a, at=t) for e, a, t in entries]


def _workflow_routes(api: FastAPI, service: Service, authorized: Any) -> None:
    @api.post(
        "/api/workflows", status_code=201, response_model=SubmittedWorkflow, tags=["workflows"]
    )
    async def submit_workflow(
        submission: WorkflowSubmission, response: Response, _: None = authorized
    ) -> SubmittedWorkflow:
        """Submit a workflow: jobs with the ids of the jobs they wait for, stored at once.
        A cycle or an unknown dependency is a 422 and stores nothing; a workflow_id that
        exists adds nothing (200, `duplicate`, the stored workflow's job ids)."""
        submitted = await service.submit_workflow(submission)
        if submitted.duplicate:
            response.status_code = 200
        return submitted

    @api.get("/api/workflows", response_model=list[WorkflowSummary], tags=["workflows"])
    async def list_workflows(
        queue: Annotated[str, Query(max_length=200)] = "default",
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        _: None = authorized,
    ) -> list[WorkflowSummary]:
        """A queue's workflows, newest first (those that expired are left out)."""
        q = Queue(check_queue(queue))
        client = await service.redis()
        ids = await arun(client, q.workflow_ids(0, limit - 1))
        fields = ("name", "status", "created_at", "finished_at", *COUNTS)
        rows = await arun_many(
            client, [Op(list, command=("HMGET", q.workflow_key(i), *fields)) for i in ids]
        )
        summaries = []
        for workflow_id, row in zip(ids, rows, strict=True):
            values = dict(
                zip(fields, (None if v is None else v.decode() for v in row), strict=True)
            )
            if values["status"] is None:
                continue  # expired
            summaries.append(
                WorkflowSummary(
                    id=workflow_id,
                    queue=queue,
                    name=values["name"] or "",
                    status=values["status"],
                    counts={c: int(values[c] or 0) for c in COUNTS},
                    created_at=_number(values["created_at"]),
                    finished_at=_number(values["finished_at"]),
                )
            )
        return summaries

    @api.get("/api/workflows/{workflow_id}", response_model=WorkflowView, tags=["workflows"])
    async def get_workflow(
        workflow_id: JobId, queue: QueueParam = None, _: None = authorized
    ) -> WorkflowView:
        """A workflow: its status, counts, and every job with its dependencies, state
        and result, in submit order."""
        return WorkflowView(**(await service.find_workflow(workflow_id, queue)).as_dict())

    @api.post(
        "/api/workflows/{workflow_id}/cancel", response_model=WorkflowView, tags=["workflows"]
    )
    async def cancel_workflow(
        workflow_id: JobId, queue: QueueParam = None, _: None = authorized
    ) -> WorkflowView:
        """Cancel every job of the workflow that has not started (409 once it ended)."""
        record = await service.find_workflow(workflow_id, queue)
        await service.app.client.acancel_workflow(record.queue, workflow_id)
        return WorkflowView(
            **(await service.app.client.aworkflow(record.queue, workflow_id)).as_dict()
        )


def _number(value: str | None) -> int | None:
    return None if value is None else int(value)


def _admin_routes(api: FastAPI, service: Service, authorized: Any) -> None:
    @api.get("/api/queues", response_model=list[QueueView], tags=["queues"])
    async def list_queues(_: None = authorized) -> list[QueueView]:
        """Every queue: depth, running count, totals and completions per minute."""
        return await queues(service)

    @api.get("/api/workers", response_model=list[WorkerInfo], tags=["workers"])
    async def list_workers(_: None = authorized) -> list[WorkerInfo]:
        """Live workers (an entry expires three heartbeats after its worker died)."""
        return await workers(service)

    @api.get("/api/queues/{queue}/failed", response_model=FailedPage, tags=["failed"])
    async def list_failed(
        queue: Annotated[str, Path(max_length=200)],
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        _: None = authorized,
    ) -> FailedPage:
        """The failed store of a queue, most recent first."""
        name = check_queue(queue)
        total = await (await service.redis()).zcard(Queue(name).failed)
        records = await service.app.client.afailed_jobs(name, limit, offset)
        return FailedPage(total=total, jobs=[view(r) for r in records])

    @api.post("/api/queues/{queue}/failed/retry", response_model=Count, tags=["failed"])
    async def retry_failed(
        queue: Annotated[str, Path(max_length=200)],
        selection: IdSelection,
        _: None = authorized,
    ) -> Count:
        """Send failed jobs back to their queue (`ids`, or `all`)."""
        ids = _selected(selection)
        return Count(count=await service.app.client.aretry_failed(check_queue(queue), ids))

    @api.post("/api/queues/{queue}/failed/purge", response_model=Count, tags=["failed"])
    async def purge_failed(
        queue: Annotated[str, Path(max_length=200)],
        selection: IdSelection,
        _: None = authorized,
    ) -> Count:
        """Delete failed jobs for good (`ids`, or `all`)."""
        op = Queue(check_queue(queue)).purge_failed(_selected(selection))
        return Count(count=await arun(await service.redis(), op))

    @api.get("/healthz", tags=["server"])
    async def health() -> dict[str, bool]:
        """200 while the Redis server answers (no token needed)."""
        await (await service.redis()).ping()
        return {"ok": True}


def _selected(selection: IdSelection) -> list[str]:
    if selection.all == bool(selection.ids):
        raise InvalidSubmission("give either ids or all: true")
    return [check_job_id(i) for i in selection.ids]


# -- live updates ----------------------------------------------------------------------


async def _subscribe(
    service: Service, job_ids: list[str] | None, queue: str | None
) -> tuple[Subscription, list[dict[str, Any]]]:
    """Register, then read the current state of the jobs (in this order, so that no
    change falls between the two); returns the subscription and the snapshots."""
    assert service.hub is not None
    if job_ids is None:
        return service.hub.subscribe(None), []
    records = await service.find_many(job_ids, queue)
    subscription = service.hub.subscribe((r.queue, r.id) for r in records)
    fresh = await service.hub.records([(r.queue, r.id) for r in records])
    snapshots: list[dict[str, Any]] = [job_message(r, "snapshot") for r in fresh if r]
    return subscription, snapshots


def _job_list(jobs: str | None) -> list[str] | None:
    if jobs is None:
        return None
    ids = [j for j in jobs.split(",") if j]
    if not ids or len(ids) > 1000:
        raise InvalidSubmission("jobs: give 1 to 1,000 comma-separated job ids")
    return [check_job_id(j) for j in ids]


class _Stream:
    """Messages for one client: the snapshots, then updates, with keep-alive pings; ends
    after the last followed job ended (when `until_final`)."""

    def __init__(
        self,
        service: Service,
        subscription: Subscription,
        snapshots: list[dict[str, Any]],
        until_final: bool,
        release: Callable[[Subscription], None],
    ) -> None:
        self.service = service
        self.subscription = subscription
        self.snapshots = snapshots
        self.until_final = until_final
        self.release = release
        self.pending = set(subscription.jobs or ())

    def _ended(self, message: dict[str, Any]) -> bool:
        if message.get("type") == "job" and message.get("state") in (
            "completed",
            "failed",
            "cancelled",
            "skipped",
            "purged",
        ):
            self.pending.discard((message["queue"], message["id"]))
        return self.until_final and not self.pending

    async def messages(self) -> AsyncGenerator[dict[str, Any], None]:
        try:
            for snapshot in self.snapshots:
                yield snapshot
                if self._ended(snapshot):
                    return
            while True:
                try:
                    message = await self.subscription.get(self.service.settings.api_ping_interval)
                except Overflow as exc:
                    yield {"type": "dropped", "reason": str(exc)}
                    return
                if message is None:
                    yield {"type": "ping"}
                    continue
                yield message
                if self._ended(message):
                    return
        finally:
            self.release(self.subscription)


def _live_routes(api: FastAPI, service: Service, settings: Settings) -> None:
    def release(subscription: Subscription) -> None:
        if service.hub is not None:
            service.hub.unsubscribe(subscription)

    async def sse(stream: _Stream) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            async for message in stream.messages():
                if message["type"] == "ping":
                    yield b": ping\n\n"
                else:
                    yield (
                        b"event: "
                        + message["type"].encode()
                        + b"\ndata: "
                        + encoded(message)
                        + b"\n\n"
                    )

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    async def websocket_stream(
        websocket: WebSocket, make: Callable[[], Awaitable[_Stream]]
    ) -> None:
        if not authorized(settings, websocket.headers.get("authorization"), websocket.cookies):
            await websocket.close(code=4401, reason="a valid token is required")
            return
        try:
            stream = await make()
        except (RedworkError, *connection.TRANSIENT) as exc:
            code = 4404 if isinstance(exc, JobNotFound) else 4422
            await websocket.close(code=code, reason=str(exc)[:120])
            return
        await websocket.accept()

        async def send_all() -> None:
            messages = stream.messages()
            try:
                async for message in messages:
                    await websocket.send_text(encoded(message).decode())
                await websocket.close()
            finally:
                await messages.aclose()

        # Whichever ends first ends the other: a client that leaves releases its
        # subscription at once, not at the next update or ping (and a server shutting down
        # does not wait for one).
        sending = asyncio.ensure_future(send_all())
        receiving = asyncio.ensure_future(_drain_client(websocket))
        await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sending, receiving):
            task.cancel()
        for outcome in await asyncio.gather(sending, receiving, return_exceptions=True):
            if isinstance(outcome, Exception) and not isinstance(
                outcome, WebSocketDisconnect | RuntimeError
            ):
                raise outcome

    def stream_of(
        job_ids: list[str] | None, queue: str | None, until_final: bool
    ) -> Callable[[], Awaitable[_Stream]]:
        async def make() -> _Stream:
            subscription, snapshots = await _subscribe(service, job_ids, queue)
            return _Stream(service, subscription, snapshots, until_final, release)

        return make

    authorized_dependency = Depends(token_check(settings))

    @api.get("/api/events", tags=["live"], response_class=StreamingResponse)
    async def events(
        jobs: Annotated[
            str | None, Query(description="comma-separated job ids; none: every event")
        ] = None,
        queue: QueueParam = None,
        _: None = authorized_dependency,
    ) -> StreamingResponse:
        """Server-Sent Events: updates of some jobs (`jobs=a,b`), or every event of every
        queue (the firehose). Each job starts with a `snapshot` of its current state."""
        return await sse(await stream_of(_job_list(jobs), queue, False)())

    @api.get("/api/jobs/{job_id}/events", tags=["live"], response_class=StreamingResponse)
    async def job_events(
        job_id: JobId, queue: QueueParam = None, _: None = authorized_dependency
    ) -> StreamingResponse:
        """Server-Sent Events for one job: its snapshot, then each change; the stream ends
        after the job's final state (at once if it has ended already)."""
        return await sse(await stream_of([check_job_id(job_id)], queue, True)())

    @api.websocket("/api/ws")
    async def websocket_events(
        websocket: WebSocket, jobs: str | None = None, queue: str | None = None
    ) -> None:
        """WebSocket twin of /api/events (JSON text messages)."""
        await websocket_stream(websocket, lambda: stream_of(_job_list(jobs), queue, False)())

    @api.websocket("/api/jobs/{job_id}/ws")
    async def websocket_job(websocket: WebSocket, job_id: str, queue: str | None = None) -> None:
        """WebSocket twin of /api/jobs/{id}/events; closed after the job's final state."""
        await websocket_stream(websocket, lambda: stream_of([check_job_id(job_id)], queue, True)())


async def _drain_client(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, to notice when it goes away."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()


# -- Dapr's state API (the subset seed 000 uses) -------------------------------------------


def _state_routes(api: FastAPI, service: Service, authorized: Any) -> None:
    def etag_of(value: str | int | None) -> int | None:
        if value is None or value == "":
            return None
        try:
            return int(value)
        except ValueError:
            raise InvalidSubmission(f"etag {value!r} is not a version number") from None

    @api.post("/v1.0/state/{store}", status_code=204, tags=["state"])
    async def save_state(
        store: StoreName,
        entries: Annotated[list[StateEntry], Body(max_length=10_000)],
        _: None = authorized,
    ) -> Response:
        """Save entries, all or none: 409 if an etag no longer matches."""
        if not entries:
            return Response(status_code=204)
        values = {e.key: e.value for e in entries}
        etags = {e.key: tag for e in entries if (tag := etag_of(e.etag)) is not None}
        await service.app.state(store).asave_many(values, etags)
        return Response(status_code=204)

    @api.get("/v1.0/state/{store}/{key}", tags=["state"])
    async def get_state(store: StoreName, key: StateKey, _: None = authorized) -> Response:
        """The value (JSON), with its version in the ETag header; 204 when absent."""
        item = await service.app.state(store).aget(key)
        if item is None:
            return Response(status_code=204)
        return Response(
            orjson.dumps(item.value),
            media_type="application/json",
            headers={"ETag": str(item.etag)},
        )

    @api.post("/v1.0/state/{store}/bulk", tags=["state"])
    async def bulk_get_state(
        store: StoreName, request: BulkGet, _: None = authorized
    ) -> list[dict[str, Any]]:
        """Several entries: `[{"key", "data", "etag"}]` (no data nor etag when absent)."""
        items = await service.app.state(store).aget_many(request.keys)
        return [
            {"key": k} if item is None else {"key": k, "data": item.value, "etag": str(item.etag)}
            for k, item in items.items()
        ]

    @api.delete("/v1.0/state/{store}/{key}", status_code=204, tags=["state"])
    async def delete_state(
        store: StoreName,
        key: StateKey,
        if_match: Annotated[str | None, Header()] = None,
        _: None = authorized,
    ) -> Response:
        """Delete an entry; with If-Match, only at that version (409 otherwise)."""
        await service.app.state(store).adelete(key, etag_of(if_match))
        return Response(status_code=204)


# -- dashboard and metrics -----------------------------------------------------------------


def _dashboard_routes(api: FastAPI, service: Service, settings: Settings, authorized: Any) -> None:
    files = resources.files("redwork") / "dashboard"

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard(request: Request) -> HTMLResponse:
        if not authorized_request(settings, request):
            return HTMLResponse(files.joinpath("login.html").read_text(), status_code=401)
        return HTMLResponse(files.joinpath("index.html").read_text())

    @api.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        token = (form.get("token") or [""])[0]
        if not settings.api_token or not hmac.compare_digest(
            token.encode(), settings.api_token.encode()
        ):
            return HTMLResponse(files.joinpath("login.html").read_text(), status_code=401)
        response = Response(status_code=303, headers={"Location": "/"})
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    api.mount("/static", StaticFiles(directory=str(files)), name="static")

    @api.get("/api/stats/stream", tags=["live"], response_class=StreamingResponse)
    async def stats_stream(_: None = authorized) -> StreamingResponse:
        """Server-Sent Events: every queue's counts and the live workers, each second
        (the dashboard's feed)."""
        subscription = service.stats_feed.subscribe()

        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    try:
                        message = await subscription.get(settings.api_ping_interval)
                    except Overflow:
                        return
                    if message is None:
                        yield b": ping\n\n"
                    else:
                        yield b"event: stats\ndata: " + orjson.dumps(message) + b"\n\n"
            finally:
                service.stats_feed.unsubscribe(subscription)

        return StreamingResponse(
            body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @api.get("/metrics", tags=["server"], response_class=Response)
    async def metrics(_: None = authorized) -> Response:
        """Prometheus text format: jobs by queue and state, totals, live workers, job
        durations."""
        clients = service.hub.clients if service.hub is not None else 0
        body = service.metrics.render(await queues(service), len(await workers(service)), clients)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def authorized_request(settings: Settings, request: Request) -> bool:
    return authorized(settings, request.headers.get("authorization"), request.cookies)
