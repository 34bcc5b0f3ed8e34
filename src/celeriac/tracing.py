"""OpenTelemetry tracing of task messages, on when ``opentelemetry-api`` is installed and a
tracer provider is set (globally with ``trace.set_tracer_provider``, or for Celeriac only with
:func:`configure`); otherwise every hook here is a no-op that imports nothing.

What it does, as opentelemetry-instrumentation-celery does for Celery, so traces join across
a mixed fleet:

* publishing (``sending.publish``, which every message a client, a worker or beat sends goes
  through) opens a ``PRODUCER`` span ``apply_async/<task>`` and writes the W3C trace context
  into the message's headers: ``traceparent`` (and ``tracestate``, ``baggage`` when there are
  any) as top-level headers, where Celery's instrumentation puts them and where a Celery
  worker reads them (``task.request.traceparent``);
* running (``worker/executor.py``) opens a ``CONSUMER`` span ``run/<task>`` whose parent is the
  context in the message's headers, current while the task runs: tasks it sends, and spans
  its own code opens, are its children.

Attributes follow Celery's instrumentation: ``celery.action`` (``apply_async`` or ``run``),
``celery.task_name``, ``messaging.message.id`` (the task id), ``messaging.destination`` (the
routing key), ``celery.hostname`` and ``celery.state`` on a run, ``celery.retries`` when above 0.
A failed task's span has an ERROR status and the exception recorded.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.protocol.publication import Publication
    from celeriac.worker.job import Job, Outcome

_available: bool | None = None
_provider: Any = None
_tracers: dict[int, Any] = {}
_trace: Any = None  # opentelemetry.trace, once imported
_UNREAD = object()  # an API without the record _tracer() reads: asked the public way
#: Whether the environment names a tracer provider (OTEL_PYTHON_TRACER_PROVIDER), as read at
#: the first publish: the SDK reads its environment at start-up too.
_named: bool | None = None


def configure(tracer_provider: Any = None) -> None:
    """Trace with ``tracer_provider`` (an OpenTelemetry ``TracerProvider``) instead of the
    global one; ``None`` goes back to the global one."""
    global _provider
    _provider = tracer_provider


def _tracer() -> Any:
    """The tracer to use now, or None when tracing is off (no API, or no provider set).

    Asked on every publish: the API module is kept once imported (the import statement cost
    ~1 us a call; whether a provider is set is still looked at each time, as one may be set
    later)."""
    global _available, _trace, _named
    if _provider is None:
        api = sys.modules.get("opentelemetry.trace")
        if _named is None:  # read once (a lookup that misses raises inside os.environ: ~3 us)
            _named = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
        # Nobody imported the API's trace module, or nobody set its global provider (the
        # API's own record of it, read as get_tracer_provider() reads it: asking that costs
        # ~4 us a publish, and redis-py imports the API wherever it is installed), and none is
        # named in the environment, where get_tracer_provider() would load it from: tracing
        # is off, known without importing the API into every worker process.
        if not _named and (api is None or getattr(api, "_TRACER_PROVIDER", _UNREAD) is None):
            return None
    if _available is None:
        _available = importlib.util.find_spec("opentelemetry") is not None
    if not _available:
        return None
    trace = _trace
    if trace is None:
        from opentelemetry import trace

        _trace = trace
    provider = _provider
    if provider is None:
        provider = trace.get_tracer_provider()
        # Nothing set yet: the API's placeholder, whose spans record nothing.
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            return None
    tracer = _tracers.get(id(provider))
    if tracer is None:
        tracer = _tracers[id(provider)] = provider.get_tracer("celeriac")
    return tracer


class _Spans:
    """Spans open around a piece of work; ending them records how it went."""

    def __init__(self, spans: list[Any]) -> None:
        self.spans = spans

    def __enter__(self) -> _Spans:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for span in self.spans:
            if exc is not None:
                _failed(span, exc)
            span.end()


_OFF = _Spans([])


def publishing(publications: Sequence[Publication]) -> _Spans:
    """Open a PRODUCER span per message and write its context into the message's headers;
    use as ``with publishing(publications): broker.publish(...)``."""
    tracer = _tracer()
    if tracer is None:
        return _OFF
    from opentelemetry import context, propagate, trace

    current = trace.get_current_span().get_span_context().is_valid
    spans = []
    for p in publications:
        headers = p.message.headers
        name = str(headers.get("task") or "unknown")
        # No span of the caller's (a retry or chain step a worker sends after the task):
        # stay in the trace the message already carries.
        parent = None if current else propagate.extract(headers)
        span = tracer.start_span(
            f"apply_async/{name}",
            context=parent,
            kind=trace.SpanKind.PRODUCER,
            attributes=_attributes("apply_async", name, headers, p.route.address[1]),
        )
        propagate.inject(headers, context=trace.set_span_in_context(span, context.Context()))
        spans.append(span)
    return _Spans(spans)


class _Run:
    """The CONSUMER span of one task run, current in this context until it ends."""

    def __init__(self, tracer: Any, job: Job) -> None:
        from opentelemetry import context, propagate, trace

        headers = job.message.headers
        name = str(headers.get("task") or "unknown")
        self._context, self._trace = context, trace
        attributes = _attributes("run", name, headers, job.queue)
        attributes["celery.hostname"] = job.hostname
        self.span = tracer.start_span(
            f"run/{name}",
            context=propagate.extract(headers),
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
        )
        self._token = context.attach(trace.set_span_in_context(self.span))

    def outcome(self, outcome: Outcome) -> Outcome:
        """Record how the run ended; returns ``outcome``."""
        if outcome.state:
            self.span.set_attribute("celery.state", outcome.state)
        if outcome.state == "FAILURE":
            if outcome.error is not None:
                _failed(self.span, outcome.error)
            else:
                self.span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        return outcome

    def end(self) -> None:
        self.span.end()
        self._context.detach(self._token)


class _NoRun:
    def outcome(self, outcome: Outcome) -> Outcome:
        return outcome

    def end(self) -> None:
        pass


_NO_RUN = _NoRun()


def running(job: Job) -> _Run | _NoRun:
    """The span of running ``job`` here, current until ``end()``: ``run = running(job)``,
    then ``run.outcome(outcome)`` and, in a ``finally``, ``run.end()``."""
    tracer = _tracer()
    return _NO_RUN if tracer is None else _Run(tracer, job)


def _attributes(
    action: str, name: str, headers: dict[str, Any], routing_key: str | None
) -> dict[str, Any]:
    attributes: dict[str, Any] = {"celery.action": action, "celery.task_name": name}
    if headers.get("id"):
        attributes["messaging.message.id"] = str(headers["id"])
    if routing_key:
        attributes["messaging.destination"] = routing_key
    retries = headers.get("retries")
    if isinstance(retries, int) and retries > 0:
        attributes["celery.retries"] = retries
    return attributes


def _failed(span: Any, exc: BaseException) -> None:
    from opentelemetry import trace

    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
