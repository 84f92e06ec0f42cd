"""What the pages show, read through the public `Broker` inspection API only.

Every read here is bounded, so a page costs the same with a thousand jobs stored or a
million: listings are keyset pages (`list_jobs`' cursor, with the queue, state and
time range filtered by the broker), a key is one `find`, the filter the broker does not
index (task) scans at most `SCAN_BUDGET` jobs per request and says how far it got, with
a cursor to go on from there, and the overview's last hour is one `finished` read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice

from offload.app import Offload
from offload.brokers.base import Broker
from offload.brokers.records import (
    Finished,
    JobInfo,
    Outcome,
    Page,
    QueueStats,
    WorkerInfo,
    minute_of,
)
from offload.envelope import JobState
from offload.schedule import ScheduleEntry

__all__ = [
    "SCAN_BUDGET",
    "JobFilter",
    "JobListing",
    "LastHour",
    "QueueRow",
    "ScheduleRow",
    "WorkflowNode",
    "busy_workers",
    "last_hour",
    "consuming_workers",
    "list_filtered",
    "overview",
    "parse_time",
    "schedule_rows",
    "workflow_tree",
]

#: Most jobs one listing request reads to apply the filters the broker cannot (task,
#: time range): enough for a page among common tasks, small enough to stay fast.
SCAN_BUDGET = 2000
#: Ticks back the schedules page looks for a schedule's last fire.
LAST_FIRE_PROBES = 3

#: Order of the state columns everywhere: the life of a job, left to right.
STATES: tuple[JobState, ...] = (
    JobState.SCHEDULED,
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.DEAD,
    JobState.EXPIRED,
    JobState.CANCELLED,
)


#: Minutes of the overview's throughput and failure rate (the last hour).
WINDOW_MIN = 60
#: Outcomes that are a job's end (throughput); a failed attempt is not one.
DONE = frozenset({Outcome.SUCCEEDED, Outcome.DEAD, Outcome.CANCELLED, Outcome.EXPIRED})
#: Outcomes that count as failures (failure rate).
FAILURES = frozenset({Outcome.FAILED, Outcome.DEAD})
#: The sparkline's box, in SVG user units.
SPARK_W, SPARK_H = 120, 24


@dataclass(frozen=True, slots=True)
class LastHour:
    """A queue's last `WINDOW_MIN` minutes, from the broker's per-minute end counts
    (`Inspection.finished`): jobs that ended and failures per minute, oldest first."""

    done: tuple[int, ...]
    failures: tuple[int, ...]
    ends: int

    @property
    def per_minute(self) -> float:
        """Jobs that ended (succeeded, dead, cancelled, expired) per minute."""
        return sum(self.done) / len(self.done)

    @property
    def failure_rate(self) -> float | None:
        """Failed attempts and dead jobs among every end counted (attempts that ended,
        and jobs that ended without a worker); None when nothing ended."""
        return None if self.ends == 0 else sum(self.failures) / self.ends

    def spark(self, series: tuple[int, ...]) -> str:
        """`series` as the points of an SVG polyline in the sparkline's box, scaled to
        the larger of the two series (so failures are drawn against the jobs done)."""
        top = max(max(self.done), max(self.failures), 1)
        step = SPARK_W / max(len(series) - 1, 1)
        return " ".join(
            f"{i * step:.1f},{SPARK_H - 1 - (SPARK_H - 2) * n / top:.1f}"
            for i, n in enumerate(series)
        )


def last_hour(finished: Sequence[Finished], now: float) -> dict[str, LastHour]:
    """Each queue's `LastHour` from one `finished(since=now - 1 h)` answer; the current
    minute is the last of the window."""
    first = minute_of(now) - WINDOW_MIN + 1
    done: dict[str, list[int]] = {}
    failures: dict[str, list[int]] = {}
    ends: dict[str, int] = {}
    for f in finished:
        i = f.minute - first
        if not 0 <= i < WINDOW_MIN:
            continue
        done.setdefault(f.queue, [0] * WINDOW_MIN)
        failures.setdefault(f.queue, [0] * WINDOW_MIN)
        if f.outcome in DONE:
            done[f.queue][i] += f.count
        if f.outcome in FAILURES:
            failures[f.queue][i] += f.count
        ends[f.queue] = ends.get(f.queue, 0) + f.count
    return {q: LastHour(tuple(done[q]), tuple(failures[q]), ends[q]) for q in done}


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One queue on the overview."""

    name: str
    states: dict[JobState, int]
    oldest_age_s: float | None
    hour: LastHour | None = None

    @property
    def waiting(self) -> int:
        return self.states.get(JobState.QUEUED, 0) + self.states.get(JobState.SCHEDULED, 0)


def overview(
    stats: dict[str, QueueStats], now: float, finished: Sequence[Finished] = ()
) -> list[QueueRow]:
    """The overview's rows, from one `counts()` and one `finished()` call."""
    hours = last_hour(finished, now)
    return [
        QueueRow(
            name,
            {s: q.states.get(s, 0) for s in STATES},
            None if q.oldest_queued_at is None else max(now - q.oldest_queued_at, 0.0),
            hours.get(name),
        )
        for name, q in stats.items()
    ]


def busy_workers(workers: Sequence[WorkerInfo]) -> int:
    """Workers running at least one job right now."""
    return sum(1 for w in workers if w.running > 0)


