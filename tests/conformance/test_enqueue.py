"""`Broker.enqueue`: bulk insert, idempotency keys, delays, payload storage."""

from __future__ import annotations

import pytest

from offload.brokers.base import Broker, EnqueueResult
from offload.codec import encode_envelope
from offload.envelope import Envelope, JobState, new_job_id
from offload.testing import FakeClock

from .helpers import (
    approx_time,
    enqueue_one,
    job_in_state,
    make_job,
    reserve_one,
    state_of,
)


async def test_enqueue_stores_every_job_of_a_bulk_call(broker: Broker, clock: FakeClock) -> None:
    jobs = [make_job(clock, f"task{i}") for i in range(5)]

    results = await broker.enqueue(jobs)

    assert results == [EnqueueResult(env.id, True) for env, _ in jobs]
    for env, _ in jobs:
        info = await broker.get_job(env.id)
        assert info is not None
        assert (info.task, info.state) == (env.task, JobState.QUEUED)
    assert (await broker.counts())["default"].states[JobState.QUEUED] == 5


async def test_enqueue_of_no_jobs_returns_empty_list(broker: Broker) -> None:
    assert await broker.enqueue([]) == []
    assert await broker.queues() == []


async def test_enqueue_existing_key_returns_existing_id_not_created(
    broker: Broker, clock: FakeClock
) -> None:
    first = await enqueue_one(broker, key="k1")
    env, payload = make_job(clock, key="k1")

    assert await broker.enqueue([(env, payload)]) == [EnqueueResult(first, False)]

    assert await broker.get_job(env.id) is None
    assert (await broker.counts())["default"].states[JobState.QUEUED] == 1


async def test_enqueue_duplicate_keys_within_one_call_resolve_to_first(
    broker: Broker, clock: FakeClock
) -> None:
    a, b, c, d = (make_job(clock, key=key) for key in ("k", "k", None, "other"))

    results = await broker.enqueue([a, b, c, d])

    assert results == [
        EnqueueResult(a[0].id, True),
        EnqueueResult(a[0].id, False),
        EnqueueResult(c[0].id, True),
        EnqueueResult(d[0].id, True),
    ]
    assert await broker.get_job(b[0].id) is None
    found = await broker.find("k")
    assert found is not None and found.id == a[0].id


async def test_enqueue_keyless_jobs_never_collide(broker: Broker, clock: FakeClock) -> None:
    results = await broker.enqueue([make_job(clock), make_job(clock)])

    assert [r.created for r in results] == [True, True]
    assert results[0].id != results[1].id


@pytest.mark.parametrize("state", list(JobState), ids=str)
async def test_key_is_held_while_job_exists_in_any_state(
    broker: Broker, clock: FakeClock, state: JobState
) -> None:
    job_id = await job_in_state(broker, clock, state, "q", key="once")
    env, payload = make_job(clock, queue="q", key="once")

    assert await broker.enqueue([(env, payload)]) == [EnqueueResult(job_id, False)]

    assert await state_of(broker, job_id) is state
    assert await broker.get_job(env.id) is None


async def test_key_is_freed_after_dead_job_is_purged(broker: Broker, clock: FakeClock) -> None:
    old = await job_in_state(broker, clock, JobState.DEAD, "default", key="k")
    assert await broker.purge_dead() == 1

    new = await enqueue_one(broker, key="k")

    assert new != old
    found = await broker.find("k")
    assert found is not None and found.id == new


async def test_key_is_freed_after_sweep_purges_succeeded_job(
    broker: Broker, clock: FakeClock
) -> None:
    old = await enqueue_one(broker, key="k")
    lease = await reserve_one(broker)
    await broker.ack(lease, None, result_ttl_s=10)
    clock.advance(11)
    assert (await broker.sweep()).purged == 1

    new = await enqueue_one(broker, key="k")

    assert new != old
    found = await broker.find("k")
    assert found is not None and found.id == new


async def test_enqueue_with_future_not_before_is_scheduled(
    broker: Broker, clock: FakeClock
) -> None:
    due = clock.now() + 60
    job_id = await enqueue_one(broker, not_before=due)

    info = await broker.get_job(job_id)
    assert info is not None
    assert info.state is JobState.SCHEDULED
    assert info.due_at == approx_time(due)
    assert await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=10) == []


@pytest.mark.parametrize("offset_s", [-60.0, 0.0], ids=["past", "now"])
async def test_enqueue_with_not_before_not_in_future_is_queued(
    broker: Broker, clock: FakeClock, offset_s: float
) -> None:
    job_id = await enqueue_one(broker, not_before=clock.now() + offset_s)

    assert await state_of(broker, job_id) is JobState.QUEUED
    lease = await reserve_one(broker)
    assert lease.job_id == job_id


async def test_enqueue_without_not_before_is_queued_and_due_now(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker)

    info = await broker.get_job(job_id)
    assert info is not None
    assert info.state is JobState.QUEUED
    assert info.due_at == approx_time(clock.now())


async def test_payload_bytes_round_trip_exactly(broker: Broker, clock: FakeClock) -> None:
    envelope = Envelope(
        id=new_job_id(),
        task="mail.send",
        args=["héllo ✉", 1, 2.5, None, [True, {"nested": '\u0000\n\t"quote'}]],
        kwargs={"emoji": "🚀", "big": 2**62, "text": "x" * 10_000},
        created_at=clock.now(),
    )
    payload = encode_envelope(envelope)
    await broker.enqueue([(envelope, payload)])

    info = await broker.get_job(envelope.id)
    lease = await reserve_one(broker)

    assert info is not None
    assert info.payload == payload
    assert lease.payload == payload
    assert info.envelope() == envelope


async def test_payload_that_is_not_an_envelope_is_stored_as_is(
    broker: Broker, clock: FakeClock
) -> None:
    # The worker, not the broker, buries undecodable jobs: the broker stores any bytes.
    envelope, _ = make_job(clock)
    payload = b"\x00\xff\xfe not json \x80"
    await broker.enqueue([(envelope, payload)])

    lease = await reserve_one(broker)

    assert lease.payload == payload
    info = await broker.get_job(envelope.id)
    assert info is not None
    assert info.payload == payload
    assert info.envelope() is None
