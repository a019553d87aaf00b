"""OpenTelemetry spans from enqueue through execution, with the trace context carried in
the job document (`trace`, W3C trace context). Optional: install `redwork[otel]` and set
`tracing` (REDWORK_TRACING=1); spans go to whatever tracer provider the process set up
(the OpenTelemetry SDK, `opentelemetry-instrument`, ...). Off, it costs one `if` per
enqueue call and per job."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from redwork.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from redwork.job import Envelope

INSTRUMENTATION = "redwork"
SYSTEM = "redwork"


def tracer(enabled: bool) -> Tracer | None:
    """The tracer to use, or None when tracing is off."""
    if not enabled:
        return None
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ConfigurationError(
            "tracing is on but OpenTelemetry is not installed: pip install 'redwork[otel]'"
        ) from exc
    from redwork import __version__

    return trace.get_tracer(INSTRUMENTATION, __version__)


@contextlib.contextmanager
def enqueue_span(tracer: Tracer, envelopes: Sequence[Envelope]) -> Iterator[None]:
    """One producer span around storing the jobs (one per call, however many jobs: a
    batch of 10,000 makes one span), whose context each job carries to its runs."""
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind

    tasks = sorted({e.task for e in envelopes})
    queues = sorted({e.queue for e in envelopes})
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "publish",
        "messaging.destination.name": ",".join(queues),
        "messaging.batch.message_count": len(envelopes),
        "redwork.task": ",".join(tasks),
    }
    if len(envelopes) == 1:
        attributes["messaging.message.id"] = envelopes[0].id
    name = f"enqueue {tasks[0] if len(tasks) == 1 else f'{len(envelopes)} jobs'}"
    with tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        for envelope in envelopes:
            envelope.trace = carrier
        yield


@contextlib.contextmanager
def run_span(
    tracer: Tracer, document: dict[str, Any], job_id: str, queue: str, attempt: int
) -> Iterator[Span]:
    """A consumer span around one run of a job, child of its enqueue span when the
    document carries a trace context (a malformed one starts a new trace)."""
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind

    carrier = document.get("trace")
    # A foreign producer's junk (a number for a header, say) would raise in the
    # propagator: only strings are read, and a malformed context starts a new trace.
    headers = (
        {k: v for k, v in carrier.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(carrier, dict)
        else {}
    )
    parent = propagate.extract(headers) if headers else None
    task = document.get("task")
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
        "redwork.task": str(task),
        "redwork.attempt": attempt,
    }
    # The task's outcome is set by ended(), not from an exception: failures are values.
    with tracer.start_as_current_span(
        f"run {task}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def ended(span: Span, reason: str | None, error: str | None) -> None:
    """Mark the run span with the job's outcome: reason None when it succeeded."""
    from opentelemetry.trace import Status, StatusCode

    if reason is None:
        span.set_status(Status(StatusCode.OK))
        return
    span.set_attribute("redwork.failure.reason", reason)
    # The error's last line names the exception; the traceback would bloat every span.
    last_line = (error or "").strip().splitlines()[-1:]
    span.set_status(Status(StatusCode.ERROR, ": ".join([reason, *last_line])))
