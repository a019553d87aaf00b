"""Tasks for the tracing tests, run by a real worker process: importing this module sets
up the OpenTelemetry SDK as a user's app would, exporting every ended span as a JSON line
to the file named by REDWORK_TEST_SPANS (so the test process can read them)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from redwork import Redwork


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a") as out:
            for span in spans:
                out.write(json.dumps(span_facts(span)) + "\n")
        return SpanExportResult.SUCCESS


def span_facts(span: ReadableSpan) -> dict[str, object]:
    """What the tests compare, from a span of either process."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "status": span.status.status_code.name,
        "description": span.status.description,
        "attributes": dict(span.attributes or {}),
    }


class BrokenProcessor(SpanProcessor):
    """A span processor with a bug (as an exporter may have): it raises on every span
    while `broken` is true."""

    broken = False

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.broken:
            raise RuntimeError("span processor bug (on_start)")

    def on_end(self, span: ReadableSpan) -> None:
        if self.broken:
            raise RuntimeError("span processor bug (on_end)")


if "REDWORK_TEST_SPANS" in os.environ:
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(JsonLinesExporter(os.environ["REDWORK_TEST_SPANS"]))
    )
    broken = BrokenProcessor()
    broken.broken = os.environ.get("REDWORK_TEST_SPANS_BROKEN") == "1"
    provider.add_span_processor(broken)
    trace.set_tracer_provider(provider)

app = Redwork("traced")
tracer = trace.get_tracer("tests.traced_tasks")


@app.task(name="traced.add")
async def add(x: int, y: int) -> int:
    with tracer.start_as_current_span("inner async"):
        return x + y


@app.task(name="traced.sync_add")
def sync_add(x: int, y: int) -> int:
    with tracer.start_as_current_span("inner sync"):
        return x + y


@app.task(name="traced.fail")
async def fail() -> None:
    raise ValueError("no luck")


@app.task(name="traced.nap")
async def nap(seconds: float) -> None:
    await asyncio.sleep(seconds)
