"""The jobs page's filters the brokers do not index (task, time range): every match
exactly once across pages, newest first, within a bounded read per page."""

from __future__ import annotations

from offload.brokers import from_url
from offload.codec import encode_envelope
from offload.dashboard import queries
from offload.dashboard.queries import JobFilter, list_filtered
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


async def test_a_time_range_stops_at_the_first_job_older_than_since(clock: FakeClock) -> None:
    start = clock.now()
    broker, ids = await enqueued(["t"] * 40, clock)
    f = JobFilter(since=start + 30, until=start + 34)
    page = await list_filtered(broker, f, limit=50, cursor=None)  # type: ignore[arg-type]
    assert [j.id for j in page.items] == ids[30:35][::-1]
    assert page.cursor is None and page.scanned == 11  # 39..29: the first older one ends it


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
