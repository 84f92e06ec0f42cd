"""Finishing a lease: `retry`, `bury`, `ack`, and how long finished jobs are kept."""

from __future__ import annotations

from offload.brokers.base import Broker
from offload.codec import encode_value
from offload.envelope import ErrorInfo, JobState
from offload.testing import FakeClock

from .helpers import BOOM, approx_time, enqueue_one, reserve_one, state_of


async def test_retry_schedules_job_until_at_and_records_error(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)
    at = clock.now() + 60

    await broker.retry(lease, at=at, error=BOOM)

    info = await broker.get_job(job_id)
    assert info is not None
    assert info.state is JobState.SCHEDULED
    assert info.due_at == approx_time(at)
    assert info.error == BOOM
    assert info.attempt == 1


async def test_retried_job_is_reserved_again_once_clock_reaches_at(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)
    await broker.retry(lease, at=clock.now() + 60, error=BOOM)

    clock.advance(59)
    assert await broker.reserve(["default"], worker_id="w2", lease_s=30, limit=1) == []
    clock.advance(1)
    again = await reserve_one(broker, worker_id="w2")

    assert (again.job_id, again.attempt) == (job_id, 2)
    assert again.token != lease.token
    await broker.ack(again, None, result_ttl_s=None)
    assert await state_of(broker, job_id) is JobState.SUCCEEDED


async def test_retry_at_now_is_ready_at_once(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)

    await broker.retry(lease, at=clock.now(), error=BOOM)

    again = await reserve_one(broker)
    assert (again.job_id, again.attempt) == (job_id, 2)


async def test_retry_records_the_latest_error(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker)
    await broker.retry(await reserve_one(broker), at=clock.now(), error=BOOM)
    second = ErrorInfo("KeyError", "'missing'", "tb 2")

    await broker.retry(await reserve_one(broker), at=clock.now() + 5, error=second)

    info = await broker.get_job(job_id)
    assert info is not None
    assert (info.error, info.attempt) == (second, 2)


async def test_bury_moves_job_to_dead_with_error(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)
    clock.advance(4)

    await broker.bury(lease, error=BOOM)

    info = await broker.get_job(job_id)
    assert info is not None
    assert info.state is JobState.DEAD
    assert info.error == BOOM
    assert info.finished_at == approx_time(clock.now())
    assert (await broker.counts())["default"].states[JobState.DEAD] == 1
    clock.advance(3600)
    assert await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=1) == []


async def test_ack_stores_result_and_finished_at(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)
    clock.advance(7)
    result = encode_value({"sent": 3, "to": ["ä@example.org"]})

    await broker.ack(lease, result, result_ttl_s=3600)

    info = await broker.get_job(job_id)
    assert info is not None
    assert info.state is JobState.SUCCEEDED
    assert info.result == result
    assert info.result_value() == {"sent": 3, "to": ["ä@example.org"]}
    assert info.finished_at == approx_time(clock.now())
    assert info.attempt == 1


async def test_ack_without_result_stores_none(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker)

    await broker.ack(await reserve_one(broker), None, result_ttl_s=None)

    info = await broker.get_job(job_id)
    assert info is not None
    assert (info.state, info.result) == (JobState.SUCCEEDED, None)


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
