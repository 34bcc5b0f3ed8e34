"""Tasks for the metrics, health and tracing tests. With ``OBSERVE_TRACE_FILE`` set, the
worker traces with OpenTelemetry's SDK and writes each finished span to that file, one JSON
line each (the exporter below), so a test can read the worker's spans."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celeriac import Celeriac

app = Celeriac("observe_tasks")
LEDGER = Path(os.environ.get("E2E_LEDGER", "ledger"))


@app.task(bind=True)
def ok(self: Any, x: int) -> int:
    with open(LEDGER / f"{os.getpid()}.log", "a") as f:
        f.write(f"run {self.request.id} {time.time():.6f}\n")
    return x


@app.task
def fail(x: int) -> None:
    raise ValueError(f"failed on purpose: {x}")


def _trace_to_file(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class FileExporter(SpanExporter):
        """Appends each span as a JSON line (O_APPEND: whole lines from every process)."""

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            lines = []
            for span in spans:
                parent = span.parent
                lines.append(
                    json.dumps(
                        {
                            "name": span.name,
                            "kind": span.kind.name,
                            "trace_id": format(span.context.trace_id, "032x"),
                            "span_id": format(span.context.span_id, "016x"),
                            "parent_id": format(parent.span_id, "016x") if parent else None,
                            "status": span.status.status_code.name,
                            "attributes": dict(span.attributes or {}),
                            "pid": os.getpid(),
                        }
                    )
                )
            with open(path, "a") as f:
                f.write("".join(line + "\n" for line in lines))
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    # Synchronous export: nothing is lost when a prefork child ends, and no thread to fork.
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)


if os.environ.get("OBSERVE_TRACE_FILE"):
    _trace_to_file(os.environ["OBSERVE_TRACE_FILE"])
