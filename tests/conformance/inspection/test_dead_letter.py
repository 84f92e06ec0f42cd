"""The dead-letter queue: `replay_dead` and `purge_dead`."""

from __future__ import annotations

from offload.brokers.base import Broker
from offload.envelope import JobState, new_job_id
from offload.testing import FakeClock

from ..helpers import BOOM, enqueue_one, job_in_state, reserve_one, state_of


async def dead_count(broker: Broker, queue: str) -> int:
    return (await broker.counts([queue]))[queue].states[JobState.DEAD]


async def test_replay_dead_requeues_every_dead_job_with_attempt_reset(
    broker: Broker, clock: FakeClock
) -> None:
    a = await job_in_state(broker, clock, JobState.DEAD, "a")
    b = await job_in_state(broker, clock, JobState.DEAD, "b")

    assert await broker.replay_dead() == 2

    for job_id in (a, b):
        info = await broker.get_job(job_id)
        assert info is not None
        assert (info.state, info.attempt) == (JobState.QUEUED, 0)
    assert await dead_count(broker, "a") == 0
    assert await dead_count(broker, "b") == 0


async def test_replayed_job_runs_again(broker: Broker, clock: FakeClock) -> None:
    job_id = await job_in_state(broker, clock, JobState.DEAD, "q")
    clock.advance(100)
    await broker.replay_dead()

    lease = await reserve_one(broker, ("q",), worker_id="w2")

    assert (lease.job_id, lease.attempt) == (job_id, 1)
    await broker.ack(lease, None, result_ttl_s=None)
    assert await state_of(broker, job_id) is JobState.SUCCEEDED


async def test_a_replayed_job_carries_no_cancel_request_of_its_last_run(
    broker: Broker, clock: FakeClock
) -> None:
    # Given a job cancelled while it ran (flagged), whose attempt then died
    job_id = await enqueue_one(broker, queue="q")
    lease = await reserve_one(broker, ("q",))
    assert await broker.cancel(job_id)
    assert await broker.cancel_requested([lease]) == {job_id}
    await broker.bury(lease, error=BOOM)
    # When it is replayed and reserved again
    assert await broker.replay_dead(job_ids=[job_id]) == 1
    info = await broker.get_job(job_id)
    assert info is not None and not info.cancel_requested
    again = await reserve_one(broker, ("q",), worker_id="w2")
    # Then its new run is not one anyone cancelled: the worker's check does not stop it
    assert again.job_id == job_id
    assert await broker.cancel_requested([again]) == set()


async def test_replay_dead_by_queue_leaves_other_queues(broker: Broker, clock: FakeClock) -> None:
    a1 = await job_in_state(broker, clock, JobState.DEAD, "a")
    a2 = await job_in_state(broker, clock, JobState.DEAD, "a")
    b = await job_in_state(broker, clock, JobState.DEAD, "b")

    assert await broker.replay_dead("a") == 2

    assert await state_of(broker, a1) is JobState.QUEUED
    assert await state_of(broker, a2) is JobState.QUEUED
    assert await state_of(broker, b) is JobState.DEAD


async def test_replay_dead_by_ids_moves_only_those(broker: Broker, clock: FakeClock) -> None:
    one, two, three = [await job_in_state(broker, clock, JobState.DEAD, "q") for _ in range(3)]

    assert await broker.replay_dead(job_ids=[one, three, new_job_id()]) == 2

    assert [await state_of(broker, i) for i in (one, two, three)] == [
        JobState.QUEUED,
        JobState.DEAD,
        JobState.QUEUED,
    ]
    assert await dead_count(broker, "q") == 1


