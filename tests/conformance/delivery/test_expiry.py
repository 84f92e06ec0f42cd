"""Expiry at reservation: a job past its `expires_at` is never leased (it is `expired`)."""

from __future__ import annotations

from offload.brokers.base import Broker
from offload.brokers.roles import Delivery
from offload.envelope import JobState
from offload.testing import FakeClock

from ..helpers import (
    enqueue_one,
    reserve_one,
    state_of,
)


async def test_job_past_expires_at_is_never_leased(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker, expires_at=clock.now() + 10)
    clock.advance(11)

    assert await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=10) == []

    info = await broker.get_job(job_id)
    assert info is not None
    assert info.state is JobState.EXPIRED
    assert info.attempt == 0
    assert (await broker.counts())["default"].states[JobState.EXPIRED] == 1


async def test_job_before_expires_at_is_leased(delivery: Delivery, clock: FakeClock) -> None:
    job_id = await enqueue_one(delivery, expires_at=clock.now() + 10)
    clock.advance(9)

    lease = await reserve_one(delivery)

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