#: A worker whose fetch loop got an answer from `reserve` this recently is consuming.
CONSUMING_S = 60.0


def consuming_workers(workers: Sequence[WorkerInfo], now: float) -> int:
    """Workers whose fetch loop reserved within `CONSUMING_S`: alive but not consuming
    (a stuck loop, a broker it cannot reach) is the failure an operator looks for."""
    return sum(
        1 for w in workers if (at := w.last_reserve_at) is not None and now - at <= CONSUMING_S
    )


@dataclass(frozen=True, slots=True)
class JobFilter:
    """The jobs page's filters. `queue`, `state` and the time range (`since`/`until`,
    on `created_at`) go to the broker; `task` is applied here, within the scan budget;
    `key` is one `find`."""

    queue: str | None = None
    state: JobState | None = None
    task: str | None = None
    key: str | None = None
    since: float | None = None
    until: float | None = None

    @property
    def scans(self) -> bool:
        """Whether a filter must be applied here, reading jobs the page may not show."""
        return bool(self.task)

    def matches(self, info: JobInfo) -> bool:
        if self.task and info.task != self.task:
            return False
        if self.since is not None and info.created_at < self.since:
            return False
        return self.until is None or info.created_at <= self.until


@dataclass(slots=True)
class JobListing:
    """A page of jobs, the cursor of the next one, and how many jobs were read."""

    items: list[JobInfo] = field(default_factory=list)
    cursor: str | None = None
    scanned: int = 0
    exhausted_budget: bool = False


async def list_filtered(
    broker: Broker, f: JobFilter, *, limit: int, cursor: str | None
) -> JobListing:
    """One page of jobs matching `f`, newest first (see `Inspection.list_jobs`)."""
    if f.key:
        info = await broker.find(f.key)
        found = info is not None and _fits(info, f)
        return JobListing([info] if found and info is not None else [], None, 1)

    async def page_of(n: int, at: str | None) -> Page:
        return await broker.list_jobs(
            queue=f.queue, state=f.state, since=f.since, until=f.until, limit=n, cursor=at
        )

    if not f.scans:
        page = await page_of(limit, cursor)
        return JobListing(page.items, page.cursor, len(page.items))
    listing = JobListing()
    # A page's worth first (a filter most jobs pass needs no more), then four times
    # more per read, so a rare match costs a few reads, not hundreds.
    batch = limit
    while len(listing.items) < limit:
        if listing.scanned >= SCAN_BUDGET:
            listing.exhausted_budget = True
            break
        batch = min(batch, SCAN_BUDGET - listing.scanned)
        page = await page_of(batch, cursor)
        batch *= 4
        listing.items += [info for info in page.items if f.matches(info)]
        listing.scanned += len(page.items)
        cursor = page.cursor
        if cursor is None:
            break
    listing.cursor = cursor
    return listing


def _fits(info: JobInfo, f: JobFilter) -> bool:
    if f.queue and info.queue != f.queue:
        return False
    if f.state is not None and info.state != f.state:
        return False
    return f.matches(info)


def parse_time(text: str | None) -> float | None:
    """A filter's time: ISO 8601 (`2026-11-30T04:00`, UTC unless it names a zone) or Unix
    seconds; None for an empty field.

    Raises:
        ValueError: the text is neither, naming what was given.
    """
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:  # NaN and infinity are no time (and no broker can seek to them)
        if not math.isfinite(seconds):
            raise ValueError(f"not a time: {text!r} (use 2026-11-30T04:00 or Unix seconds)")
        return seconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use 2026-11-30T04:00 or Unix seconds)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(slots=True)
class WorkflowNode:
    """A job of a workflow and the jobs it started (by `parent_id`)."""

    info: JobInfo
    children: list[WorkflowNode] = field(default_factory=list)


def workflow_tree(jobs: Sequence[JobInfo]) -> list[WorkflowNode]:
    """The workflow's jobs as a forest by parent id, each level in enqueue order."""
    nodes = {j.id: WorkflowNode(j) for j in jobs}
    roots: list[WorkflowNode] = []
    for job in jobs:
        envelope = job.envelope()
        parent = None if envelope is None else envelope.parent_id
        if parent is not None and parent in nodes and parent != job.id:
            nodes[parent].children.append(nodes[job.id])
        else:
            roots.append(nodes[job.id])
    return roots


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """One schedule: what it runs, when it fires next, and its last fire found."""

    entry: ScheduleEntry
    next_fire: float | None
    last_fire: float | None
    last_job: JobInfo | None


async def schedule_rows(
    app: Offload, broker: Broker, now: float | None = None
) -> list[ScheduleRow]:
    """Each schedule of `app` with its next fire and the newest of its last few fires
    whose job the broker still holds (a fire's job is found by its key)."""
    now = time.time() if now is None else now
    rows = []
    for entry in app.schedules.values():
        upcoming = entry.schedule.next_fires(now, 1)
        last_fire: float | None = None
        last_job = None
        for fire_ts in islice(entry.schedule.until(now), LAST_FIRE_PROBES):
            info = await broker.find(entry.key(fire_ts))
            if info is not None:
                last_fire, last_job = float(fire_ts), info
                break
        rows.append(
            ScheduleRow(entry, float(upcoming[0]) if upcoming else None, last_fire, last_job)
        )
    return rows
