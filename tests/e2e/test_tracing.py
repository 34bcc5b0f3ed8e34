"""A trace started in the client continues in the worker: the worker's ``run`` span is a child
of the client's ``apply_async`` span, in the client's trace. The client exports to memory
(OpenTelemetry's SDK); the worker, a real prefork process, writes its spans to a file
(``observe_tasks``)."""

from __future__ import annotations

import json
import uuid

import pytest

from celeriac import tracing
from celeriac.exceptions import TimeoutError

from .conftest import wait_for
from .observe_support import start_observed

pytestmark = pytest.mark.e2e

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)


def test_worker_span_is_a_child_of_the_clients_publish_span(e2e, tmp_path):
    env, _ = e2e
    import observe_tasks

    spans_file = tmp_path / "worker-spans.jsonl"
    env.env["OBSERVE_TRACE_FILE"] = str(spans_file)
    # A multiprocess directory of the user's: the children's metric files go there.
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    env.env["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
    observe_tasks.app.conf.update(broker_url=env.url, result_backend=None)
    observe_tasks.app.close()
    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(tracer_provider=provider)  # this process only, not the global provider
    queue = f"trace-{uuid.uuid4().hex[:8]}"
    try:
        proc, _ = start_observed(env, "-P", "prefork", "-c", "1", "-Q", queue)
        with provider.get_tracer("test").start_as_current_span("client request") as root:
            ok = observe_tasks.ok.apply_async((7,), queue=queue)
            bad = observe_tasks.fail.apply_async((1,), queue=queue)
        try:
            value = ok.get(timeout=30)
        except TimeoutError:
            pytest.fail(f"no result; the worker's log:\n{env.log(proc)}")
        assert value == 7
        with pytest.raises(ValueError):
            bad.get(timeout=30)
        assert env.stop_worker(proc) == 0
    finally:
        tracing.configure(None)
        observe_tasks.app.close()

    assert any(p.name.startswith("counter_") for p in prom_dir.iterdir())
    trace_id = format(root.get_span_context().trace_id, "032x")
    client = {
        s.attributes["messaging.message.id"]: s
        for s in exporter.get_finished_spans()
        if s.name.startswith("apply_async/")
    }
    assert set(client) == {ok.id, bad.id}
    publish = client[ok.id]
    assert publish.name == "apply_async/observe_tasks.ok"
    assert publish.kind.name == "PRODUCER"
    assert publish.parent.span_id == root.get_span_context().span_id
    assert dict(publish.attributes) == {
        "celery.action": "apply_async",
        "celery.task_name": "observe_tasks.ok",
        "messaging.message.id": ok.id,
        "messaging.destination": queue,
    }

    def worker_spans():
        if not spans_file.exists():
            return None
        spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
        return spans if len(spans) == 2 else None

    runs = {
        s["attributes"]["messaging.message.id"]: s
        for s in wait_for(worker_spans, 10, "the worker's two spans")
    }
    run = runs[ok.id]
    assert run["name"] == "run/observe_tasks.ok"
    assert run["kind"] == "CONSUMER"
    assert run["trace_id"] == trace_id
    assert run["parent_id"] == format(publish.context.span_id, "016x")
    assert run["status"] == "UNSET"
    assert run["attributes"] == {
        "celery.action": "run",
        "celery.task_name": "observe_tasks.ok",
        "messaging.message.id": ok.id,
        "messaging.destination": queue,
        "celery.hostname": "w1@observe",
        "celery.state": "SUCCESS",
    }
    failed = runs[bad.id]
    assert failed["trace_id"] == trace_id
    assert failed["parent_id"] == format(client[bad.id].context.span_id, "016x")
    assert failed["status"] == "ERROR"
    assert failed["attributes"]["celery.state"] == "FAILURE"
