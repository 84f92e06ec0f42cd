"""The producer, the workflow engine and the option records stand on their own: each
works from what it is given (no `Offload`), and each option is declared once."""

from __future__ import annotations

import datetime as dt

import pytest

from offload import ConfigurationError, JobState, Offload, Worker, chain
from offload.options import (
    Call,
    EnqueueOptions,
    JobOptions,
    Overrides,
    TaskDeclaration,
    make_overrides,
)
from offload.producer import Producer
from offload.testing import FakeClock
from offload.workflow_engine import WorkflowEngine


async def test_a_producer_builds_and_enqueues_without_an_app(clock: FakeClock) -> None:
    producer = Producer(
        "memory://", clock=clock, tasks={}, default_queue="mail", max_queue_depth=None
    )
    try:
        [result] = await producer.enqueue_async(
            "mail.send", [Call(("ada@example.com",))], make_overrides(delay=60, priority=3)
        )
        assert result.created
        info = await (await producer.connected_broker()).get_job(result.id)
        assert info is not None
        assert (info.state, info.queue, info.priority) == (JobState.SCHEDULED, "mail", 3)
        envelope = info.envelope()
        assert envelope is not None
        assert (envelope.task, envelope.args) == ("mail.send", ["ada@example.com"])
        assert envelope.not_before == clock.now() + 60
    finally:
        await producer.aclose()


async def test_the_workflow_engine_stops_what_follows_a_cancelled_step_without_an_app(
    clock: FakeClock,
) -> None:
    app = Offload("memory://", clock=clock)

    @app.task
    def first() -> int:
        return 1

    @app.task
    def second(x: int) -> int:
        return x + 1

    flow = await chain(first.options(delay=60).call(), second.partial()).enqueue_async()
    broker = await app.connected_broker()
    assert await broker.cancel(flow.jobs[0].id)  # the broker alone: nothing follows yet
    assert await broker.get_job(flow.jobs[1].id) is None
    engine = WorkflowEngine(app.producer, broker, clock)
    await engine.cancelled(flow.jobs[0].id)
    assert await flow.jobs[1].state_async() is JobState.CANCELLED
    # Both ends stay in the outbox for a worker, which counts them (metrics) and runs the
    # follow-ups again: idempotent, the stopped step is enqueued and cancelled once.
    ended = {entry.job_id for entry in await broker.outbox()}
    assert ended == {flow.jobs[0].id, flow.jobs[1].id}
    assert await Worker(app).drain_outbox() == 2
    assert await broker.outbox() == []
    assert await flow.jobs[1].state_async() is JobState.CANCELLED
    await app.aclose()


def test_each_option_is_declared_once() -> None:
    shared = set(JobOptions.__optional_keys__)
    task_only = set(TaskDeclaration.__optional_keys__) - shared
    enqueue_only = set(EnqueueOptions.__optional_keys__) - shared
    assert task_only.isdisjoint(enqueue_only)
    assert shared == {"queue", "priority", "max_attempts", "backoff", "timeout", "expires"}
    assert enqueue_only == {"delay", "at", "key"}


def test_an_unknown_option_is_a_type_error_naming_it(clock: FakeClock) -> None:
    app = Offload("memory://", clock=clock)

    @app.task
    def noop() -> None: ...

    with pytest.raises(TypeError, match="'retries'"):
        app.task(retries=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="'rate_limit'"):
        noop.options(rate_limit="1/s")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'delay_s'"):
        app.options("noop", delay_s=1)  # type: ignore[call-arg]


def test_a_task_refuses_a_datetime_expiry_that_only_an_enqueue_takes(clock: FakeClock) -> None:
    app = Offload("memory://", clock=clock)
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(ConfigurationError, match="expires must be seconds or a timedelta"):
        app.task(expires=when)
    assert make_overrides(expires=when).expires_at == when.timestamp()
    assert make_overrides() == Overrides()
