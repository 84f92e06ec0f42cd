"""The bad-input table, on every broker. Each row is bad input of one kind; every row
ends in a clear error at the producer (an `OffloadError` naming the field, nothing
stored) or in the job buried with the reason, while the worker stays alive and the
other jobs (one running beside it, others queued behind it, on its queue and another)
succeed with no attempt charged.

This table is the spec of fixes in flight: rows fail until their point of issue 10
lands (NaN, nesting, priority, delay, NUL: point 10 `input`; sys.exit and
KeyboardInterrupt: point 5 `exits`; the corrupt Redis record: point 6; the 20 MB error:
point 13). Each row's note in the summary says what it waits for."""

from __future__ import annotations

import functools
import math
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from offload import JobState, Offload, OffloadError
from tests.chaos._harness import BROKERS, Fleet, wait_for
from tests.chaos._report import record

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

SCENARIO = "6 bad input"


@dataclass(frozen=True)
class ProducerRow:
    """Bad input the producer must refuse: `enqueue` raises an OffloadError whose
    message names `field`."""

    enqueue: Callable[[Offload], Any]
    field: str
    waits_for: str


def _nested(depth: int) -> list[Any]:
    return functools.reduce(lambda inner, _: [inner], range(depth), [])


PRODUCER_ROWS = {
    "unserializable argument": ProducerRow(lambda app: app.enqueue("ok", object()), "argument", ""),
    "NaN argument": ProducerRow(lambda app: app.enqueue("ok", math.nan), "argument", "point 10"),
    "Infinity argument": ProducerRow(
        lambda app: app.enqueue("ok", -math.inf), "argument", "point 10"
    ),
    "argument nested 10,000 deep": ProducerRow(
        lambda app: app.enqueue("ok", _nested(10_000)), "argument", "point 10"
    ),
    "priority 2**63": ProducerRow(
        lambda app: app.options("ok", priority=2**63).enqueue(1), "priority", "point 10"
    ),
    "NaN delay": ProducerRow(
        lambda app: app.options("ok", delay=math.nan).enqueue(1), "delay", "point 10"
    ),
    "NUL in queue name": ProducerRow(
        lambda app: app.options("ok", queue="a\0b").enqueue(1), "queue", "point 10"
    ),
    "NUL in key": ProducerRow(
        lambda app: app.options("ok", key="k\0k").enqueue(1), "key", "point 10"
    ),
}


@pytest.mark.parametrize("row", list(PRODUCER_ROWS))
@pytest.mark.parametrize("name", BROKERS)
def test_bad_input_is_refused_at_the_producer_naming_the_field(
    name: str, row: str, tmp_path: Path, broker_url: Callable[[str], str]
) -> None:
    spec = PRODUCER_ROWS[row]
    fleet = Fleet(tmp_path, broker_url(name))
    try:
        problems: list[str] = []
        try:
            spec.enqueue(fleet.app)
            problems.append("accepted")
        except OffloadError as exc:
            if spec.field not in str(exc):
                problems.append(f"error does not name the {spec.field}: {exc!s:.100}")
        except Exception as exc:  # a raw error from a library or a broker
            problems.append(f"raw {type(exc).__name__}")
        after = fleet.app.enqueue("ok", 1)  # the producer goes on
        stored = sum(fleet.states(None).values())
        if stored != 1:
            problems.append(f"{stored - 1} jobs stored")
        record(
            name,
            SCENARIO,
            jobs=2,
            faults=1,
            lost=0 if after.info().state is JobState.QUEUED else 1,
            overlapping=0,
            stuck=0,
            note=f"{row} fails ({spec.waits_for or 'new'})" if problems else "",
        )
        assert not problems, problems
    finally:
        fleet.close()


# -- rows the worker meets --------------------------------------------------------------


def _corrupt(fleet: Fleet, job_id: str) -> None:
    """Garbage in one stored job, as a disk, a bug or another writer could leave it:
    the payload on SQL brokers, the state record on Redis (point 6)."""
    parts = urlsplit(fleet.url)
    garbage = b"\xc1{not json, not msgpack"
    if parts.scheme == "sqlite":
        with sqlite3.connect(parts.path) as db:
            db.execute("UPDATE offload_jobs SET payload = ? WHERE id = ?", (garbage, job_id))
        return
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    if parts.scheme.startswith("postgres"):
        import psycopg

        dsn = fleet.url.split("?")[0]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'SET search_path = "{query["schema"]}"')
            conn.execute("UPDATE offload_jobs SET payload = %s WHERE id = %s", (garbage, job_id))
        return
    import redis
    import redis.cluster

    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    client: Any = (
        redis.cluster.RedisCluster(host=host, port=port)
        if query.get("cluster") == "true"
        else redis.Redis(host=host, port=port)
    )
    with client:
        assert client.hset(f"{query['prefix']}:{{default}}:record", job_id, garbage) == 0


