"""`Broker.reserve`: ordering, limits, queues, promotion of due jobs, lease fields."""

from __future__ import annotations

from offload.brokers.base import Broker, Lease
from offload.brokers.roles import Delivery
from offload.envelope import JobState
from offload.testing import FakeClock

from ..helpers import (
    BOOM,
    LEASE_S,
    approx_time,
    enqueue_one,
    make_job,
    reserve_one,
    state_of,
)


async def drain(broker: Delivery, queues: list[str], *, limit: int) -> list[Lease]:
    """Reserve until nothing is ready; every lease, in the order received."""
    leases: list[Lease] = []
    while batch := await broker.reserve(queues, worker_id="w1", lease_s=LEASE_S, limit=limit):
        assert len(batch) <= limit
        leases.extend(batch)
    return leases


async def test_reserve_takes_higher_priority_first(delivery: Delivery, clock: FakeClock) -> None:
    ids = {p: await enqueue_one(delivery, task=f"p{p}", priority=p) for p in (0, 5, -3, 10, 1)}

    leases = await drain(delivery, ["default"], limit=2)

    assert [lease.job_id for lease in leases] == [ids[p] for p in (10, 5, 1, 0, -3)]


async def test_reserve_is_fifo_within_a_priority_across_many_jobs(
    delivery: Delivery, clock: FakeClock
) -> None:
    # Given 60 jobs of one priority, enqueued in bulk and one by one, all at one instant
    expected: list[str] = []
    for _ in range(6):
        batch = [make_job(clock) for _ in range(9)]
        await delivery.enqueue(batch)
        expected += [env.id for env, _ in batch]
        expected.append(await enqueue_one(delivery))
    # and one more important job enqueued last,
    urgent = await enqueue_one(delivery, priority=1)

    leases = await drain(delivery, ["default"], limit=7)

    # then the important job comes first and the rest in enqueue order.
    assert [lease.job_id for lease in leases] == [urgent, *expected]


async def test_reserve_orders_by_due_time_before_enqueue_order(
    delivery: Delivery, clock: FakeClock
) -> None:
    delayed = await enqueue_one(delivery, not_before=clock.now() + 10)  # due at t+10
    clock.advance(5)
    immediate = await enqueue_one(delivery)  # enqueued later, but due at t+5
    clock.advance(5)

    leases = await drain(delivery, ["default"], limit=5)

    assert [lease.job_id for lease in leases] == [immediate, delayed]


async def test_reserve_respects_limit(delivery: Delivery, clock: FakeClock) -> None:
    await delivery.enqueue([make_job(clock) for _ in range(5)])

    sizes = [
        len(await delivery.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=3))
        for _ in range(3)
    ]

    assert sizes == [3, 2, 0]


async def test_reserve_takes_only_requested_queues(broker: Broker, clock: FakeClock) -> None:
    ids = {q: await enqueue_one(broker, queue=q) for q in ("a", "b", "c")}

    leases = await broker.reserve(["a", "c"], worker_id="w1", lease_s=LEASE_S, limit=10)

    assert sorted(lease.job_id for lease in leases) == sorted([ids["a"], ids["c"]])
    assert {lease.queue for lease in leases} == {"a", "c"}
    assert await state_of(broker, ids["b"]) is JobState.QUEUED


async def test_reserve_on_several_queues_picks_global_best_priority(
    delivery: Delivery, clock: FakeClock
) -> None:
    a_low = await enqueue_one(delivery, queue="a", priority=0)
    b_high = await enqueue_one(delivery, queue="b", priority=5)
    a_mid = await enqueue_one(delivery, queue="a", priority=1)
    b_low = await enqueue_one(delivery, queue="b", priority=0)
    await enqueue_one(delivery, queue="c", priority=99)  # not asked for

    leases = await drain(delivery, ["a", "b"], limit=1)

    assert [lease.job_id for lease in leases] == [b_high, a_mid, a_low, b_low]


async def test_reserve_promotes_due_scheduled_job_only_when_clock_reaches_it(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker, not_before=clock.now() + 10)

    clock.advance(9.5)
    assert await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=1) == []
    assert await state_of(broker, job_id) is JobState.SCHEDULED

    clock.advance(0.5)
    lease = await reserve_one(broker)
    assert lease.job_id == job_id
    assert lease.attempt == 1


async def test_reserve_marks_job_running_and_counts_the_attempt(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker, queue="mail")

    lease = await reserve_one(broker, ("mail",), worker_id="worker-7", lease_s=12.5)

    assert (lease.job_id, lease.queue, lease.attempt) == (job_id, "mail", 1)
    info = await broker.get_job(job_id)
    assert info is not None
    assert info.state is JobState.RUNNING
    assert info.attempt == 1
    assert info.worker_id == "worker-7"
    assert info.started_at == approx_time(clock.now())


async def test_lease_deadline_is_now_plus_lease_s(broker: Broker, clock: FakeClock) -> None:
    await enqueue_one(broker)
    clock.advance(3)

    lease = await reserve_one(broker, lease_s=12.5)

    assert lease.deadline == approx_time(clock.now() + 12.5)
    info = await broker.get_job(lease.job_id)
    assert info is not None
    assert info.lease_deadline == approx_time(clock.now() + 12.5)


async def test_each_lease_has_a_unique_token(delivery: Delivery, clock: FakeClock) -> None:
    await delivery.enqueue([make_job(clock) for _ in range(20)])

    leases = await delivery.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=20)

    assert len(leases) == 20
    assert len({lease.token for lease in leases}) == 20
    assert all(lease.token for lease in leases)


async def test_reserve_returns_empty_list_when_nothing_is_ready(
    delivery: Delivery, clock: FakeClock
) -> None:
    async def reserve() -> list[Lease]:
        return await delivery.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=10)

    assert await reserve() == []  # empty delivery
    await enqueue_one(delivery, not_before=clock.now() + 60)
    assert await reserve() == []  # only a scheduled job
    await enqueue_one(delivery)
    assert len(await reserve()) == 1
    assert await reserve() == []  # only a running and a scheduled job
    assert await delivery.reserve(["nope"], worker_id="w1", lease_s=LEASE_S, limit=10) == []


async def test_next_due_is_earliest_scheduled_job_of_the_queues(
    delivery: Delivery, clock: FakeClock
) -> None:
    assert await delivery.next_due(["default"]) is None
    now = clock.now()
    await enqueue_one(delivery, not_before=now + 30)
    await enqueue_one(delivery, not_before=now + 10)
    await enqueue_one(delivery, queue="other", not_before=now + 5)
    await enqueue_one(delivery)  # ready now: not scheduled
    assert await delivery.next_due(["default"]) == now + 10
    assert await delivery.next_due(["default", "other"]) == now + 5
    assert await delivery.next_due(["empty"]) is None


async def test_next_due_counts_retries(delivery: Delivery, clock: FakeClock) -> None:
    await enqueue_one(delivery)
    lease = await reserve_one(delivery)
    await delivery.retry(lease, at=clock.now() + 7, error=BOOM)
    assert await delivery.next_due(["default"]) == clock.now() + 7
