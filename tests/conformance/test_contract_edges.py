"""Edges of the contract found by differential testing of the brokers against each other."""

from __future__ import annotations

from offload.brokers.base import Ack, Broker
from offload.codec import encode_value
from offload.envelope import JobState
from offload.testing import FakeClock

from .helpers import BOOM, enqueue_one, make_job, reserve_one, state_of


async def test_next_due_is_earliest_scheduled_job_of_the_queues(
    broker: Broker, clock: FakeClock
) -> None:
    assert await broker.next_due(["default"]) is None
    now = clock.now()
    await enqueue_one(broker, not_before=now + 30)
    await enqueue_one(broker, not_before=now + 10)
    await enqueue_one(broker, queue="other", not_before=now + 5)
    await enqueue_one(broker)  # ready now: not scheduled
    assert await broker.next_due(["default"]) == now + 10
    assert await broker.next_due(["default", "other"]) == now + 5
    assert await broker.next_due(["empty"]) is None


async def test_next_due_counts_retries(broker: Broker, clock: FakeClock) -> None:
    await enqueue_one(broker)
    lease = await reserve_one(broker)
    await broker.retry(lease, at=clock.now() + 7, error=BOOM)
    assert await broker.next_due(["default"]) == clock.now() + 7


async def test_same_envelope_sent_twice_is_stored_once(broker: Broker, clock: FakeClock) -> None:
    envelope, payload = make_job(clock)
    [first] = await broker.enqueue([(envelope, payload)])
    lease = await reserve_one(broker)
    [again] = await broker.enqueue([(envelope, payload)])
    assert (first.created, again.created, again.id) == (True, False, envelope.id)
    info = await broker.get_job(envelope.id)
    assert info is not None and info.state is JobState.RUNNING
    await broker.ack(lease, None, result_ttl_s=None)  # the lease still holds


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


async def test_ack_many_settles_each_lease_on_its_own(broker: Broker, clock: FakeClock) -> None:
    ids = [await enqueue_one(broker) for _ in range(3)]
    [short] = await broker.reserve(["default"], worker_id="w", lease_s=5, limit=1)
    longer = await broker.reserve(["default"], worker_id="w", lease_s=60, limit=2)
    clock.advance(6)  # the first lease lapses and another worker takes that job back
    [retaken] = await broker.reserve(["default"], worker_id="w2", lease_s=60, limit=1)
    assert retaken.job_id == short.job_id == ids[0]
    acks = [Ack(lease, encode_value(i), None) for i, lease in enumerate([short, *longer])]
    assert await broker.ack_many(acks) == [False, True, True]
    assert [await state_of(broker, i) for i in ids] == [
        JobState.RUNNING,
        JobState.SUCCEEDED,
        JobState.SUCCEEDED,
    ]
    info = await broker.get_job(ids[1])
    assert info is not None and info.result_value() == 1


async def test_ack_many_tells_a_stale_lease_from_the_current_one_of_the_same_job(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker)
    [stale] = await broker.reserve(["default"], worker_id="w", lease_s=5, limit=1)
    clock.advance(6)
    [current] = await broker.reserve(["default"], worker_id="w", lease_s=60, limit=1)
    assert current.job_id == stale.job_id == job_id
    acks = [Ack(stale, encode_value("late"), None), Ack(current, encode_value("on time"), None)]
    assert await broker.ack_many(acks) == [False, True]
    info = await broker.get_job(job_id)
    assert info is not None and info.result_value() == "on time"
