"""The dashboard's reads: the jobs page's filters (the task filter, which the brokers
do not index: every match exactly once across pages, newest first, within a bounded
read per page), and the overview's last hour from the per-minute end counts."""

from __future__ import annotations

from offload.brokers import from_url
from offload.brokers.base import Finished, Outcome
from offload.codec import encode_envelope
from offload.dashboard import queries
from offload.dashboard.queries import SPARK_H, WINDOW_MIN, JobFilter, last_hour, list_filtered
from offload.envelope import Envelope, new_job_id
from offload.testing import FakeClock


async def enqueued(tasks: list[str], clock: FakeClock) -> tuple[object, list[str]]:
    broker = from_url("memory://", clock=clock)
    await broker.connect()
    ids = []
    for task in tasks:
        env = Envelope(id=new_job_id(), task=task, created_at=clock.now())
        await broker.enqueue([(env, encode_envelope(env))])
        ids.append(env.id)
        clock.advance(1)
    return broker, ids


async def test_a_task_filter_walks_every_match_once_newest_first(clock: FakeClock) -> None:
    tasks = ["a" if i % 7 == 0 else "b" for i in range(300)]
    broker, ids = await enqueued(tasks, clock)
    wanted = [i for i, t in zip(ids, tasks, strict=True) if t == "a"][::-1]
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        page = await list_filtered(broker, JobFilter(task="a"), limit=10, cursor=cursor)  # type: ignore[arg-type]
        seen += [j.id for j in page.items]
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == wanted


async def test_a_time_range_is_filtered_by_the_broker(clock: FakeClock) -> None:
    start = clock.now()
    broker, ids = await enqueued(["t"] * 40, clock)
    f = JobFilter(since=start + 30, until=start + 34)
    page = await list_filtered(broker, f, limit=50, cursor=None)  # type: ignore[arg-type]
    assert [j.id for j in page.items] == ids[30:35][::-1]
    assert page.cursor is None and page.scanned == 5  # only the matches were read


async def test_a_task_filter_within_a_time_range_reads_only_that_range(
    clock: FakeClock,
) -> None:
    start = clock.now()
    tasks = ["a" if i % 3 == 0 else "b" for i in range(60)]
    broker, ids = await enqueued(tasks, clock)
    f = JobFilter(task="a", since=start + 10, until=start + 19)
    page = await list_filtered(broker, f, limit=50, cursor=None)  # type: ignore[arg-type]
    assert [j.id for j in page.items] == [ids[i] for i in (18, 15, 12)]
    assert page.scanned == 10


def test_last_hour_counts_done_and_failures_per_minute_of_the_window() -> None:
    now = 60.0 * 1000 + 30  # in minute 1000
    finished = [
        Finished("q", 1000, Outcome.SUCCEEDED, 90),
        Finished("q", 1000, Outcome.FAILED, 8),
        Finished("q", 1000, Outcome.DEAD, 2),
        Finished("q", 941, Outcome.EXPIRED, 30),  # the first minute of the window
        Finished("q", 940, Outcome.SUCCEEDED, 500),  # before it
        Finished("r", 999, Outcome.CANCELLED, 6),
    ]
    hours = last_hour(finished, now)
    q = hours["q"]
    assert len(q.done) == WINDOW_MIN
    assert (q.done[0], q.done[-1], sum(q.done)) == (30, 92, 122)
    assert q.per_minute == 122 / 60
    assert q.failure_rate == 10 / 130  # failed attempts and dead among every end
    assert hours["r"].failure_rate == 0 and hours["r"].done[-2] == 6
    points = [p.split(",") for p in q.spark(q.done).split()]
    assert len(points) == WINDOW_MIN and float(points[-1][1]) == 1.0  # the peak on top
    assert float(points[1][1]) == SPARK_H - 1  # a quiet minute at the bottom


async def test_a_rare_match_reads_at_most_the_budget_and_says_so(
    clock: FakeClock, monkeypatch: object
) -> None:
    monkeypatch.setattr(queries, "SCAN_BUDGET", 100)  # type: ignore[attr-defined]
    broker, ids = await enqueued(["a"] + ["b"] * 250, clock)
    first = await list_filtered(broker, JobFilter(task="a"), limit=10, cursor=None)  # type: ignore[arg-type]
    assert first.items == [] and first.exhausted_budget and first.scanned == 100
    assert first.cursor is not None
    rest = []
    cursor: str | None = first.cursor
    while cursor is not None:
        page = await list_filtered(broker, JobFilter(task="a"), limit=10, cursor=cursor)  # type: ignore[arg-type]
        rest += [j.id for j in page.items]
        cursor = page.cursor
    assert rest == [ids[0]]
