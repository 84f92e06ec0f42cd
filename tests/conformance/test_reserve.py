"""`Broker.reserve`: ordering, limits, queues, promotion of due jobs, lease fields."""

from __future__ import annotations

from offload.brokers.base import Broker, Lease
from offload.envelope import JobState
from offload.testing import FakeClock

from .helpers import LEASE_S, approx_time, enqueue_one, make_job, reserve_one, state_of


async def drain(broker: Broker, queues: list[str], *, limit: int) -> list[Lease]:
    """Reserve until nothing is ready; every lease, in the order received."""
    leases: list[Lease] = []
    while batch := await broker.reserve(queues, worker_id="w1", lease_s=LEASE_S, limit=limit):
        assert len(batch) <= limit
        leases.extend(batch)
    return leases


async def test_reserve_takes_higher_priority_first(broker: Broker, clock: FakeClock) -> None:
    ids = {p: await enqueue_one(broker, task=f"p{p}", priority=p) for p in (0, 5, -3, 10, 1)}

    leases = await drain(broker, ["default"], limit=2)

    assert [lease.job_id for lease in leases] == [ids[p] for p in (10, 5, 1, 0, -3)]


async def test_reserve_is_fifo_within_a_priority_across_many_jobs(
    broker: Broker, clock: FakeClock
) -> None:
    # Given 60 jobs of one priority, enqueued in bulk and one by one, all at one instant
    expected: list[str] = []
    for _ in range(6):
        batch = [make_job(clock) for _ in range(9)]
        await broker.enqueue(batch)
        expected += [env.id for env, _ in batch]
        expected.append(await enqueue_one(broker))
    # and one more important job enqueued last,
    urgent = await enqueue_one(broker, priority=1)

    leases = await drain(broker, ["default"], limit=7)

    # then the important job comes first and the rest in enqueue order.
    assert [lease.job_id for lease in leases] == [urgent, *expected]


async def test_reserve_orders_by_due_time_before_enqueue_order(
    broker: Broker, clock: FakeClock
) -> None:
    delayed = await enqueue_one(broker, not_before=clock.now() + 10)  # due at t+10
    clock.advance(5)
    immediate = await enqueue_one(broker)  # enqueued later, but due at t+5
    clock.advance(5)

    leases = await drain(broker, ["default"], limit=5)

    assert [lease.job_id for lease in leases] == [immediate, delayed]


async def test_reserve_respects_limit(broker: Broker, clock: FakeClock) -> None:
    await broker.enqueue([make_job(clock) for _ in range(5)])

    sizes = [
        len(await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=3))
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
    broker: Broker, clock: FakeClock
) -> None:
    a_low = await enqueue_one(broker, queue="a", priority=0)
    b_high = await enqueue_one(broker, queue="b", priority=5)
    a_mid = await enqueue_one(broker, queue="a", priority=1)
    b_low = await enqueue_one(broker, queue="b", priority=0)
    await enqueue_one(broker, queue="c", priority=99)  # not asked for

    leases = await drain(broker, ["a", "b"], limit=1)

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


async def test_each_lease_has_a_unique_token(broker: Broker, clock: FakeClock) -> None:
    await broker.enqueue([make_job(clock) for _ in range(20)])

    leases = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=20)

    assert len(leases) == 20
    assert len({lease.token for lease in leases}) == 20
    assert all(lease.token for lease in leases)


async def test_reserve_returns_empty_list_when_nothing_is_ready(
    broker: Broker, clock: FakeClock
) -> None:
    async def reserve() -> list[Lease]:
        return await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=10)

    assert await reserve() == []  # empty broker
    await enqueue_one(broker, not_before=clock.now() + 60)
    assert await reserve() == []  # only a scheduled job
    await enqueue_one(broker)
    assert len(await reserve()) == 1
    assert await reserve() == []  # only a running and a scheduled job
    assert await broker.reserve(["nope"], worker_id="w1", lease_s=LEASE_S, limit=10) == []
