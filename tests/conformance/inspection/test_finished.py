"""Inspection: `finished`, the per-minute counts of jobs that ended, per queue and outcome."""

from __future__ import annotations

from offload.brokers.base import Broker, Finished, Outcome
from offload.brokers.records import FINISHED_KEEP_S
from offload.brokers.roles import Settlement
from offload.codec import encode_value
from offload.testing import FakeClock

from ..helpers import BOOM, enqueue_one, reserve_one

#: A minute boundary well after FakeClock's default start, so minutes are exact.
M0 = 28_333_400
T0 = M0 * 60.0


async def settle_each_way(broker: Broker, clock: FakeClock, queue: str) -> None:
    """In the current minute, one job of `queue` each: acked, retried, buried,
    cancelled while running, deferred (not counted)."""
    for _ in range(5):
        await enqueue_one(broker, queue=queue)
    leases = await broker.reserve([queue], worker_id="w", lease_s=60, limit=5)
    assert len(leases) == 5
    acked, retried, buried, stopped, deferred = leases
    assert await broker.cancel(stopped.job_id)  # flags the running job
    await broker.ack(acked, encode_value(1), result_ttl_s=None)
    await broker.retry(retried, at=clock.now() + 3600, error=BOOM)
    await broker.bury(buried, error=BOOM)
    await broker.cancel_running(stopped, error=BOOM)
    await broker.defer(deferred, at=clock.now() + 3600)


async def test_finished_counts_each_settlement_by_outcome_in_its_minute(
    broker: Broker, clock: FakeClock
) -> None:
    # Given jobs of queue "a" settled every way in minute M0 + 0 and again in M0 + 2,
    # and one job of "b" acked in M0 + 2,
    clock.set(T0 + 1)
    await settle_each_way(broker, clock, "a")
    clock.set(T0 + 120 + 59.5)
    await settle_each_way(broker, clock, "a")
    await enqueue_one(broker, queue="b")
    await broker.ack(await reserve_one(broker, ("b",)), None, result_ttl_s=None)

    # each end is counted once in the minute it happened, by outcome (a defer is none),
    each = [Outcome.CANCELLED, Outcome.DEAD, Outcome.FAILED, Outcome.SUCCEEDED]
    expected = [Finished("a", M0, o, 1) for o in each]
    expected += [Finished("a", M0 + 2, o, 1) for o in each]
    expected.append(Finished("b", M0 + 2, Outcome.SUCCEEDED, 1))
    assert await broker.finished(T0) == expected
    # `since` starts at its minute, and `queues` picks queues.
    assert await broker.finished(T0 + 61) == expected[4:]
    assert await broker.finished(T0, ["b"]) == expected[-1:]
    assert await broker.finished(T0, ["nowhere"]) == []


async def test_finished_adds_up_a_batch_of_settlements(broker: Broker, clock: FakeClock) -> None:
    # Given 30 jobs of two queues acked in one batch, and 3 buried,
    clock.set(T0 + 30)
    for i in range(33):
        await enqueue_one(broker, queue="ab"[i % 2])
    leases = await broker.reserve(["a", "b"], worker_id="w", lease_s=60, limit=33)
    assert len(leases) == 33
    settlements = [Settlement.ack(lease, None) for lease in leases[:30]]
    settlements += [Settlement.bury(lease, error=BOOM) for lease in leases[30:]]
    assert await broker.settle_many(settlements) == [True] * 33
    # a lease settled again is not counted twice.
    assert await broker.settle_many(settlements[:1]) == [False]

    by_queue = {(f.queue, f.outcome): f.count for f in await broker.finished(T0)}
    per_queue = {q: sum(n for (qq, _), n in by_queue.items() if qq == q) for q in "ab"}
    assert sum(n for (_, o), n in by_queue.items() if o is Outcome.SUCCEEDED) == 30
    assert sum(n for (_, o), n in by_queue.items() if o is Outcome.DEAD) == 3
    assert per_queue == {"a": 17, "b": 16}


async def test_finished_counts_jobs_that_end_inside_the_broker(
    broker: Broker, clock: FakeClock
) -> None:
    # Given a waiting job cancelled, one expired by a reservation and one by a sweep,
    clock.set(T0 + 5)
    assert await broker.cancel(await enqueue_one(broker, queue="a", not_before=T0 + 600))
    await enqueue_one(broker, queue="a", expires_at=T0 + 10)
    clock.set(T0 + 11)
    assert await broker.reserve(["a"], worker_id="w", lease_s=60, limit=5) == []
    await enqueue_one(broker, queue="a", not_before=T0 + 15, expires_at=T0 + 20)
    clock.set(T0 + 21)
    assert (await broker.sweep()).expired == 1

    # each is counted, in the minute it ended.
    assert await broker.finished(T0) == [
        Finished("a", M0, Outcome.CANCELLED, 1),
        Finished("a", M0, Outcome.EXPIRED, 2),
    ]


async def test_sweep_drops_the_minutes_past_the_window(broker: Broker, clock: FakeClock) -> None:
    # Given a job acked at M0 and one at M0 + 60,
    clock.set(T0)
    await enqueue_one(broker, queue="a")
    await broker.ack(await reserve_one(broker, ("a",)), None, result_ttl_s=None)
    clock.set(T0 + 3600)
    await enqueue_one(broker, queue="a")
    await broker.ack(await reserve_one(broker, ("a",)), None, result_ttl_s=None)

    # when a sweep runs once the first has left the window,
    clock.set(T0 + FINISHED_KEEP_S + 60)
    await broker.sweep()

    # the first minute is gone (even asked for from before it), the second is kept.
    assert await broker.finished(T0 - 600) == [Finished("a", M0 + 60, Outcome.SUCCEEDED, 1)]
    # and a sweep once the second has left drops it too.
    clock.set(T0 + 3600 + FINISHED_KEEP_S + 60)
    await broker.sweep()
    assert await broker.finished(0) == []
