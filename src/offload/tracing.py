"""OpenTelemetry tracing (`pip install 'offload[otel]'`), built on the hooks.

`app.add_hook(Tracing())` (or `offload worker --tracing`) gives:

- a PRODUCER span `send {queue}` around each enqueue; its context (W3C
  `traceparent`/`tracestate`, through the configured propagator) travels in the job's
  optional `trace` envelope field, so the worker's span continues the trace of the web
  request that enqueued the job. Jobs without it (older producers, other languages)
  run as before, with spans of their own.
- a CONSUMER span `process {queue}` per attempt, current while the handler runs (its
  own spans nest under it, in async handlers and in threads). Attempt 1 is a child of
  the `send` span. A retry is a new trace, so a retry hours later does not stretch the
  request's trace; its span links to the job's `send` span (`offload.link` = "send")
  and to attempt 1's `process` span ("first_attempt"). Attempt 1's context is kept in
  the job's attempt history (`Run.first_trace`, recorded with each failed attempt:
  `offload.attempts`), which the worker reads before a retry's span starts (one broker
  read per retried attempt). An attempt 1 that left no record (its worker died, or
  gave it back at shutdown) leaves its retries without that link.
- a workflow step enqueued by the worker (the next stage of a chain, a chord's
  callback) is sent from inside its parent's `process` span, as its child, and the
  `send` span also links to that parent span.

Attributes follow the messaging semantic conventions: `messaging.system` ("offload"),
`messaging.destination.name` (the queue), `messaging.message.id` (the job id),
`messaging.operation.type` ("send" / "process") and `messaging.operation.name`; plus
`offload.task` and `offload.attempt`. Only the OpenTelemetry API is imported here: the
application configures the SDK (exporter, sampler) as usual.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from offload._version import __version__
from offload.envelope import Envelope
from offload.hooks import Hook, Run

__all__ = ["Tracing"]

SYSTEM = "offload"
_KEY = "offload.tracing"  # this hook's entry in Run.scratch


class Tracing(Hook):
    """Spans for enqueues and attempts (see the module docstring).

    Args:
        tracer_provider: the provider to use (default: the global one, set by the
            SDK's configuration).
    """

    links_attempts = True  # a retry's span links to attempt 1's (`Run.first_trace`)

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("offload", __version__, tracer_provider=tracer_provider)
        self._sending: dict[str, trace.Span] = {}  # envelope id -> its open send span
        self._lock = threading.Lock()  # producers may enqueue from many threads

    # -- producer ----------------------------------------------------------------------

    def before_enqueue(self, envelope: Envelope) -> Envelope | None:
        links = []
        current = trace.get_current_span().get_span_context()
        if envelope.parent_id is not None and current.is_valid:
            links.append(Link(current, {"offload.link": "parent"}))
        span = self.tracer.start_span(
            f"send {envelope.queue}",
            kind=SpanKind.PRODUCER,
            attributes=_attributes(envelope.queue, envelope.id, "send", envelope.task),
            links=links,
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        with self._lock:
            self._sending[envelope.id] = span
        envelope.trace = carrier or None
        return envelope

    def after_enqueue(
        self, envelope: Envelope, created: bool | None, error: BaseException | None
    ) -> None:
        with self._lock:
            span = self._sending.pop(envelope.id, None)
        if span is None:
            return
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        elif created is False:
            span.set_attribute("offload.duplicate", True)  # the key's job stands
        span.end()

    # -- worker ------------------------------------------------------------------------

    def before_run(self, run: Run) -> None:
        carrier = run.envelope.trace if run.envelope is not None else None
        sent = propagate.extract(carrier) if carrier else None
        links = []
        parent = sent
        if run.attempt > 1:
            parent = context.Context()  # a new trace, linked to the send and attempt 1
            for found, role in ((carrier, "send"), (run.first_trace, "first_attempt")):
                linked = _span_context(found)
                if linked is not None:
                    links.append(Link(linked, {"offload.link": role}))
        span = self.tracer.start_span(
            f"process {run.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                **_attributes(run.queue, run.job_id, "process", run.task),
                "offload.attempt": run.attempt,
            },
            links=links,
        )
        current = trace.set_span_in_context(span)
        if run.attempt == 1:  # recorded with the attempt if it fails, for the retries
            first: dict[str, str] = {}
            propagate.inject(first, context=current)
            run.first_trace = first or None
        token = context.attach(current)
        run.scratch[_KEY] = (span, token)

    def after_run(self, run: Run) -> None:
        entry: Any = run.scratch.pop(_KEY, None)
        if entry is None:
            return
        span, token = entry
        try:
            span.set_attribute("offload.outcome", run.outcome or "not recorded")
            error = run.error
            if run.outcome is None:
                span.set_status(Status(StatusCode.ERROR, "outcome not recorded"))
            elif error is not None and run.outcome in ("retried", "dead"):
                span.add_event(
                    "exception",
                    {"exception.type": error.type_path or error.type,
                     "exception.message": error.message},
                )  # fmt: skip
                # A retry the handler asked for is no error; a job that asked until its
                # attempts ran out is dead all the same, and its span says so.
                if error.type != "Retry" or run.outcome == "dead":
                    span.set_status(Status(StatusCode.ERROR, error.type))
            span.end()
        finally:
            context.detach(token)


def _span_context(carrier: dict[str, str] | None) -> trace.SpanContext | None:
    """The span context a carrier holds (W3C `traceparent`, through the configured
    propagator), or None if it holds none."""
    if not carrier:
        return None
    found = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    return found if found.is_valid else None


def _attributes(queue: str, job_id: str, operation: str, task: str) -> dict[str, str]:
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "offload.task": task,
    }
