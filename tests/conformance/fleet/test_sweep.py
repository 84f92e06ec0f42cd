"""Sweep: expiry of waiting jobs, purges after a result TTL or the retention, dead jobs kept."""

from __future__ import annotations

import pytest

from offload.brokers.base import Broker
from offload.codec import encode_value
from offload.envelope import JobState
from offload.testing import FakeClock

from ..helpers import (
    BOOM,
    enqueue_one,
    job_in_state,
    reserve_one,
    state_of,
)


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


async def test_sweep_purges_succeeded_job_after_result_ttl(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker, key="k")
    await broker.ack(await reserve_one(broker), encode_value(1), result_ttl_s=60)

    clock.advance(59)
    assert (await broker.sweep()).purged == 0
    assert await state_of(broker, job_id) is JobState.SUCCEEDED

    clock.advance(2)
    assert (await broker.sweep()).purged == 1
    assert await broker.get_job(job_id) is None
    assert await broker.find("k") is None
    assert (await broker.sweep()).purged == 0  # idempotent


async def test_succeeded_job_without_result_ttl_is_kept_for_retention(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker)
    await broker.ack(await reserve_one(broker), encode_value(1), result_ttl_s=None)

    clock.advance(broker.retention_s - 1)
    assert (await broker.sweep()).purged == 0
    assert await state_of(broker, job_id) is JobState.SUCCEEDED

    clock.advance(2)
    assert (await broker.sweep()).purged == 1
    assert await broker.get_job(job_id) is None


async def test_sweep_keeps_dead_jobs_past_retention(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker)
    await broker.bury(await reserve_one(broker), error=BOOM)

    clock.advance(broker.retention_s * 3)
    report = await broker.sweep()

    assert report.purged == 0
    assert await state_of(broker, job_id) is JobState.DEAD


async def test_job_running_past_expiry_expires_when_it_comes_back(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker, expires_at=clock.now() + 10)
    lease = await reserve_one(broker)
    clock.advance(11)
    assert (await broker.sweep()).expired == 0  # running jobs never expire
    await broker.retry(lease, at=clock.now(), error=BOOM)
    report = await broker.sweep()
    assert report.expired == 1
    assert await state_of(broker, job_id) is JobState.EXPIRED


async def test_counts_lists_every_known_queue_even_when_emptied(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker, queue="gone")
    await broker.cancel(job_id)
    clock.advance(broker.retention_s + 1)
    assert (await broker.sweep()).purged == 1
    stats = await broker.counts()
    assert "gone" in stats
    assert sum(stats["gone"].states.values()) == 0