def _enqueue_corrupt(fleet: Fleet) -> str:
    job = fleet.app.options("ok", delay=2).enqueue(1)  # not reserved before it is spoilt
    _corrupt(fleet, job.id)
    return job.id


@dataclass(frozen=True)
class WorkerRow:
    """A job the worker must bury with `reason` (the error type), and live on."""

    enqueue: Callable[[Fleet], str]
    reason: str
    waits_for: str


WORKER_ROWS = {
    "unknown task": WorkerRow(
        lambda f: f.app.enqueue("reports.not_deployed", 1).id, "UnknownTask", ""
    ),
    "corrupt record in the broker": WorkerRow(_enqueue_corrupt, "Undecodable", "point 6"),
    "sync handler calls sys.exit()": WorkerRow(
        lambda f: f.app.enqueue("exits").id, "SystemExit", "point 5"
    ),
    "async handler calls sys.exit()": WorkerRow(
        lambda f: f.app.enqueue("aexits").id, "SystemExit", "point 5"
    ),
    "sync handler raises KeyboardInterrupt": WorkerRow(
        lambda f: f.app.enqueue("interrupt").id, "KeyboardInterrupt", "point 5"
    ),
    "async handler raises KeyboardInterrupt": WorkerRow(
        lambda f: f.app.enqueue("ainterrupt").id, "KeyboardInterrupt", "point 5"
    ),
    "20 MB error message": WorkerRow(
        lambda f: f.app.enqueue("huge_error").id, "ValueError", "point 13"
    ),
}

#: A stored error far below the 20 MB raised, yet above any sensible cut (point 13).
MAX_STORED_ERROR = 2_000_000


def _check_bad_job(fleet: Fleet, row: str, bad: str, spec: WorkerRow) -> list[str]:
    problems: list[str] = []
    try:
        info = fleet.infos([bad])[bad]
    except Exception as exc:  # e.g. the broker cannot read its own record
        return [f"the bad job's info raises {type(exc).__name__}"]
    if info is None or info.state is not JobState.DEAD:
        problems.append(f"bad job {None if info is None else info.state}, not dead")
    elif info.error is None or spec.reason not in info.error.type:
        problems.append(f"buried as {info.error and info.error.type!r}, not {spec.reason}")
    elif len(info.error.message) + len(info.error.traceback) > MAX_STORED_ERROR:
        problems.append(f"stored error of {len(info.error.message):,} characters")
    if row == "20 MB error message":
        try:
            shown = fleet.offload("show", bad, timeout=20)
            if shown.returncode != 0 or len(shown.stdout) > MAX_STORED_ERROR:
                problems.append(f"offload show: exit {shown.returncode}, {len(shown.stdout):,} B")
        except subprocess.TimeoutExpired:
            problems.append("offload show took over 20 s")
    return problems


def _settled(fleet: Fleet, ids: list[str]) -> bool:
    try:
        return fleet.settled(ids)
    except Exception:  # a record the broker cannot read: settled it is not
        return False


@pytest.mark.parametrize("row", list(WORKER_ROWS))
@pytest.mark.parametrize("name", BROKERS)
def test_bad_job_is_buried_with_the_reason_and_the_worker_and_other_jobs_go_on(
    name: str, row: str, tmp_path: Path, broker_url: Callable[[str], str]
) -> None:
    spec = WORKER_ROWS[row]
    fleet = Fleet(tmp_path, broker_url(name))
    try:
        worker = fleet.start_worker("-c", "4", "--lease", "5", "-q", "default,other")
        innocent = fleet.app.enqueue("work", 1.5).id  # running when the bad job comes
        wait_for(lambda: innocent in fleet.runs(), timeout=60)
        bad = spec.enqueue(fleet)
        others = [j.id for j in fleet.app.options("ok").enqueue_many([(i,) for i in range(10)])]
        others += [j.id for j in fleet.app.options("ok", queue="other").enqueue_many([(1,), (2,)])]
        everyone = [bad, innocent, *others]
        try:
            wait_for(lambda: _settled(fleet, everyone) or worker.poll() is not None, timeout=30)
        except AssertionError:
            pass
        problems = _check_bad_job(fleet, row, bad, spec)
        tally = fleet.tally([innocent, *others])
        innocent_info = fleet.infos([innocent])[innocent]
        if tally.lost or tally.stuck:
            problems.append(f"other jobs: {len(tally.lost)} lost, {len(tally.stuck)} stuck")
        if innocent_info is not None and innocent_info.attempt != 1:
            problems.append("the innocent job was charged an attempt")
        if worker.poll() is not None:
            problems.append(f"the worker exited ({worker.returncode})")
        tally.record(
            name,
            SCENARIO,
            jobs=len(everyone),
            faults=1,
            note=f"{row} fails ({spec.waits_for or 'new'})" if problems else "",
        )
        assert not problems, problems
    finally:
        fleet.close()
