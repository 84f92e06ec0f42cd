"""Inspection: `list_jobs` by creation time (`since` / `until`), with the other filters
and across pages."""

from __future__ import annotations

from offload.brokers.base import Broker, Page
from offload.envelope import JobState
from offload.testing import FakeClock

from ..helpers import make_job, reserve_one

T0 = 1_700_000_000.0


async def walk(broker: Broker, *, limit: int, **filters: object) -> list[Page]:
    """Every page of a `list_jobs` listing, following cursors to the end."""
    pages = [await broker.list_jobs(limit=limit, **filters)]  # type: ignore[arg-type]
    while (cursor := pages[-1].cursor) is not None:
        assert len(pages) < 100, "the cursor never reached the end"
        more = await broker.list_jobs(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        pages.append(more)
    return pages


def ids(pages: list[Page]) -> list[str]:
    return [info.id for page in pages for info in page.items]


async def created_at(broker: Broker, clock: FakeClock, queue: str, *times: float) -> list[str]:
    """One job of `queue` per time in `times`, each enqueued (in that order) with that
    `created_at`, one second of the clock apart."""
    out = []
    for t in times:
        envelope, payload = make_job(clock, queue=queue, created_at=t)
        [result] = await broker.enqueue([(envelope, payload)])
        out.append(result.id)
        clock.advance(1)
    return out


async def test_list_jobs_by_time_range_includes_both_ends_across_pages(
    broker: Broker, clock: FakeClock
) -> None:
    # Given jobs created one second apart in two queues, newest enqueued last,
    a = await created_at(broker, clock, "a", *(T0 + i for i in range(10)))
    b = await created_at(broker, clock, "b", *(T0 + 10 + i for i in range(5)))

    # a range lists exactly the jobs created within it, both ends included, newest
    # first, on every page of a small limit,
    pages = await walk(broker, limit=2, since=T0 + 3, until=T0 + 12)
    assert ids(pages) == (a[3:] + b[:3])[::-1]
    assert all(len(p.items) == 2 for p in pages[:-1])
    # one end alone bounds it on that side,
    assert ids(await walk(broker, limit=4, since=T0 + 12)) == b[2:][::-1]
    assert ids(await walk(broker, limit=4, until=T0 + 1)) == a[:2][::-1]
    # with a queue it lists that queue's only, and a range holding nothing is empty.
    assert ids(await walk(broker, limit=3, queue="a", since=T0 + 8)) == a[8:][::-1]
    assert await broker.list_jobs(since=T0 + 100) == Page([], None)
    assert await broker.list_jobs(until=T0 - 0.001) == Page([], None)


async def test_list_jobs_by_time_range_to_the_fraction_of_a_second(
    broker: Broker, clock: FakeClock
) -> None:
    # Given jobs created within one millisecond of each other,
    near = await created_at(broker, clock, "a", T0 + 0.0004, T0 + 0.0008, T0 + 0.0012)

    # the bounds cut between them by their exact times.
    assert ids(await walk(broker, limit=5, since=T0 + 0.0005, until=T0 + 0.0011)) == [near[1]]
    assert ids(await walk(broker, limit=5, since=T0 + 0.0004, until=T0 + 0.0004)) == [near[0]]


async def test_list_jobs_by_time_range_and_state(broker: Broker, clock: FakeClock) -> None:
    # Given six jobs created in order, the first two of them running,
    jobs = await created_at(broker, clock, "a", *(T0 + i for i in range(6)))
    running = []
    for _ in range(2):
        lease = await reserve_one(broker, ("a",))
        running.append(lease.job_id)
    assert running == jobs[:2]

    # the state and the range both hold on every job listed.
    listed = await walk(broker, limit=1, state=JobState.RUNNING, since=T0 + 1)
    assert ids(listed) == [jobs[1]]
    queued = await walk(broker, limit=2, state=JobState.QUEUED, until=T0 + 4)
    assert ids(queued) == jobs[2:5][::-1]


async def test_list_jobs_by_time_range_lists_jobs_created_out_of_enqueue_order(
    broker: Broker, clock: FakeClock
) -> None:
    # Given jobs whose creation times do not follow their enqueue order (producers
    # with their own clocks),
    jobs = await created_at(broker, clock, "a", T0 + 5, T0 + 1, T0 + 9, T0 + 3, T0 + 7)

    # a range lists the jobs created within it newest created first, across pages.
    pages = await walk(broker, limit=2, since=T0 + 2, until=T0 + 8)
    assert ids(pages) == [jobs[4], jobs[0], jobs[3]]


async def test_list_jobs_by_time_range_orders_equal_creation_times_by_enqueue(
    broker: Broker, clock: FakeClock
) -> None:
    # Given jobs created at the same instant, enqueued one after another,
    same = await created_at(broker, clock, "a", *([T0 + 1] * 5))
    await created_at(broker, clock, "a", T0 + 2)

    # pages of a range walk them newest enqueued first, each once.
    assert ids(await walk(broker, limit=2, until=T0 + 1)) == same[::-1]
