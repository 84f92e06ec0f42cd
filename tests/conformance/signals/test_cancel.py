"""Cancel: a waiting job never runs, a running one is flagged, a finished one stays."""

from __future__ import annotations

import pytest

from offload.brokers.base import Broker
from offload.envelope import JobState, new_job_id
from offload.testing import FakeClock

from ..helpers import (
    enqueue_one,
    job_in_state,
    reserve_one,
    state_of,
)


async def test_cancel_queued_job_means_it_is_never_reserved(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker)

    assert await broker.cancel(job_id) is True

    assert await state_of(broker, job_id) is JobState.CANCELLED
    assert await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=10) == []
    assert (await broker.counts())["default"].states[JobState.CANCELLED] == 1


async def test_cancel_scheduled_job_means_it_is_never_reserved(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker, not_before=clock.now() + 60)

    assert await broker.cancel(job_id) is True

    assert await state_of(broker, job_id) is JobState.CANCELLED
    clock.advance(61)
    assert await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=10) == []
    assert await state_of(broker, job_id) is JobState.CANCELLED


async def test_cancel_running_job_flags_it_and_keeps_it_running(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)
    before = await broker.get_job(job_id)
    assert before is not None and before.cancel_requested is False

    assert await broker.cancel(job_id) is True

    info = await broker.get_job(job_id)
    assert info is not None
    assert (info.state, info.cancel_requested) == (JobState.RUNNING, True)
    assert await broker.extend([lease], 30) == [True]
    await broker.ack(lease, None, result_ttl_s=None)
    assert await state_of(broker, job_id) is JobState.SUCCEEDED


@pytest.mark.parametrize(
    "state", [JobState.SUCCEEDED, JobState.DEAD, JobState.EXPIRED, JobState.CANCELLED], ids=str
)
async def test_cancel_finished_job_returns_false(
    broker: Broker, clock: FakeClock, state: JobState
) -> None:
    job_id = await job_in_state(broker, clock, state, "q")

    assert await broker.cancel(job_id) is False

    info = await broker.get_job(job_id)
    assert info is not None
    assert (info.state, info.cancel_requested) == (state, False)


async def test_cancel_unknown_job_returns_false(broker: Broker) -> None:
    assert await broker.cancel(new_job_id()) is False
