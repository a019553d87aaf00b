"""OpenTelemetry spans from enqueue through execution, with the trace context carried in
the job document (`trace`, W3C trace context). Optional: install `redwork[otel]` and set
`tracing` (REDWORK_TRACING=1); spans go to whatever tracer provider the process set up
(the OpenTelemetry SDK, `opentelemetry-instrument`, ...). Off, it costs one `if` per
enqueue call and per job.

Telemetry never decides a job's fate: an error raised by the tracing SDK (a span
processor, an exporter) is logged, and the enqueue or the run goes on without its span."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redwork.errors import ConfigurationError

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from redwork.job import Envelope

INSTRUMENTATION = "redwork"
SYSTEM = "redwork"
log = logging.getLogger("redwork.tracing")


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


@dataclass(slots=True)
class Current:
    """A started span, made the current one until end()."""

    span: Span
    token: Token[Context]


def _start(
    tracer: Tracer, name: str, kind_name: str, attributes: dict[str, Any], parent: Any = None
) -> Current | None:
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind

    try:
        span = tracer.start_span(
            name, context=parent, kind=SpanKind[kind_name], attributes=attributes
        )
        return Current(span, context.attach(trace.set_span_in_context(span)))
    except Exception:
        log.exception("tracing: could not start the span %r; going on without it", name)
        return None


def end(current: Current | None, reason: str | None, error: str | None) -> None:
    """End the span: reason `completed` (OK), a failure reason (ERROR), or None for a
    run that was cut off (handed back, its lease lost), whose status stays unset."""
    if current is None:
        return
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    try:
        context.detach(current.token)
        if reason == "completed":
            current.span.set_status(Status(StatusCode.OK))
        elif reason is not None:
            current.span.set_attribute("redwork.failure.reason", reason)
            # The error's last line names the exception; a traceback would bloat spans.
            last_line = (error or "").strip().splitlines()[-1:]
            current.span.set_status(Status(StatusCode.ERROR, ": ".join([reason, *last_line])))
        current.span.end()
    except Exception:
        log.exception("tracing: could not end a span")


@contextlib.contextmanager
def enqueue_span(tracer: Tracer, envelopes: Sequence[Envelope]) -> Iterator[None]:
    """One producer span around storing the jobs (one per call, however many jobs: a
    batch of 10,000 makes one span), whose context each job carries to its runs."""
    from opentelemetry import propagate

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
    current = _start(tracer, name, "PRODUCER", attributes)
    if current is not None:
        carrier: dict[str, str] = {}
        try:
            propagate.inject(carrier)
        except Exception:
            log.exception("tracing: could not write the trace context into the jobs")
        for envelope in envelopes:
            envelope.trace = carrier or None
    try:
        yield
    except BaseException as exc:
        end(current, "enqueue_failed", f"{type(exc).__name__}: {exc}")
        raise
    end(current, "completed", None)


def start_run(
    tracer: Tracer, document: dict[str, Any], job_id: str, queue: str, attempt: int
) -> Current | None:
    """A consumer span for one run of a job, child of its enqueue span when the document
    carries a trace context (a malformed one starts a new trace); end it with end()."""
    from opentelemetry import propagate

    carrier = document.get("trace")
    # A foreign producer's junk (a number for a header, say) would raise in the
    # propagator: only strings are read, and a malformed context starts a new trace.
    headers = (
        {k: v for k, v in carrier.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(carrier, dict)
        else {}
    )
    try:
        parent = propagate.extract(headers) if headers else None
    except Exception:
        parent = None
    task = document.get("task")
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
        "redwork.task": str(task),
        "redwork.attempt": attempt,
    }
    return _start(tracer, f"run {task}", "CONSUMER", attributes, parent)
