"""`Broker.outbox`: the ends a worker never sees (cancelled while waiting, expired) are
recorded with the state change, so a workflow always hears of every member's end and
the metrics count every such end, once (`clear_outbox` says which entries it removed)."""

from __future__ import annotations

import asyncio
from typing import Any

from offload.brokers.base import Broker
from offload.codec import encode_value
from offload.envelope import ChordRef, JobState, Step, new_job_id
from offload.testing import FakeClock

from ..helpers import BOOM, enqueue_one


def _flow(**extra: Any) -> dict[str, Any]:
    """Envelope fields of a chord member whose chain goes on (both kinds of follow-up)."""
    callback = Step(id=new_job_id(), task="report")
    return {
        "chord": ChordRef(new_job_id(), 0, 2, then=[callback]),
        "then": [Step(id=new_job_id(), task="next")],
        **extra,
    }


async def _outbox_ids(broker: Broker) -> list[str]:
    return [entry.job_id for entry in await broker.outbox()]


async def test_cancelling_a_waiting_job_records_it_with_its_payload(broker: Broker) -> None:
    job_id = await enqueue_one(broker, **_flow())
    info = await broker.get_job(job_id)
    assert info is not None

    assert await broker.cancel(job_id)

    [entry] = await broker.outbox()
    assert (entry.job_id, entry.state) == (job_id, JobState.CANCELLED)
    assert entry.payload == info.payload


async def test_cancelling_a_scheduled_job_records_it(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker, not_before=clock.now() + 3600, **_flow())

    assert await broker.cancel(job_id)

    assert await _outbox_ids(broker) == [job_id]


async def test_expiry_at_reserve_records_the_job(broker: Broker, clock: FakeClock) -> None:
    stale = await enqueue_one(broker, expires_at=clock.now() + 10, **_flow())
    clock.advance(11)

    assert await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=10) == []

    [entry] = await broker.outbox()
    assert (entry.job_id, entry.state) == (stale, JobState.EXPIRED)


async def test_expiry_by_sweep_records_the_job(broker: Broker, clock: FakeClock) -> None:
    stale = await enqueue_one(broker, expires_at=clock.now() + 10, **_flow())
    clock.advance(11)

    assert (await broker.sweep()).expired == 1

    [entry] = await broker.outbox()
    assert (entry.job_id, entry.state) == (stale, JobState.EXPIRED)


async def test_ends_settled_by_a_worker_are_not_recorded(broker: Broker) -> None:
    acked, buried, stopped, flagged = [await enqueue_one(broker, **_flow()) for _ in range(4)]
    leases = await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=4)
    by_id = {lease.job_id: lease for lease in leases}
    await broker.ack(by_id[acked], encode_value(1), result_ttl_s=None)
    await broker.bury(by_id[buried], error=BOOM)
    await broker.cancel_running(by_id[stopped], error=BOOM)
    assert await broker.cancel(flagged)  # running: only flagged, its worker settles it

    assert await broker.outbox() == []


async def test_entries_come_oldest_first_up_to_the_limit(broker: Broker, clock: FakeClock) -> None:
    ids = [await enqueue_one(broker, **_flow()) for _ in range(5)]
    for job_id in ids:
        clock.advance(1)
        assert await broker.cancel(job_id)

    assert await _outbox_ids(broker) == ids
    assert [e.job_id for e in await broker.outbox(limit=2)] == ids[:2]


async def test_reading_does_not_consume_and_clearing_does(broker: Broker) -> None:
    first, second = [await enqueue_one(broker, **_flow()) for _ in range(2)]
    for job_id in (first, second):
        assert await broker.cancel(job_id)

    assert await _outbox_ids(broker) == [first, second]
    assert await _outbox_ids(broker) == [first, second]  # several readers see them
    assert await broker.clear_outbox([first, new_job_id()]) == [first]  # unknown: ignored
    assert await _outbox_ids(broker) == [second]
    assert await broker.clear_outbox([first, second]) == [second]
    assert await broker.clear_outbox([second]) == []  # idempotent
    assert await broker.outbox() == []


async def test_every_job_that_ends_waiting_is_recorded(broker: Broker, clock: FakeClock) -> None:
    # Plain jobs too, not only workflow steps: the metrics count each such end.
    queued = await enqueue_one(broker)
    scheduled = await enqueue_one(broker, not_before=clock.now() + 3600)
    at_reserve = await enqueue_one(broker, expires_at=clock.now() + 10)
    at_sweep = await enqueue_one(broker, queue="idle", expires_at=clock.now() + 10)
    for job_id in (queued, scheduled):
        assert await broker.cancel(job_id)
    clock.advance(11)
    assert await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=10) == []
    await broker.sweep()  # the idle queue's (a broker may expire it at reserve already)

    ended = {entry.job_id: entry.state for entry in await broker.outbox()}
    assert ended == {
        queued: JobState.CANCELLED,
        scheduled: JobState.CANCELLED,
        at_reserve: JobState.EXPIRED,
        at_sweep: JobState.EXPIRED,
    }


async def test_concurrent_clears_remove_each_entry_once(broker: Broker) -> None:
    ids = [await enqueue_one(broker) for _ in range(30)]
    for job_id in ids:
        assert await broker.cancel(job_id)
    seen = [await _outbox_ids(broker) for _ in range(4)]  # four readers, the same entries
    assert all(found == ids for found in seen)

    cleared = await asyncio.gather(*(broker.clear_outbox(found) for found in seen))

    assert sorted(job_id for part in cleared for job_id in part) == sorted(ids)  # no twice
    assert await broker.outbox() == []


async def test_a_purged_job_leaves_the_outbox(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker, **_flow())
    assert await broker.cancel(job_id)
    clock.advance(broker.retention_s + 1)

    await broker.sweep()

    assert await broker.get_job(job_id) is None
    assert job_id not in await _outbox_ids(broker)
