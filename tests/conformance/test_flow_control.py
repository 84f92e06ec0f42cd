"""Flow control primitives: `take_rate`, `acquire_slot` / `release_slot`, `defer`, and
`enqueue(max_depth=...)`, all on the broker's (fake) clock."""

from __future__ import annotations

import asyncio

import pytest

from offload.brokers.base import Broker
from offload.envelope import JobState
from offload.errors import LeaseLost, QueueFull
from offload.testing import FakeClock

from .helpers import BOOM, approx_time, enqueue_one, make_job, reserve_one, state_of

# -- take_rate ----------------------------------------------------------------------------


async def test_take_rate__burst_of_limit_then_one_per_interval(
    broker: Broker, clock: FakeClock
) -> None:
    # Given an idle key with 4 per 2 s: a burst of 4, then one every 0.5 s.
    taken = [await broker.take_rate("k", limit=4, per_s=2.0) for _ in range(4)]
    assert taken == [0.0, 0.0, 0.0, 0.0]

    wait = await broker.take_rate("k", limit=4, per_s=2.0)
    assert wait == pytest.approx(0.5, abs=1e-3)
    clock.advance(0.25)
    assert await broker.take_rate("k", limit=4, per_s=2.0) == pytest.approx(0.25, abs=1e-3)
    clock.advance(0.25)
    assert await broker.take_rate("k", limit=4, per_s=2.0) == 0.0
    assert await broker.take_rate("k", limit=4, per_s=2.0) == pytest.approx(0.5, abs=1e-3)


async def test_take_rate__refusal_takes_nothing(broker: Broker, clock: FakeClock) -> None:
    assert await broker.take_rate("k", limit=1, per_s=1.0) == 0.0
    for _ in range(5):  # asking again and again does not push the next token back
        assert await broker.take_rate("k", limit=1, per_s=1.0) == pytest.approx(1.0, abs=1e-3)
    clock.advance(1.0)
    assert await broker.take_rate("k", limit=1, per_s=1.0) == 0.0


async def test_take_rate__keys_are_independent(broker: Broker, clock: FakeClock) -> None:
    assert await broker.take_rate("a", limit=1, per_s=60.0) == 0.0
    assert await broker.take_rate("a", limit=1, per_s=60.0) > 0
    assert await broker.take_rate("b", limit=1, per_s=60.0) == 0.0
    assert await broker.take_rate("a{x}%", limit=1, per_s=60.0) == 0.0  # odd characters


async def test_take_rate__idle_key_refills_to_full_burst_only(
    broker: Broker, clock: FakeClock
) -> None:
    for _ in range(3):
        assert await broker.take_rate("k", limit=3, per_s=1.0) == 0.0
    clock.advance(3600)  # idle for long: the burst is still `limit`, not more
    for _ in range(3):
        assert await broker.take_rate("k", limit=3, per_s=1.0) == 0.0
    assert await broker.take_rate("k", limit=3, per_s=1.0) > 0
    await broker.sweep()  # forgetting idle keys changes nothing for a busy one
    assert await broker.take_rate("k", limit=3, per_s=1.0) > 0


async def test_take_rate__concurrent_takers_get_exactly_the_burst(
    broker: Broker, clock: FakeClock
) -> None:
    waits = await asyncio.gather(*(broker.take_rate("k", limit=5, per_s=1.0) for _ in range(20)))
    assert sum(1 for w in waits if w == 0.0) == 5


# -- acquire_slot / release_slot ------------------------------------------------------------


async def test_acquire_slot__at_most_limit_holders(broker: Broker, clock: FakeClock) -> None:
    assert await broker.acquire_slot("k", limit=2, holder="a", ttl_s=30)
    assert await broker.acquire_slot("k", limit=2, holder="b", ttl_s=30)
    assert not await broker.acquire_slot("k", limit=2, holder="c", ttl_s=30)
    assert await broker.acquire_slot("other", limit=2, holder="c", ttl_s=30)

    await broker.release_slot("k", "a")
    await broker.release_slot("k", "a")  # idempotent
    await broker.release_slot("k", "nobody")
    assert await broker.acquire_slot("k", limit=2, holder="c", ttl_s=30)
    assert not await broker.acquire_slot("k", limit=2, holder="a", ttl_s=30)


async def test_acquire_slot__holder_again_renews(broker: Broker, clock: FakeClock) -> None:
    assert await broker.acquire_slot("k", limit=1, holder="a", ttl_s=30)
    clock.advance(20)
    assert await broker.acquire_slot("k", limit=1, holder="a", ttl_s=30)  # renew to t+50
    clock.advance(20)  # past the first TTL, within the renewed one
    assert not await broker.acquire_slot("k", limit=1, holder="b", ttl_s=30)


async def test_acquire_slot__lapsed_holder_frees_its_slot(broker: Broker, clock: FakeClock) -> None:
    # Given a holder that crashed without releasing.
    assert await broker.acquire_slot("k", limit=1, holder="crashed", ttl_s=30)
    clock.advance(29)
    assert not await broker.acquire_slot("k", limit=1, holder="b", ttl_s=30)
    clock.advance(2)
    assert await broker.acquire_slot("k", limit=1, holder="b", ttl_s=30)
    await broker.sweep()
    assert not await broker.acquire_slot("k", limit=1, holder="c", ttl_s=30)


async def test_acquire_slot__concurrent_acquirers_get_exactly_limit(
    broker: Broker, clock: FakeClock
) -> None:
    got = await asyncio.gather(
        *(broker.acquire_slot("k", limit=3, holder=f"h{i}", ttl_s=30) for i in range(12))
    )
    assert sum(got) == 3


# -- defer ----------------------------------------------------------------------------------


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


# -- enqueue(max_depth=...) ---------------------------------------------------------------


async def test_enqueue_max_depth_refuses_past_the_bound(broker: Broker, clock: FakeClock) -> None:
    await broker.enqueue([make_job(clock, queue="q") for _ in range(2)], max_depth=3)
    await broker.enqueue([make_job(clock, queue="q", not_before=clock.now() + 60)], max_depth=3)

    with pytest.raises(QueueFull, match="'q'"):
        await broker.enqueue([make_job(clock, queue="q")], max_depth=3)
    counts = await broker.counts(["q"])
    assert counts["q"].states[JobState.QUEUED] == 2
    assert counts["q"].states[JobState.SCHEDULED] == 1
    # Other queues and unbounded enqueues are not affected.
    await broker.enqueue([make_job(clock, queue="other")], max_depth=3)
    await broker.enqueue([make_job(clock, queue="q")])


async def test_enqueue_max_depth_counts_only_waiting_jobs(broker: Broker, clock: FakeClock) -> None:
    await broker.enqueue([make_job(clock, queue="q") for _ in range(2)], max_depth=2)
    lease = await reserve_one(broker, ("q",))
    await broker.ack(lease, None, result_ttl_s=None)
    await reserve_one(broker, ("q",))  # running: not waiting either

    await broker.enqueue([make_job(clock, queue="q") for _ in range(2)], max_depth=2)
    with pytest.raises(QueueFull):
        await broker.enqueue([make_job(clock, queue="q")], max_depth=2)


async def test_enqueue_max_depth_is_all_or_nothing(broker: Broker, clock: FakeClock) -> None:
    await broker.enqueue([make_job(clock, queue="q")], max_depth=3)
    with pytest.raises(QueueFull):
        await broker.enqueue([make_job(clock, queue="q") for _ in range(3)], max_depth=3)
    assert (await broker.counts(["q"]))["q"].states[JobState.QUEUED] == 1