async def test_replay_dead_ignores_jobs_that_are_not_dead(broker: Broker, clock: FakeClock) -> None:
    queued = await job_in_state(broker, clock, JobState.QUEUED, "a")
    succeeded = await job_in_state(broker, clock, JobState.SUCCEEDED, "b")
    cancelled = await job_in_state(broker, clock, JobState.CANCELLED, "c")

    assert await broker.replay_dead(job_ids=[queued, succeeded, cancelled]) == 0
    assert await broker.replay_dead() == 0

    assert await state_of(broker, queued) is JobState.QUEUED
    assert await state_of(broker, succeeded) is JobState.SUCCEEDED
    assert await state_of(broker, cancelled) is JobState.CANCELLED


async def test_purge_dead_deletes_every_dead_job(broker: Broker, clock: FakeClock) -> None:
    a = await job_in_state(broker, clock, JobState.DEAD, "a")
    b = await job_in_state(broker, clock, JobState.DEAD, "b")
    succeeded = await job_in_state(broker, clock, JobState.SUCCEEDED, "c")

    assert await broker.purge_dead() == 2

    assert await broker.get_job(a) is None
    assert await broker.get_job(b) is None
    assert await state_of(broker, succeeded) is JobState.SUCCEEDED
    assert await dead_count(broker, "a") == 0
    assert await broker.purge_dead() == 0


async def test_purge_dead_by_queue_leaves_other_queues(broker: Broker, clock: FakeClock) -> None:
    a = await job_in_state(broker, clock, JobState.DEAD, "a")
    b = await job_in_state(broker, clock, JobState.DEAD, "b")

    assert await broker.purge_dead("a") == 1

    assert await broker.get_job(a) is None
    assert await state_of(broker, b) is JobState.DEAD
    assert await dead_count(broker, "b") == 1


async def test_purge_dead_by_ids_deletes_only_those(broker: Broker, clock: FakeClock) -> None:
    one, two, three = [await job_in_state(broker, clock, JobState.DEAD, "q") for _ in range(3)]
    queued = await job_in_state(broker, clock, JobState.QUEUED, "q")

    assert await broker.purge_dead(job_ids=[two, queued, new_job_id()]) == 1

    assert await broker.get_job(two) is None
    assert await state_of(broker, one) is JobState.DEAD
    assert await state_of(broker, three) is JobState.DEAD
    assert await state_of(broker, queued) is JobState.QUEUED
    assert await dead_count(broker, "q") == 2


async def test_purge_dead_older_than_keeps_recent_ones(broker: Broker, clock: FakeClock) -> None:
    old = await job_in_state(broker, clock, JobState.DEAD, "q")  # finished at t0
    clock.advance(100)
    recent = await job_in_state(broker, clock, JobState.DEAD, "q")  # finished at t0+100
    clock.advance(50)

    assert await broker.purge_dead(older_than=160) == 0
    assert await broker.purge_dead(older_than=100) == 1

    assert await broker.get_job(old) is None
    assert await state_of(broker, recent) is JobState.DEAD
    assert await dead_count(broker, "q") == 1


async def test_purge_dead_older_than_spares_a_job_exactly_that_old(
    broker: Broker, clock: FakeClock
) -> None:
    job_id = await job_in_state(broker, clock, JobState.DEAD, "q")
    clock.advance(100)

    assert await broker.purge_dead(older_than=100) == 0
    assert await state_of(broker, job_id) is JobState.DEAD
    clock.advance(1)
    assert await broker.purge_dead(older_than=100) == 1


async def test_counts_follow_bury_replay_and_purge(broker: Broker, clock: FakeClock) -> None:
    ids = [await job_in_state(broker, clock, JobState.DEAD, "q") for _ in range(3)]

    def pair(stats: dict[JobState, int]) -> tuple[int, int]:
        return stats[JobState.DEAD], stats[JobState.QUEUED]

    assert pair((await broker.counts(["q"]))["q"].states) == (3, 0)
    await broker.replay_dead(job_ids=ids[:1])
    assert pair((await broker.counts(["q"]))["q"].states) == (2, 1)
    await broker.purge_dead("q")
    assert pair((await broker.counts(["q"]))["q"].states) == (0, 1)
