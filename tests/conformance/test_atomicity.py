"""Each operation is atomic: concurrent callers on one event loop never share a job."""

from __future__ import annotations

import asyncio

from offload.brokers.base import Broker
from offload.envelope import JobState
from offload.errors import LeaseLost
from offload.testing import FakeClock

from .helpers import BOOM, enqueue_one, make_job, reserve_one


async def test_concurrent_reserves_lease_each_job_exactly_once(
    broker: Broker, clock: FakeClock
) -> None:
    jobs = [make_job(clock) for _ in range(500)]
    await broker.enqueue(jobs)

    async def consumer(worker_id: str) -> list[str]:
        taken: list[str] = []
        while True:
            leases = await broker.reserve(["default"], worker_id=worker_id, lease_s=60, limit=7)
            if not leases:
                return taken
            assert len(leases) <= 7
            taken += [lease.job_id for lease in leases]
            await asyncio.sleep(0)  # let the other consumers in

    results = await asyncio.gather(*(consumer(f"w{i}") for i in range(8)))

    taken = [job_id for ids in results for job_id in ids]
    assert len(taken) == 500
    assert set(taken) == {env.id for env, _ in jobs}
    assert (await broker.counts())["default"].states[JobState.RUNNING] == 500


async def test_concurrent_enqueues_of_one_key_create_one_job(
    broker: Broker, clock: FakeClock
) -> None:
    jobs = [make_job(clock, key="once") for _ in range(20)]

    results = await asyncio.gather(*(broker.enqueue([job]) for job in jobs))

    flat = [result for batch in results for result in batch]
    assert sum(result.created for result in flat) == 1
    assert len({result.id for result in flat}) == 1
    assert (await broker.counts())["default"].states[JobState.QUEUED] == 1


async def test_concurrent_finishes_of_one_lease_succeed_once(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)

    outcomes = await asyncio.gather(
        broker.ack(lease, None, result_ttl_s=None),
        broker.ack(lease, None, result_ttl_s=None),
        broker.bury(lease, error=BOOM),
        return_exceptions=True,
    )

    assert sum(outcome is None for outcome in outcomes) == 1
    assert sum(isinstance(outcome, LeaseLost) for outcome in outcomes) == 2
    winner = outcomes.index(None)
    info = await broker.get_job(job_id)
    assert info is not None
    assert info.state is (JobState.DEAD if winner == 2 else JobState.SUCCEEDED)
