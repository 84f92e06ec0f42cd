"""OpenTelemetry spans with the SDK's in-memory exporter: a real worker on every
broker, and a real `offload worker --tracing` process continuing the producer's trace
and linking a retry to the job's first attempt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from offload import Backoff, JobState, Offload, Retry, chain, current_job
from offload.codec import encode_envelope
from offload.envelope import Envelope, new_job_id
from offload.tracing import Tracing
from tests.conftest import BROKER_NAMES
from tests.integration.test_worker_process import stop_all, wait_for
from tests.observability.helpers import all_ended, run_worker_until

QUICK = Backoff(base_s=0.01, cap_s=0.01, jitter=False)


@pytest.fixture(params=BROKER_NAMES)
def url(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> str:
    return broker_url(request.param)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def spans(exporter: InMemorySpanExporter, name: str, job_id: str) -> list[ReadableSpan]:
    found = [
        s
        for s in exporter.get_finished_spans()
        if s.name == name and s.attributes and s.attributes["messaging.message.id"] == job_id
    ]
    return sorted(found, key=lambda s: s.start_time or 0)


async def test_a_job_continues_the_request_trace_and_retries_link_to_it_and_attempt_1(
    url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = Offload(url)
    app.add_hook(Tracing(provider))
    tracer = provider.get_tracer("web")
    inner: list[tuple[int, int]] = []  # (trace id, parent span id) of the handler's span

    @app.task(name="emails.send", queue="emails", backoff=QUICK)
    def send(address: str) -> None:
        with tracer.start_as_current_span("smtp") as span:
            assert isinstance(span, ReadableSpan) and span.parent is not None
            inner.append((span.get_span_context().trace_id, span.parent.span_id))
        if current_job().attempt == 1:
            raise ConnectionError("smtp down")

    try:
        with tracer.start_as_current_span("POST /signup") as request:
            job = await send.enqueue_async("ada@example.com")
        await run_worker_until(app, lambda: all_ended(app, [job.id]))
        assert await job.state_async() is JobState.SUCCEEDED

        trace_id = request.get_span_context().trace_id
        [sent] = spans(exporter, "send emails", job.id)
        assert sent.kind is SpanKind.PRODUCER
        assert sent.context.trace_id == trace_id
        assert sent.parent is not None and sent.parent.span_id == request.get_span_context().span_id
        assert dict(sent.attributes or {}) == {
            "messaging.system": "offload",
            "messaging.destination.name": "emails",
            "messaging.message.id": job.id,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "offload.task": "emails.send",
        }
        first, second = spans(exporter, "process emails", job.id)
        # Attempt 1 continues the request's trace, under the send span...
        assert first.kind is SpanKind.CONSUMER
        assert first.context.trace_id == trace_id
        assert first.parent is not None and first.parent.span_id == sent.context.span_id
        assert first.attributes is not None
        assert first.attributes["messaging.operation.type"] == "process"
        assert first.attributes["offload.attempt"] == 1
        assert first.attributes["offload.outcome"] == "retried"
        assert first.status.status_code is StatusCode.ERROR
        assert [e.name for e in first.events] == ["exception"]
        # ... the retry is a new trace, linked to the send span and to attempt 1's span
        assert second.context.trace_id != trace_id and second.parent is None
        links = {
            (link.attributes or {}).get("offload.link"): (
                link.context.trace_id,
                link.context.span_id,
            )
            for link in second.links
        }
        assert links == {
            "send": (trace_id, sent.context.span_id),
            "first_attempt": (trace_id, first.context.span_id),
        }
        assert second.attributes is not None and second.attributes["offload.attempt"] == 2
        assert second.status.status_code is StatusCode.UNSET
        # ... and the handler's own spans nest under each attempt's span.
        assert inner == [
            (trace_id, first.context.span_id),
            (second.context.trace_id, second.context.span_id),
        ]
    finally:
        await app.aclose()


def _first_attempt_link(span: ReadableSpan) -> int | None:
    """The span id a retry's span links to as its job's first attempt."""
    found = [
        link.context.span_id
        for link in span.links
        if (link.attributes or {}).get("offload.link") == "first_attempt"
    ]
    assert len(found) <= 1
    return found[0] if found else None


async def test_every_retry_links_to_the_first_attempt_of_its_run(
    url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = Offload(url)
    app.add_hook(Tracing(provider))
    calls: list[int] = []

    @app.task(name="flaky", max_attempts=3, backoff=QUICK)
    def flaky() -> None:
        calls.append(current_job().attempt)
        if len(calls) != 5:
            raise ConnectionError("down")

    try:
        # Given a job that fails three times (dead), is replayed, fails once, succeeds:
        job = await flaky.enqueue_async()
        await run_worker_until(app, lambda: all_ended(app, [job.id]))
        assert await job.state_async() is JobState.DEAD
        broker = await app.connected_broker()
        assert await broker.replay_dead("default", [job.id]) == 1
        await run_worker_until(app, lambda: all_ended(app, [job.id]))
        assert await job.state_async() is JobState.SUCCEEDED
        assert calls == [1, 2, 3, 1, 2]

        # then attempts 2 and 3 link to attempt 1 (the link carried on by each record),
        # and after the replay attempt 2 links to the new run's attempt 1.
        run1 = spans(exporter, "process default", job.id)[:3]
        run2 = spans(exporter, "process default", job.id)[3:]
        firsts = [_first_attempt_link(s) for s in [*run1, *run2]]
        assert firsts == [
            None,
            run1[0].context.span_id,
            run1[0].context.span_id,
            None,
            run2[0].context.span_id,
        ]
    finally:
        await app.aclose()


async def test_a_workflow_step_is_sent_from_its_parent_span_and_linked_to_it(
    url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = Offload(url)
    app.add_hook(Tracing(provider))

    @app.task(name="fetch")
    def fetch() -> int:
        return 3

    @app.task(name="double")
    def double(n: int) -> int:
        return n * 2

    try:
        with provider.get_tracer("web").start_as_current_span("request") as request:
            flow = await chain(fetch.call(), double.partial()).enqueue_async()
        first, second = flow.jobs
        await run_worker_until(app, lambda: all_ended(app, [first.id, second.id]))
        assert await second.result_async(timeout=5) == 6

        trace_id = request.get_span_context().trace_id
        [fetched] = spans(exporter, "process default", first.id)
        [sent] = spans(exporter, "send default", second.id)
        [doubled] = spans(exporter, "process default", second.id)
        assert sent.parent is not None and sent.parent.span_id == fetched.context.span_id
        [link] = sent.links
        assert link.context.span_id == fetched.context.span_id
        assert link.attributes is not None and link.attributes["offload.link"] == "parent"
        assert doubled.parent is not None and doubled.parent.span_id == sent.context.span_id
        assert {fetched.context.trace_id, sent.context.trace_id, doubled.context.trace_id} == {
            trace_id
        }
    finally:
        await app.aclose()


async def test_a_job_without_trace_context_still_runs_in_a_span_of_its_own(
    url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = Offload(url)
    app.add_hook(Tracing(provider))

    @app.task(name="legacy")
    def legacy() -> str:
        return "ran"

    try:
        # As an older producer (or another language) writes it: no `trace` field.
        envelope = Envelope(id=new_job_id(), task="legacy", created_at=app.clock.now())
        assert b"trace" not in encode_envelope(envelope)
        broker = await app.connected_broker()
        await broker.enqueue([(envelope, encode_envelope(envelope))])
        await run_worker_until(app, lambda: all_ended(app, [envelope.id]))
        assert await app.job(envelope.id).result_async(timeout=5) == "ran"
        [span] = spans(exporter, "process default", envelope.id)
        assert span.parent is None and not span.links
    finally:
        await app.aclose()


async def test_a_job_dead_after_requested_retries_has_an_error_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A requested retry's span is not an error, but the attempt that buries the job
    once its attempts ran out is: it was left unset, so a trace view showed a job that
    went to the dead-letter queue as fine."""
    app = Offload("memory://")
    app.add_hook(Tracing(provider))

    @app.task(name="asks", backoff=QUICK, max_attempts=2)
    def asks() -> None:
        raise Retry(delay=0, reason="rate limited")

    try:
        job = await asks.enqueue_async()
        await run_worker_until(app, lambda: all_ended(app, [job.id]))
        first, last = spans(exporter, "process default", job.id)
        assert first.attributes is not None and first.attributes["offload.outcome"] == "retried"
        assert first.status.status_code is StatusCode.UNSET
        assert last.attributes is not None and last.attributes["offload.outcome"] == "dead"
        assert last.status.status_code is StatusCode.ERROR
    finally:
        await app.aclose()


