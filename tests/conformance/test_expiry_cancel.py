"""Jobs that must not run: `expires_at` (at reserve time and by `sweep`) and `cancel`."""

from __future__ import annotations

import pytest

from offload.brokers.base import Broker
from offload.envelope import JobState, new_job_id
from offload.testing import FakeClock

from .helpers import enqueue_one, job_in_state, reserve_one, state_of


async def test_job_past_expires_at_is_never_leased(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker, expires_at=clock.now() + 10)
    clock.advance(11)

    assert await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=10) == []

    info = await broker.get_job(job_id)
    assert info is not None
    assert info.state is JobState.EXPIRED
    assert info.attempt == 0
    assert (await broker.counts())["default"].states[JobState.EXPIRED] == 1


async def test_job_before_expires_at_is_leased(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker, expires_at=clock.now() + 10)
    clock.advance(9)

    lease = await reserve_one(broker)

    assert lease.job_id == job_id


async def test_reserve_skips_expired_job_and_leases_the_next(
    broker: Broker, clock: FakeClock
) -> None:
    stale = await enqueue_one(broker, priority=5, expires_at=clock.now() + 10)
    fresh = await enqueue_one(broker)
    clock.advance(11)

    lease = await reserve_one(broker)

    assert lease.job_id == fresh
    assert await state_of(broker, stale) is JobState.EXPIRED


async def test_reserve_expires_overdue_jobs_beyond_its_limit(
    broker: Broker, clock: FakeClock
) -> None:
    urgent = await enqueue_one(broker, priority=5)
    stale = await enqueue_one(broker, expires_at=clock.now() + 10)
    clock.advance(11)

    lease = await reserve_one(broker)

    assert lease.job_id == urgent
    assert await state_of(broker, stale) is JobState.EXPIRED


async def test_reserve_expires_scheduled_job_past_expires_at(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker, not_before=clock.now() + 60, expires_at=clock.now() + 10)
    clock.advance(11)

    assert await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=1) == []

    assert await state_of(broker, job_id) is JobState.EXPIRED


async def test_scheduled_job_that_expires_before_due_never_runs(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker, not_before=clock.now() + 60, expires_at=clock.now() + 10)
    clock.advance(61)

    assert await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=1) == []

    assert await state_of(broker, job_id) is JobState.EXPIRED


async def test_sweep_expires_queued_job_past_expires_at(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker, expires_at=clock.now() + 10)
    keeper = await enqueue_one(broker, expires_at=clock.now() + 100)
    clock.advance(11)

    report = await broker.sweep()

    assert report.expired == 1
    info = await broker.get_job(job_id)
    assert info is not None
    assert info.state is JobState.EXPIRED
    assert await state_of(broker, keeper) is JobState.QUEUED
    assert (await broker.sweep()).expired == 0  # idempotent


async def test_sweep_expires_scheduled_job_past_expires_at(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker, not_before=clock.now() + 60, expires_at=clock.now() + 10)
    clock.advance(11)

    assert (await broker.sweep()).expired == 1

    assert await state_of(broker, job_id) is JobState.EXPIRED


async def test_sweep_does_not_expire_running_job(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker, expires_at=clock.now() + 10)
    lease = await reserve_one(broker, lease_s=60)
    clock.advance(11)

    assert (await broker.sweep()).expired == 0

    assert await state_of(broker, job_id) is JobState.RUNNING
    await broker.ack(lease, None, result_ttl_s=None)
    assert await state_of(broker, job_id) is JobState.SUCCEEDED


@pytest.mark.parametrize("state", [JobState.EXPIRED, JobState.CANCELLED], ids=str)
async def test_sweep_purges_job_after_retention(
    broker: Broker, clock: FakeClock, state: JobState
) -> None:
    job_id = await job_in_state(broker, clock, state, "q")

    clock.advance(broker.retention_s - 10)
    assert (await broker.sweep()).purged == 0
    assert await state_of(broker, job_id) is state

    clock.advance(20)
    assert (await broker.sweep()).purged == 1
    assert await broker.get_job(job_id) is None


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
