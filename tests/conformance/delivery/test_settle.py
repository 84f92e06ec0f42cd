"""Settling a lease (`settle_many` and its one-at-a-time shorthands): ack, retry, bury,
defer and cancel, each standing alone in a batch."""

from __future__ import annotations

import pytest

from offload.brokers.base import Broker, Settlement
from offload.brokers.roles import Delivery, Ending
from offload.codec import encode_value
from offload.envelope import ErrorInfo, JobState
from offload.errors import LeaseLost
from offload.testing import FakeClock

from ..helpers import (
    BOOM,
    LEASE_S,
    approx_time,
    enqueue_one,
    reserve_one,
    state_of,
)


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


async def test_retry_at_now_is_ready_at_once(delivery: Delivery, clock: FakeClock) -> None:
    job_id = await enqueue_one(delivery)
    lease = await reserve_one(delivery)

    await delivery.retry(lease, at=clock.now(), error=BOOM)

    again = await reserve_one(delivery)
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


async def test_defer_schedules_without_counting_the_attempt(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)
    assert lease.attempt == 1

    await broker.defer(lease, at=clock.now() + 5)

    info = await broker.get_job(job_id)
    assert info is not None
    assert info.state is JobState.SCHEDULED
    assert info.attempt == 0
    assert info.due_at == approx_time(clock.now() + 5)
    assert info.error is None
    assert await broker.next_due(["default"]) == approx_time(clock.now() + 5)
    assert await broker.reserve(["default"], worker_id="w", lease_s=30, limit=1) == []
    clock.advance(5)
    again = await reserve_one(broker)
    assert (again.job_id, again.attempt) == (job_id, 1)


async def test_defer_keeps_attempts_of_earlier_failures(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker)
    first = await reserve_one(broker)
    await broker.retry(first, at=clock.now(), error=BOOM)
    second = await reserve_one(broker)
    assert second.attempt == 2

    await broker.defer(second, at=clock.now())

    third = await reserve_one(broker)
    assert (third.job_id, third.attempt) == (job_id, 2)
    info = await broker.get_job(job_id)
    assert info is not None and info.error == BOOM  # the last real failure is kept


async def test_defer_with_stale_lease_raises_lease_lost(broker: Broker, clock: FakeClock) -> None:
    await enqueue_one(broker)
    old = await reserve_one(broker, worker_id="w1", lease_s=30)
    clock.advance(31)
    new = await reserve_one(broker, worker_id="w2", lease_s=30)

    with pytest.raises(LeaseLost):
        await broker.defer(old, at=clock.now() + 10)
    assert await state_of(broker, new.job_id) is JobState.RUNNING
    await broker.defer(new, at=clock.now() + 10)
    with pytest.raises(LeaseLost):
        await broker.defer(new, at=clock.now() + 10)  # already deferred


async def test_settle_many_settles_each_lease_on_its_own(broker: Broker, clock: FakeClock) -> None:
    ids = [await enqueue_one(broker) for _ in range(3)]
    [short] = await broker.reserve(["default"], worker_id="w", lease_s=5, limit=1)
    longer = await broker.reserve(["default"], worker_id="w", lease_s=60, limit=2)
    clock.advance(6)  # the first lease lapses and another worker takes that job back
    [retaken] = await broker.reserve(["default"], worker_id="w2", lease_s=60, limit=1)
    assert retaken.job_id == short.job_id == ids[0]
    acks = [Settlement.ack(lease, encode_value(i)) for i, lease in enumerate([short, *longer])]
    assert await broker.settle_many(acks) == [False, True, True]
    assert [await state_of(broker, i) for i in ids] == [
        JobState.RUNNING,
        JobState.SUCCEEDED,
        JobState.SUCCEEDED,
    ]
    info = await broker.get_job(ids[1])
    assert info is not None and info.result_value() == 1


async def test_settle_many_tells_a_stale_lease_from_the_current_one_of_the_same_job(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker)
    [stale] = await broker.reserve(["default"], worker_id="w", lease_s=5, limit=1)
    clock.advance(6)
    [current] = await broker.reserve(["default"], worker_id="w", lease_s=60, limit=1)
    assert current.job_id == stale.job_id == job_id
    late, on_time = encode_value("late"), encode_value("on time")
    acks = [Settlement.ack(stale, late), Settlement.ack(current, on_time)]
    assert await broker.settle_many(acks) == [False, True]
    info = await broker.get_job(job_id)
    assert info is not None and info.result_value() == "on time"


async def test_cancel_running_with_a_stale_lease_raises_lease_lost(delivery: Delivery) -> None:
    await enqueue_one(delivery)
    lease = await reserve_one(delivery)
    await delivery.ack(lease, None, result_ttl_s=None)
    with pytest.raises(LeaseLost):
        await delivery.cancel_running(
            lease, error=ErrorInfo("Cancelled", "cancelled while running")
        )


async def test_settle_many_of_nothing_is_empty(delivery: Delivery) -> None:
    assert await delivery.settle_many([]) == []


async def test_settle_many_applies_every_ending_in_one_batch(
    delivery: Delivery, clock: FakeClock
) -> None:
    # Given five running jobs, one per way a lease can end,
    ids = [await enqueue_one(delivery, task=ending.value) for ending in Ending]
    leases = await delivery.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=5)
    by_task = {lease.job_id: lease for lease in leases}
    ack, retry, bury, defer, cancel = (by_task[i] for i in ids)
    now = clock.now()
    # when one call settles them all,
    held = await delivery.settle_many(
        [
            Settlement.ack(ack, encode_value("done")),
            Settlement.retry(retry, at=now + 20, error=BOOM),
            Settlement.bury(bury, error=BOOM),
            Settlement.defer(defer, at=now + 10),
            Settlement.cancel(cancel, error=BOOM),
        ]
    )
    # then each took effect: only the deferred and the retried job come back, when due,
    # the deferred one without its attempt counted and the retried one with it.
    assert held == [True] * 5
    assert await delivery.next_due(["default"]) == approx_time(now + 10)
    clock.advance(10)
    [again] = await delivery.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=5)
    assert (again.job_id, again.attempt) == (defer.job_id, 1)
    clock.advance(10)
    [again] = await delivery.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=5)
    assert (again.job_id, again.attempt) == (retry.job_id, 2)
    clock.advance(LEASE_S + 1)  # none of the others is redelivered by a lapse either
    lapsed = await delivery.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=5)
    assert {lease.job_id for lease in lapsed} == {defer.job_id, retry.job_id}
    assert await delivery.settle_many([Settlement.ack(ack, None)]) == [False]
