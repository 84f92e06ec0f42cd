"""Leases: `extend`, lapse and redelivery, stale tokens, `release`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from offload.brokers.base import Broker, Lease
from offload.codec import encode_value
from offload.envelope import JobState
from offload.errors import LeaseLost
from offload.testing import FakeClock

from .helpers import BOOM, approx_time, enqueue_one, make_job, reserve_one, state_of

#: A finishing operation called with a lease, by name.
Finish = Callable[[Broker, Lease, FakeClock], Awaitable[None]]


async def _ack(broker: Broker, lease: Lease, clock: FakeClock) -> None:
    await broker.ack(lease, encode_value(1), result_ttl_s=None)


async def _retry(broker: Broker, lease: Lease, clock: FakeClock) -> None:
    await broker.retry(lease, at=clock.now() + 10, error=BOOM)


async def _bury(broker: Broker, lease: Lease, clock: FakeClock) -> None:
    await broker.bury(lease, error=BOOM)


FINISHES = pytest.mark.parametrize("finish", [_ack, _retry, _bury], ids=["ack", "retry", "bury"])


async def redelivered(broker: Broker, clock: FakeClock) -> tuple[Lease, Lease]:
    """A job leased by w1 for 30 s, lapsed, and reserved again by w2: (old, new)."""
    await enqueue_one(broker)
    old = await reserve_one(broker, worker_id="w1", lease_s=30)
    clock.advance(31)
    new = await reserve_one(broker, worker_id="w2", lease_s=30)
    assert new.job_id == old.job_id
    return old, new


async def test_extend_pushes_deadline_and_returns_true(broker: Broker, clock: FakeClock) -> None:
    await enqueue_one(broker)
    lease = await reserve_one(broker, lease_s=30)
    clock.advance(20)

    assert await broker.extend([lease], 30) == [True]

    info = await broker.get_job(lease.job_id)
    assert info is not None
    assert info.lease_deadline == approx_time(clock.now() + 30)
    clock.advance(25)  # past the first deadline, before the new one
    assert await broker.reserve(["default"], worker_id="w2", lease_s=30, limit=1) == []
    assert await state_of(broker, lease.job_id) is JobState.RUNNING
    await broker.ack(lease, None, result_ttl_s=None)


async def test_extend_after_lapse_keeps_a_lease_nobody_took_back(
    broker: Broker, clock: FakeClock
) -> None:
    await enqueue_one(broker)
    lease = await reserve_one(broker, lease_s=30)
    clock.advance(31)  # lapsed, but no reserve has taken the job back

    assert await broker.extend([lease], 30) == [True]
    clock.advance(25)  # past the first deadline, before the new one
    assert await broker.reserve(["default"], worker_id="w2", lease_s=30, limit=1) == []
    assert await state_of(broker, lease.job_id) is JobState.RUNNING


async def test_extend_after_lapse_and_redelivery_returns_false(
    broker: Broker, clock: FakeClock
) -> None:
    await enqueue_one(broker)
    lease = await reserve_one(broker, lease_s=30)
    clock.advance(31)
    await broker.reserve(["default"], worker_id="w2", lease_s=30, limit=1)

    assert await broker.extend([lease], 30) == [False]


async def test_extend_answers_each_lease_in_order(broker: Broker, clock: FakeClock) -> None:
    old, new = await redelivered(broker, clock)

    assert await broker.extend([old, new], 30) == [False, True]


async def test_extend_finished_lease_returns_false(broker: Broker, clock: FakeClock) -> None:
    await enqueue_one(broker)
    lease = await reserve_one(broker)
    await broker.ack(lease, None, result_ttl_s=None)

    assert await broker.extend([lease], 30) == [False]
    info = await broker.get_job(lease.job_id)
    assert info is not None
    assert info.state is JobState.SUCCEEDED


async def test_lease_expiry_redelivers_job(broker: Broker, clock: FakeClock) -> None:
    old, new = await redelivered(broker, clock)

    assert new.attempt == 2
    assert new.token != old.token
    assert new.deadline == approx_time(clock.now() + 30)
    info = await broker.get_job(new.job_id)
    assert info is not None
    assert info.state is JobState.RUNNING
    assert info.attempt == 2
    assert info.worker_id == "w2"
    assert info.error is not None
    assert info.error.type == "LeaseExpired"


async def test_lease_is_not_redelivered_before_its_deadline(
    broker: Broker, clock: FakeClock
) -> None:
    await enqueue_one(broker)
    lease = await reserve_one(broker, worker_id="w1", lease_s=30)
    clock.advance(29)

    assert await broker.reserve(["default"], worker_id="w2", lease_s=30, limit=1) == []
    info = await broker.get_job(lease.job_id)
    assert info is not None
    assert (info.state, info.worker_id, info.attempt) == (JobState.RUNNING, "w1", 1)


@FINISHES
async def test_stale_token_finish_raises_lease_lost(
    broker: Broker, clock: FakeClock, finish: Finish
) -> None:
    old, new = await redelivered(broker, clock)

    with pytest.raises(LeaseLost):
        await finish(broker, old, clock)

    info = await broker.get_job(new.job_id)
    assert info is not None
    assert (info.state, info.worker_id, info.attempt) == (JobState.RUNNING, "w2", 2)
    await broker.ack(new, None, result_ttl_s=None)  # the new lease is untouched
    assert await state_of(broker, new.job_id) is JobState.SUCCEEDED


@FINISHES
async def test_finish_with_forged_token_raises_lease_lost(
    broker: Broker, clock: FakeClock, finish: Finish
) -> None:
    await enqueue_one(broker)
    lease = await reserve_one(broker)

    with pytest.raises(LeaseLost):
        await finish(broker, replace(lease, token="not-the-token"), clock)

    assert await state_of(broker, lease.job_id) is JobState.RUNNING


@FINISHES
async def test_finish_of_unknown_job_raises_lease_lost(
    broker: Broker, clock: FakeClock, finish: Finish
) -> None:
    env, _ = make_job(clock)
    lease = Lease(env.id, "token", "default", 1, clock.now() + 30, b"{}")

    with pytest.raises(LeaseLost):
        await finish(broker, lease, clock)


@FINISHES
async def test_finish_of_already_finished_lease_raises_lease_lost(
    broker: Broker, clock: FakeClock, finish: Finish
) -> None:
    await enqueue_one(broker)
    lease = await reserve_one(broker)
    await broker.bury(lease, error=BOOM)

    with pytest.raises(LeaseLost):
        await finish(broker, lease, clock)

    assert await state_of(broker, lease.job_id) is JobState.DEAD


async def test_release_returns_job_to_queued_without_counting_attempt(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)

    await broker.release([lease])

    info = await broker.get_job(job_id)
    assert info is not None
    assert (info.state, info.attempt) == (JobState.QUEUED, 0)
    again = await reserve_one(broker, worker_id="w2")
    assert (again.job_id, again.attempt) == (job_id, 1)
    assert again.token != lease.token


async def test_released_job_keeps_its_place(broker: Broker, clock: FakeClock) -> None:
    first, second, third = [await enqueue_one(broker) for _ in range(3)]
    leases = await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=2)
    assert [lease.job_id for lease in leases] == [first, second]
    clock.advance(5)
    late = await enqueue_one(broker)

    await broker.release(leases)

    again = await broker.reserve(["default"], worker_id="w2", lease_s=30, limit=10)
    assert [lease.job_id for lease in again] == [first, second, third, late]
    assert [lease.attempt for lease in again] == [1, 1, 1, 1]


async def test_release_ignores_stale_leases(broker: Broker, clock: FakeClock) -> None:
    old, new = await redelivered(broker, clock)

    await broker.release([old])

    info = await broker.get_job(new.job_id)
    assert info is not None
    assert (info.state, info.worker_id, info.attempt) == (JobState.RUNNING, "w2", 2)
    await broker.ack(new, None, result_ttl_s=None)


async def test_release_ignores_finished_leases(broker: Broker, clock: FakeClock) -> None:
    await enqueue_one(broker)
    lease = await reserve_one(broker)
    await broker.ack(lease, None, result_ttl_s=None)

    await broker.release([lease])

    assert await state_of(broker, lease.job_id) is JobState.SUCCEEDED
    assert await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=1) == []


async def test_released_lease_can_no_longer_ack(broker: Broker, clock: FakeClock) -> None:
    await enqueue_one(broker)
    lease = await reserve_one(broker)
    await broker.release([lease])

    with pytest.raises(LeaseLost):
        await broker.ack(lease, None, result_ttl_s=None)

    assert await state_of(broker, lease.job_id) is JobState.QUEUED