WORKER_APP = textwrap.dedent(
    """
    import os
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    from offload import Backoff, Offload, current_job

    provider = TracerProvider()
    out = open(os.environ["SPANS_FILE"], "a", buffering=1)
    provider.add_span_processor(SimpleSpanProcessor(
        ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\\n")
    ))
    trace.set_tracer_provider(provider)
    app = Offload()

    @app.task(name="report")
    def report(n: int) -> int:
        with trace.get_tracer("report").start_as_current_span("render"):
            return n + 1

    @app.task(name="flaky", backoff=Backoff(base_s=0.01, cap_s=0.01, jitter=False))
    def flaky() -> str:
        if current_job().attempt == 1:
            raise ConnectionError("down")
        return "ok"
    """
)


def test_a_worker_process_continues_the_producers_trace_and_links_retries(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    (tmp_path / "traced.py").write_text(WORKER_APP)
    spans_file = tmp_path / "spans.jsonl"
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    app = Offload(url)
    app.add_hook(Tracing(provider))
    env = {**os.environ, "OFFLOAD_URL": url, "PYTHONPATH": str(tmp_path)}
    env["SPANS_FILE"] = str(spans_file)
    worker = subprocess.Popen(
        [sys.executable, "-m", "offload", "worker", "traced:app", "--tracing", "--poll", "0.05"],
        env=env,
        cwd=tmp_path,
    )
    try:
        with provider.get_tracer("web").start_as_current_span("GET /report") as request:
            job = app.enqueue("report", 41)
        assert job.result(timeout=30) == 42
        [sent] = spans(exporter, "send default", job.id)
        retried = app.enqueue("flaky")
        assert retried.result(timeout=30) == "ok"

        def exported() -> list[dict[str, Any]]:
            lines = spans_file.read_text().splitlines() if spans_file.exists() else []
            return [json.loads(line) for line in lines]

        wait_for(lambda: len(exported()) == 4)

        def of(job_id: str) -> list[dict[str, Any]]:
            found = [s for s in exported() if s["attributes"].get("messaging.message.id") == job_id]
            return sorted(found, key=lambda s: s["attributes"]["offload.attempt"])

        # The retry's span in the worker process links to attempt 1's, read back from
        # the job's attempt history in the broker.
        first, second = of(retried.id)
        assert [link["attributes"]["offload.link"] for link in second["links"]] == [
            "send",
            "first_attempt",
        ]
        assert second["links"][1]["context"]["span_id"] == first["context"]["span_id"]
        assert second["links"][1]["context"]["trace_id"] == first["context"]["trace_id"]

        by_name = {s["name"]: s for s in exported() if s not in (first, second)}
        process, render = by_name["process default"], by_name["render"]
        trace_id = f"0x{request.get_span_context().trace_id:032x}"
        assert process["context"]["trace_id"] == trace_id
        assert process["parent_id"] == f"0x{sent.context.span_id:016x}"
        assert process["kind"] == "SpanKind.CONSUMER"
        assert process["attributes"]["messaging.message.id"] == job.id
        assert render["parent_id"] == process["context"]["span_id"]
    finally:
        stop_all([worker], timeout=20)
        app.close()
