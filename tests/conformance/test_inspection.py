"""Inspection: `counts`, `get_job`, `find`, `list_jobs`, `queues`, and the worker registry."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from offload.brokers.base import Broker, JobInfo, Page, QueueStats, WorkerInfo
from offload.envelope import JobState, new_job_id
from offload.testing import FakeClock

from .helpers import (
    approx_time,
    enqueue_one,
    job_in_state,
    make_job,
    reserve_one,
)

ZERO = dict.fromkeys(JobState, 0)


async def walk(
    broker: Broker, *, limit: int, queue: str | None = None, state: JobState | None = None
) -> list[Page]:
    """Every page of a `list_jobs` listing, following cursors to the end."""
    pages = [await broker.list_jobs(queue=queue, state=state, limit=limit)]
    while (cursor := pages[-1].cursor) is not None:
        assert len(pages) < 100, "the cursor never reached the end"
        pages.append(await broker.list_jobs(queue=queue, state=state, limit=limit, cursor=cursor))
    return pages


async def enqueue_spaced(broker: Broker, clock: FakeClock, n: int, **fields: Any) -> list[str]:
    """`n` jobs enqueued one second apart, oldest first."""
    ids = []
    for _ in range(n):
        ids.append(await enqueue_one(broker, **fields))
        clock.advance(1)
    return ids


# -- counts ---------------------------------------------------------------------------


async def test_counts_every_state_per_queue(broker: Broker, clock: FakeClock) -> None:
    # Given queue "a" with one job in every state (reserving ones first, so each
    # reservation takes the only ready job) and queue "b" with two queued jobs,
    for state in (JobState.RUNNING, JobState.SUCCEEDED, JobState.DEAD):
        await job_in_state(broker, clock, state, "a")
    for state in (JobState.EXPIRED, JobState.SCHEDULED, JobState.CANCELLED, JobState.QUEUED):
        await job_in_state(broker, clock, state, "a")
    b_first_at = clock.now()
    await enqueue_one(broker, queue="b")
    clock.advance(5)
    await enqueue_one(broker, queue="b")

    counts = await broker.counts()

    # then every queue reports every state, and the enqueue time of its oldest queued job.
    assert sorted(counts) == ["a", "b"]
    assert counts["a"].states == dict.fromkeys(JobState, 1)
    assert counts["b"] == QueueStats({**ZERO, JobState.QUEUED: 2}, approx_time(b_first_at))


async def test_counts_oldest_queued_at_is_none_without_queued_jobs(
    broker: Broker, clock: FakeClock
) -> None:
    await job_in_state(broker, clock, JobState.RUNNING, "q")
    await job_in_state(broker, clock, JobState.SCHEDULED, "q")

    stats = (await broker.counts())["q"]

    assert stats.oldest_queued_at is None
    assert stats.states == {**ZERO, JobState.RUNNING: 1, JobState.SCHEDULED: 1}


async def test_counts_oldest_queued_at_follows_the_queue(broker: Broker, clock: FakeClock) -> None:
    t0 = clock.now()
    await enqueue_spaced(broker, clock, 3, queue="q")  # at t0, t0+1, t0+2

    assert (await broker.counts(["q"]))["q"].oldest_queued_at == approx_time(t0)
    await reserve_one(broker, ("q",))  # takes the oldest
    assert (await broker.counts(["q"]))["q"].oldest_queued_at == approx_time(t0 + 1)


async def test_counts_filtered_by_queues_includes_unknown_empty_queue(
    broker: Broker, clock: FakeClock
) -> None:
    await enqueue_one(broker, queue="a")
    await enqueue_one(broker, queue="b")

    counts = await broker.counts(["b", "nope"])

    assert sorted(counts) == ["b", "nope"]
    assert counts["b"].states == {**ZERO, JobState.QUEUED: 1}
    assert counts["nope"] == QueueStats(ZERO, None)


async def test_counts_of_empty_broker_is_empty(broker: Broker) -> None:
    assert await broker.counts() == {}


# -- get_job and find -----------------------------------------------------------------


async def test_get_job_reports_envelope_fields_and_state(broker: Broker, clock: FakeClock) -> None:
    now = clock.now()
    envelope, payload = make_job(
        clock,
        "mail.send",
        queue="mail",
        priority=3,
        max_attempts=7,
        key="welcome:42",
        expires_at=now + 100,
    )
    await broker.enqueue([(envelope, payload)])

    info = await broker.get_job(envelope.id)

    assert info == JobInfo(
        id=envelope.id,
        task="mail.send",
        queue="mail",
        state=JobState.QUEUED,
        priority=3,
        attempt=0,
        max_attempts=7,
        key="welcome:42",
        created_at=approx_time(now),
        due_at=approx_time(now),
        expires_at=approx_time(now + 100),
        started_at=None,
        finished_at=None,
        worker_id=None,
        lease_deadline=None,
        error=None,
        payload=payload,
        result=None,
        cancel_requested=False,
    )


async def test_get_job_reports_the_lease_of_a_running_job(broker: Broker, clock: FakeClock) -> None:
    job_id = await enqueue_one(broker)
    clock.advance(2)

    lease = await reserve_one(broker, worker_id="w9", lease_s=45)

    info = await broker.get_job(job_id)
    assert info is not None
    assert (info.state, info.attempt, info.worker_id) == (JobState.RUNNING, 1, "w9")
    assert info.started_at == approx_time(clock.now())
    assert info.lease_deadline == approx_time(lease.deadline)
    assert info.finished_at is None


async def test_get_job_of_unknown_id_returns_none(broker: Broker) -> None:
    assert await broker.get_job(new_job_id()) is None


async def test_find_returns_the_job_holding_a_key(broker: Broker, clock: FakeClock) -> None:
    await enqueue_one(broker, key="other")
    job_id = await enqueue_one(broker, key="report:2024-01")

    info = await broker.find("report:2024-01")

    assert info is not None
    assert (info.id, info.key) == (job_id, "report:2024-01")
    assert await broker.find("missing") is None


# -- list_jobs ------------------------------------------------------------------------


async def test_list_jobs_is_newest_first(broker: Broker, clock: FakeClock) -> None:
    ids = await enqueue_spaced(broker, clock, 5)

    page = await broker.list_jobs()

    assert [info.id for info in page.items] == ids[::-1]
    assert page.cursor is None


async def test_list_jobs_of_empty_broker_is_one_empty_page(broker: Broker) -> None:
    assert await broker.list_jobs() == Page([], None)


async def test_list_jobs_filters_by_queue_and_state(broker: Broker, clock: FakeClock) -> None:
    a_running = await job_in_state(broker, clock, JobState.RUNNING, "a")
    clock.advance(1)
    a_queued = await enqueue_spaced(broker, clock, 2, queue="a")
    b_queued = await enqueue_spaced(broker, clock, 2, queue="b")

    def ids(page: Page) -> list[str]:
        return [info.id for info in page.items]

    assert ids(await broker.list_jobs(queue="a")) == [*a_queued[::-1], a_running]
    assert ids(await broker.list_jobs(state=JobState.QUEUED)) == (a_queued + b_queued)[::-1]
    assert ids(await broker.list_jobs(queue="b", state=JobState.QUEUED)) == b_queued[::-1]
    assert ids(await broker.list_jobs(queue="b", state=JobState.RUNNING)) == []
    assert ids(await broker.list_jobs(queue="nope")) == []


@pytest.mark.parametrize(("n", "sizes"), [(23, [5, 5, 5, 5, 3]), (10, [5, 5])], ids=str)
async def test_list_jobs_pagination_walks_every_job_exactly_once(
    broker: Broker, clock: FakeClock, n: int, sizes: list[int]
) -> None:
    ids = await enqueue_spaced(broker, clock, n)

    pages = await walk(broker, limit=5)

    assert [len(page.items) for page in pages] == sizes
    assert [info.id for page in pages for info in page.items] == ids[::-1]
    assert all(page.cursor is not None for page in pages[:-1])
    assert pages[-1].cursor is None


async def test_list_jobs_pagination_applies_filters_on_every_page(
    broker: Broker, clock: FakeClock
) -> None:
    dead: list[str] = []
    for _ in range(7):
        dead.append(await job_in_state(broker, clock, JobState.DEAD, "q"))
        # Noise the filters must skip: other states in "q", dead jobs elsewhere.
        await enqueue_spaced(broker, clock, 2, queue="q", not_before=clock.now() + 3600)
        await job_in_state(broker, clock, JobState.DEAD, "other")
        clock.advance(1)

    pages = await walk(broker, limit=3, queue="q", state=JobState.DEAD)

    assert [len(page.items) for page in pages] == [3, 3, 1]
    assert [info.id for page in pages for info in page.items] == dead[::-1]


async def test_list_jobs_cursor_is_stable_when_jobs_are_added(
    broker: Broker, clock: FakeClock
) -> None:
    ids = await enqueue_spaced(broker, clock, 6)
    first = await broker.list_jobs(limit=3)
    assert first.cursor is not None

    await enqueue_spaced(broker, clock, 2)  # newer than everything listed
    second = await broker.list_jobs(limit=3, cursor=first.cursor)

    assert [info.id for info in first.items + second.items] == ids[::-1]
    assert second.cursor is None


# -- queues ---------------------------------------------------------------------------


async def test_queues_lists_every_queue_sorted(broker: Broker, clock: FakeClock) -> None:
    for queue in ("zeta", "alpha", "mid", "alpha"):
        await enqueue_one(broker, queue=queue)
    await enqueue_one(broker, queue="later", not_before=clock.now() + 60)

    assert await broker.queues() == ["alpha", "later", "mid", "zeta"]


async def test_queues_keeps_a_queue_whose_jobs_were_purged(
    broker: Broker, clock: FakeClock
) -> None:
    await enqueue_one(broker, queue="live")
    await job_in_state(broker, clock, JobState.DEAD, "gone")
    assert await broker.purge_dead("gone") == 1

    assert await broker.queues() == ["gone", "live"]


# -- workers --------------------------------------------------------------------------


def worker_info(worker_id: str, clock: FakeClock) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        hostname="host-1",
        pid=4242,
        queues=["default", "mail"],
        concurrency=8,
        started_at=clock.now() - 100,
        running=2,
        processed=17,
        extra={"version": "1.2", "tags": ["a", "b"]},
    )


async def test_register_worker_lists_it_with_last_seen(broker: Broker, clock: FakeClock) -> None:
    info = worker_info("w1", clock)

    await broker.register_worker(info, ttl_s=30)

    [seen] = await broker.workers()
    assert seen.id == "w1"
    assert (seen.hostname, seen.pid, seen.queues) == ("host-1", 4242, ["default", "mail"])
    assert (seen.concurrency, seen.running, seen.processed) == (8, 2, 17)
    assert seen.started_at == approx_time(info.started_at)
    assert seen.extra == {"version": "1.2", "tags": ["a", "b"]}
    assert seen.last_seen == approx_time(clock.now())


async def test_register_worker_again_refreshes_it(broker: Broker, clock: FakeClock) -> None:
    await broker.register_worker(worker_info("w1", clock), ttl_s=30)
    await broker.register_worker(worker_info("w2", clock), ttl_s=30)
    clock.advance(20)

    await broker.register_worker(replace(worker_info("w1", clock), processed=18), ttl_s=30)
    clock.advance(20)  # w2 lapsed at +30, w1 lives until +50

    [seen] = await broker.workers()
    assert (seen.id, seen.processed) == ("w1", 18)
    assert seen.last_seen == approx_time(clock.now() - 20)


async def test_worker_vanishes_after_ttl_and_sweep_forgets_it(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.register_worker(worker_info("w1", clock), ttl_s=10)
    await broker.register_worker(worker_info("w2", clock), ttl_s=100)

    clock.advance(9)
    assert sorted(w.id for w in await broker.workers()) == ["w1", "w2"]
    assert (await broker.sweep()).workers_removed == 0

    clock.advance(2)
    assert [w.id for w in await broker.workers()] == ["w2"]
    assert (await broker.sweep()).workers_removed == 1
    assert (await broker.sweep()).workers_removed == 0
    assert [w.id for w in await broker.workers()] == ["w2"]


async def test_unregister_worker_forgets_it(broker: Broker, clock: FakeClock) -> None:
    await broker.register_worker(worker_info("w1", clock), ttl_s=30)
    await broker.register_worker(worker_info("w2", clock), ttl_s=30)

    await broker.unregister_worker("w1")
    await broker.unregister_worker("never-registered")

    assert [w.id for w in await broker.workers()] == ["w2"]
