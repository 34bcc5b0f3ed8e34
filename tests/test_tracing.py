"""Trace context in the headers of what a client publishes (no worker needed)."""

from __future__ import annotations

import pytest

from celeriac import Celeriac, tracing

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)


def _published(app: Celeriac, queue: str) -> dict:
    [delivery] = app.broker.fetch([queue], 1, timeout=1)
    return delivery.message.headers


def test_publish_writes_traceparent_of_its_producer_span():
    app = Celeriac("t", broker_url="memory://")
    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(tracer_provider=provider)
    try:
        result = app.send_task("t.add", (1, 2), queue="tq")
        headers = _published(app, "tq")
    finally:
        tracing.configure(None)
    [span] = exporter.get_finished_spans()
    ctx = span.get_span_context()
    # W3C: version 00, trace id, parent (the PRODUCER span), flags (sampled); as Celery's
    # instrumentation writes it, a top-level message header.
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert int(flags, 16) & 1
    assert span.name == "apply_async/t.add" and span.kind.name == "PRODUCER"
    assert span.parent is None  # no span of the caller's: a new trace
    assert span.attributes["messaging.message.id"] == result.id


def test_no_trace_headers_without_a_tracer_provider():
    app = Celeriac("t", broker_url="memory://")
    app.send_task("t.add", (1, 2), queue="tq")
    assert "traceparent" not in _published(app, "tq")


_GLOBAL_PROVIDER_LATER = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from celeriac import Celeriac

app = Celeriac("t", broker_url="memory://")
seen = []
for step in ("before", "after"):
    if step == "after":
        trace.set_tracer_provider(TracerProvider())
    app.send_task("t.add", (1, 2), queue="tq")
    [delivery] = app.broker.fetch(["tq"], 1, timeout=1)
    seen.append("traceparent" in delivery.message.headers)
print(json.dumps(seen))
"""

_PROVIDER_NAMED_IN_THE_ENVIRONMENT = """
import json
import opentelemetry.trace  # imported, no provider set: the environment names one
from celeriac import Celeriac

app = Celeriac("t", broker_url="memory://")
app.send_task("t.add", (1, 2), queue="tq")
[delivery] = app.broker.fetch(["tq"], 1, timeout=1)
print(json.dumps("traceparent" in delivery.message.headers))
"""


def _run(code: str, **env: str) -> object:
    import json
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_a_global_provider_set_after_the_first_publish_traces_the_next():
    # The API imported with no provider set is the cheap "off" answer; setting one later
    # (once per process, hence a process of its own) turns tracing on from the next publish.
    assert _run(_GLOBAL_PROVIDER_LATER) == [False, True]


def test_a_provider_named_in_the_environment_traces():
    assert _run(_PROVIDER_NAMED_IN_THE_ENVIRONMENT) is False
    sdk_named = {"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"}
    assert _run(_PROVIDER_NAMED_IN_THE_ENVIRONMENT, **sdk_named) is True
