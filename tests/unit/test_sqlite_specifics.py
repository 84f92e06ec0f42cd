"""What only the SQLite broker needs proving: the file, its URL, its schema version,
other connections and processes sharing it, and rows written by someone else.

The broker contract itself is proved by `tests/conformance/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from offload.brokers import from_url
from offload.brokers._sql import named_queries
from offload.brokers.base import EnqueueResult, Outcome
from offload.brokers.composite import with_state_store
from offload.brokers.sqlite import SQLiteBroker, database_path
from offload.brokers.sqlite._connection import SCHEMA_VERSION
from offload.brokers.sqlite._doorbell import Doorbell, wake_directory
from offload.brokers.sqlite._store import Store
from offload.codec import encode_envelope, encode_value
from offload.envelope import Envelope, ErrorInfo, JobState, Step, new_job_id
from offload.errors import ConfigurationError
from offload.testing import FakeClock
from tests.conformance.delivery_only import DeliveryOnly

MakeBroker = Callable[..., SQLiteBroker]


def job(clock: FakeClock, **fields: object) -> tuple[Envelope, bytes]:
    envelope = Envelope(id=new_job_id(), task="t", created_at=clock.now(), **fields)  # type: ignore[arg-type]
    return envelope, encode_envelope(envelope)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
async def make_broker(db_path: Path, clock: FakeClock) -> AsyncIterator[MakeBroker]:
    """Builds brokers on the test's file (each its own connection, like a process) and
    closes them all at the end."""
    made: list[SQLiteBroker] = []

    def make(path: Path = db_path, **kwargs: object) -> SQLiteBroker:
        kwargs.setdefault("clock", clock)
        broker = SQLiteBroker(f"sqlite:///{path}", **kwargs)  # type: ignore[arg-type]
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


# -- URL and file -----------------------------------------------------------------------


def test_url_with_three_slashes_is_relative_to_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert database_path("sqlite:///data/jobs.db") == tmp_path / "data" / "jobs.db"


def test_url_with_four_slashes_is_absolute() -> None:
    assert database_path("sqlite:////var/lib/offload/jobs.db") == Path("/var/lib/offload/jobs.db")


def test_url_path_is_percent_decoded() -> None:
    assert database_path("sqlite:////tmp/my%20jobs.db") == Path("/tmp/my jobs.db")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite:////tmp/dir/", "names no file"),
        ("sqlite://:memory:", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite://host/jobs.db", "no host"),
        ("sqlite:///jobs.db?mode=ro", "no options"),
    ],
)
def test_bad_url_is_a_configuration_error(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SQLiteBroker(url)


def test_from_url_builds_sqlite_broker(db_path: Path) -> None:
    broker = from_url(f"sqlite:///{db_path}")

    assert isinstance(broker, SQLiteBroker)
    assert broker.path == db_path
    assert not db_path.exists()  # nothing touches the disk before first use


async def test_connect_creates_parent_directories_and_uses_wal(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    path = tmp_path / "a" / "b" / "jobs.db"

    await make_broker(path).connect()

    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_connect_is_idempotent_and_close_too(make_broker: MakeBroker) -> None:
    broker = make_broker()
    await broker.connect()
    await broker.connect()

    await broker.close()
    await broker.close()


async def test_calls_connect_on_first_use_and_after_close(
    make_broker: MakeBroker, clock: FakeClock
) -> None:
    broker = make_broker()
    await broker.enqueue([job(clock)])
    await broker.close()

    assert (await broker.counts())["default"].states[JobState.QUEUED] == 1


async def test_file_that_is_not_a_database_is_refused(
    make_broker: MakeBroker, db_path: Path
) -> None:
    db_path.write_bytes(b"this is not a database, just some text" * 100)

    with pytest.raises(ConfigurationError, match="not an SQLite database"):
        await make_broker().connect()


async def test_file_with_newer_schema_version_is_refused(
    make_broker: MakeBroker, db_path: Path
) -> None:
    await make_broker().connect()
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE offload_meta SET value = '999' WHERE key = 'schema_version'")
    conn.close()

    broker = make_broker()
    with pytest.raises(ConfigurationError, match="schema version 999"):
        await broker.connect()
    # The failure is not cached: once the file is fixed, the same broker opens it.
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE offload_meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    await broker.connect()


async def test_version_4_file_upgrades_and_keeps_its_jobs(
    make_broker: MakeBroker, db_path: Path, clock: FakeClock
) -> None:
    # Given a version-4 file (this schema without `flow`, the outbox and the counts)
    # holding a chain step, a plain job, a succeeded job and a row whose payload is no
    # envelope,
    old = make_broker()
    step, plain, done = (
        job(clock, then=[Step(id=new_job_id(), task="next")]),
        job(clock),
        job(clock, queue="q"),
    )
    await old.enqueue([step, plain, done])
    [lease] = await old.reserve(["q"], worker_id="w", lease_s=30, limit=1)
    await old.ack(lease, encode_value("ok"), result_ttl_s=None)
    await old.close()
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("ALTER TABLE offload_jobs DROP COLUMN flow")
        conn.execute("DROP TABLE offload_outbox")
        conn.execute("DROP TABLE offload_counts")
        conn.execute("UPDATE offload_meta SET value = '4' WHERE key = 'schema_version'")
        conn.execute(
            "INSERT INTO offload_jobs (id, queue, task, state, created_at, due_at, payload) "
            "VALUES ('junk', 'default', '?', 'queued', 0, 0, ?)",
            (b"\xff\xfe not json",),
        )
    conn.close()

    # when a broker of this version opens it,
    broker = make_broker()
    await broker.connect()

    # it is the current version, with every job as it was,
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        version = conn.execute("SELECT value FROM offload_meta WHERE key = 'schema_version'")
        assert version.fetchone()[0] == str(SCHEMA_VERSION)
    conn.close()
    assert (await broker.counts())["default"].states[JobState.QUEUED] == 3
    info = await broker.get_job(done[0].id)
    assert info is not None and info.result_value() == "ok"
    # and every job it held goes to the outbox when it ends waiting.
    for job_id in (step[0].id, plain[0].id, "junk"):
        assert await broker.cancel(job_id)
    assert [entry.job_id for entry in await broker.outbox()] == [step[0].id, plain[0].id, "junk"]


async def test_version_7_file_gets_its_job_counts_once_and_keeps_them_exact(
    make_broker: MakeBroker, db_path: Path, clock: FakeClock
) -> None:
    # Given a file written before the count triggers (version 7) holding jobs in
    # several states and queues,
    old = make_broker()
    await old.enqueue([job(clock) for _ in range(5)] + [job(clock, queue="q") for _ in range(2)])
    [lease] = await old.reserve(["q"], worker_id="w", lease_s=30, limit=1)
    await old.ack(lease, encode_value("ok"), result_ttl_s=None)
    await old.close()
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("DROP TABLE offload_counts")
        conn.execute("UPDATE offload_meta SET value = '7' WHERE key = 'schema_version'")
    conn.close()

    # when a broker of this version opens it, its counts are the jobs it holds,
    broker = make_broker()
    await broker.connect()
    counts = await broker.counts()
    assert counts["default"].states[JobState.QUEUED] == 5
    assert counts["q"].states[JobState.QUEUED] == 1
    assert counts["q"].states[JobState.SUCCEEDED] == 1

    # and every later change moves them: a reservation, a bury, a purge, a cancel.
    [lease] = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=1)
    await broker.bury(lease, error=ErrorInfo("E", "boom"))
    assert await broker.purge_dead() == 1
    [queued, *_] = (await broker.list_jobs(queue="default", state=JobState.QUEUED)).items
    assert await broker.cancel(queued.id)
    states = (await broker.counts())["default"].states
    assert (states[JobState.QUEUED], states[JobState.DEAD], states[JobState.CANCELLED]) == (3, 0, 1)
    again = make_broker()  # a second connect counts nothing twice
    await again.connect()
    assert (await again.counts())["default"].states[JobState.QUEUED] == 3
    await again.close()


async def test_version_8_file_upgrades_and_counts_ends_from_then_on(
    make_broker: MakeBroker, db_path: Path, clock: FakeClock
) -> None:
    # Given a file written before the per-minute end counts (version 8) with a running
    # job,
    old = make_broker()
    await old.enqueue([job(clock) for _ in range(2)])
    [lease] = await old.reserve(["default"], worker_id="w", lease_s=30, limit=1)
    await old.close()
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("DROP TABLE offload_finished")
        conn.execute("UPDATE offload_meta SET value = '8' WHERE key = 'schema_version'")
    conn.close()

    # when a broker of this version opens it, it is the current version,
    broker = make_broker()
    await broker.connect()
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        version = conn.execute("SELECT value FROM offload_meta WHERE key = 'schema_version'")
        assert version.fetchone()[0] == str(SCHEMA_VERSION) == "9"
    # and the job settled after the upgrade is counted in its minute.
    await broker.ack(lease, encode_value("ok"), result_ttl_s=None)
    [counted] = await broker.finished(clock.now())
    assert (counted.queue, counted.outcome, counted.count) == ("default", Outcome.SUCCEEDED, 1)
    assert counted.minute == int(clock.now() // 60)


def recount(db_path: Path) -> dict[tuple[str, str], int]:
    """The jobs of the file counted by queue and state, from the rows themselves."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        rows = conn.execute("SELECT queue, state, count(*) FROM offload_jobs GROUP BY 1, 2")
        return {(q, s): n for q, s, n in rows}


async def counted(broker: SQLiteBroker) -> dict[tuple[str, str], int]:
    """The same as the broker's counters give them (`counts`)."""
    return {
        (queue, str(state)): n
        for queue, stats in (await broker.counts()).items()
        for state, n in stats.states.items()
        if n
    }


async def test_counts_equal_a_recount_after_every_kind_of_change(
    make_broker: MakeBroker, db_path: Path, clock: FakeClock
) -> None:
    # The counters are kept by the statements themselves (no triggers): after every
    # statement that inserts, moves or deletes jobs, they equal a count of the rows.
    broker = make_broker()
    boom = ErrorInfo("E", "boom")

    async def same(step: str) -> None:
        assert await counted(broker) == recount(db_path), step

    now = clock.now()
    await broker.enqueue([job(clock) for _ in range(8)] + [job(clock, queue="q")])
    await broker.enqueue([job(clock, not_before=now + 5), job(clock, expires_at=now + 1)])
    await broker.enqueue([job(clock, queue="idle", expires_at=now + 1) for _ in range(2)])
    await same("enqueue")
    leases = await broker.reserve(["default", "q"], worker_id="w", lease_s=30, limit=7)
    await same("reserve")
    ack, retry, bury, defer, stop, give, lapse = leases
    await broker.ack(ack, encode_value(1), result_ttl_s=None)
    await broker.retry(retry, at=now + 2, error=boom)
    await broker.bury(bury, error=boom)
    await broker.defer(defer, at=now + 2)
    await broker.cancel_running(stop, error=boom)
    await broker.release([give])
    await same("settle and release")
    waiting = (await broker.list_jobs(queue="default", state=JobState.QUEUED)).items
    assert await broker.cancel(waiting[0].id)
    await same("cancel")
    clock.advance(40)  # the lapsed lease, the due retries, the expiries
    await broker.reserve(["default"], worker_id="w", lease_s=30, limit=2)
    await same("reserve: promote, reclaim, expire")
    await broker.sweep()
    await same("sweep: expire")
    assert await broker.replay_dead() == 1
    await same("replay")
    [again] = await broker.reserve(["q"], worker_id="w", lease_s=30, limit=1)
    await broker.bury(again, error=boom)
    assert await broker.purge_dead() == 1
    await same("purge dead")
    clock.advance(broker.retention_s + 1)
    await broker.sweep()
    await same("sweep: purge")
    assert lapse is not None


async def test_counts_equal_a_recount_when_the_file_is_a_state_store(
    make_broker: MakeBroker, db_path: Path, clock: FakeClock
) -> None:
    # The ledger's own statements (record, due, claim) move jobs too, and keep the
    # counters as the broker's do.
    store = make_broker()
    broker = with_state_store(DeliveryOnly(from_url("memory://", clock=clock)), store)
    await broker.connect()
    boom = ErrorInfo("E", "boom")

    async def same(step: str) -> None:
        assert await counted(store) == recount(db_path), step

    now = clock.now()
    await broker.enqueue([job(clock) for _ in range(4)])
    await broker.enqueue([job(clock, not_before=now + 5), job(clock, expires_at=now + 1)])
    await same("record")
    first, second, third = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=3)
    await same("claim")
    await broker.ack(first, encode_value(1), result_ttl_s=None)
    await broker.retry(second, at=now + 2, error=boom)
    await same("settle")
    clock.advance(10)  # the retry and the delayed job are due, the expiring job expired
    leases = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=5)
    await same("due, expire, claim")
    await broker.release([third, *leases])
    await same("release")
    await broker.close()


#: The count triggers of schema version 8, as a version-8 file holds them.
VERSION_8_TRIGGERS = (
    """CREATE TRIGGER offload_count_insert AFTER INSERT ON offload_jobs BEGIN
        INSERT INTO offload_counts (queue, state, n) VALUES (new.queue, new.state, 1)
            ON CONFLICT (queue, state) DO UPDATE SET n = n + 1; END""",
    """CREATE TRIGGER offload_count_delete AFTER DELETE ON offload_jobs BEGIN
        UPDATE offload_counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
        END""",
    """CREATE TRIGGER offload_count_update AFTER UPDATE OF state, queue ON offload_jobs
        WHEN old.state IS NOT new.state OR old.queue IS NOT new.queue BEGIN
        UPDATE offload_counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
        INSERT INTO offload_counts (queue, state, n) VALUES (new.queue, new.state, 1)
            ON CONFLICT (queue, state) DO UPDATE SET n = n + 1; END""",
)


async def test_version_8_file_loses_its_count_triggers_and_keeps_exact_counts(
    make_broker: MakeBroker, db_path: Path, clock: FakeClock
) -> None:
    # Given a version-8 file, whose triggers kept its counts,
    old = make_broker()
    await old.connect()
    await old.close()
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        for statement in VERSION_8_TRIGGERS:
            conn.execute(statement)
        conn.execute("UPDATE offload_meta SET value = '8' WHERE key = 'schema_version'")
    conn.close()
    old = make_broker()
    await old.enqueue([job(clock) for _ in range(4)])  # counted by the triggers alone
    await old.close()

    # when a broker of this version opens it, the triggers are gone (else each change
    # would count twice), the counts are as they were, and each change counts once.
    broker = make_broker()
    await broker.connect()
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        assert triggers.fetchall() == []
    assert (await broker.counts())["default"].states[JobState.QUEUED] == 4
    await broker.reserve(["default"], worker_id="w", lease_s=30, limit=1)
    states = (await broker.counts())["default"].states
    assert (states[JobState.QUEUED], states[JobState.RUNNING]) == (3, 1)


async def test_data_survives_close_and_reopen(make_broker: MakeBroker, clock: FakeClock) -> None:
    first = make_broker()
    done, waiting = job(clock, queue="q", key="k"), job(clock, queue="q", priority=3)
    await first.enqueue([done, waiting])
    [lease] = await first.reserve(["q"], worker_id="w", lease_s=30, limit=1)
    assert lease.job_id == waiting[0].id
    await first.ack(lease, encode_value({"ok": 1}), result_ttl_s=None)
    await first.close()

    second = make_broker()

    info = await second.get_job(waiting[0].id)
    assert info is not None and info.state is JobState.SUCCEEDED
    assert info.result_value() == {"ok": 1}
    found = await second.find("k")
    assert found is not None and found.state is JobState.QUEUED
    assert await second.queues() == ["q"]


# -- rows and payloads ------------------------------------------------------------------


async def test_garbage_payload_is_still_leased_for_the_worker_to_bury(
    make_broker: MakeBroker, db_path: Path, clock: FakeClock
) -> None:
    broker = make_broker()
    await broker.connect()
    # Given a row written by another tool, with a payload that is no envelope,
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(
            "INSERT INTO offload_jobs (id, queue, task, state, max_attempts, created_at, "
            "due_at, payload) VALUES ('junk', 'default', '?', 'queued', 1, ?, ?, ?)",
            (clock.now(), clock.now(), b"\xff\xfe not json"),
        )
    conn.close()

    # when a worker reserves, it gets the bytes as they are;
    [lease] = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=10)

    assert (lease.job_id, lease.payload, lease.attempt) == ("junk", b"\xff\xfe not json", 1)
    info = await broker.get_job("junk")
    assert info is not None and info.envelope() is None
    # and inspection still works.
    assert (await broker.counts())["default"].states[JobState.RUNNING] == 1


async def test_enqueue_same_envelope_twice_stores_it_once(
    make_broker: MakeBroker, clock: FakeClock
) -> None:
    broker = make_broker()
    item = job(clock)

    assert await broker.enqueue([item]) == [EnqueueResult(item[0].id, True)]
    assert await broker.enqueue([item]) == [EnqueueResult(item[0].id, False)]

    assert (await broker.counts())["default"].states[JobState.QUEUED] == 1


# -- several connections and processes --------------------------------------------------


async def test_two_brokers_reserving_from_four_threads_lease_each_job_once(
    make_broker: MakeBroker, clock: FakeClock
) -> None:
    # Given 2000 jobs and two brokers on one file (two connections, as two processes
    # would have), each shared by two threads with event loops of their own,
    brokers = [make_broker(), make_broker()]
    jobs = [job(clock) for _ in range(2000)]
    await brokers[0].enqueue(jobs)

    start = threading.Barrier(4)

    async def drain(broker: SQLiteBroker, worker_id: str) -> list[str]:
        start.wait()  # blocks this thread's own loop only, until all four are ready
        taken: list[str] = []
        while leases := await broker.reserve(["default"], worker_id=worker_id, lease_s=60, limit=7):
            taken.extend(lease.job_id for lease in leases)
        return taken

    # when all four reserve at once until nothing is left,
    results = await asyncio.gather(
        *(asyncio.to_thread(asyncio.run, drain(brokers[i % 2], f"w{i}")) for i in range(4))
    )

    # every job was leased exactly once.
    taken = [job_id for result in results for job_id in result]
    assert len(taken) == len(set(taken)) == 2000
    assert set(taken) == {env.id for env, _ in jobs}
    assert all(results), [len(r) for r in results]
    assert (await brokers[1].counts())["default"].states[JobState.RUNNING] == 2000


_CHILD = """
import asyncio, json, sys
from offload.brokers.sqlite import SQLiteBroker

async def main():
    broker = SQLiteBroker("sqlite:///" + sys.argv[1])
    taken = []
    while leases := await broker.reserve(["default"], worker_id=sys.argv[2], lease_s=60,
                                         limit=5):
        for lease in leases:
            await broker.ack(lease, None, result_ttl_s=None)
            taken.append(lease.job_id)
    await broker.close()
    print(json.dumps(taken))

asyncio.run(main())
"""


async def test_worker_processes_sharing_the_file_run_each_job_once(
    make_broker: MakeBroker, db_path: Path
) -> None:
    broker = make_broker(clock=None)
    jobs = [job(FakeClock(time.time())) for _ in range(600)]
    await broker.enqueue(jobs)

    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CHILD, str(db_path), f"p{i}", stdout=subprocess.PIPE
        )
        for i in range(3)
    ]
    outputs = [await child.communicate() for child in children]

    assert [child.returncode for child in children] == [0, 0, 0]
    taken = [job_id for out, _ in outputs for job_id in json.loads(out)]
    assert sorted(taken) == sorted(env.id for env, _ in jobs)
    assert (await broker.counts())["default"].states[JobState.SUCCEEDED] == 600


# -- wait -------------------------------------------------------------------------------


async def test_wait_returns_early_when_another_connection_enqueues(
    make_broker: MakeBroker, clock: FakeClock
) -> None:
    waiting, producer = make_broker(), make_broker()
    await producer.connect()
    start = time.monotonic()
    waiter = asyncio.create_task(waiting.wait(["default"], 5.0))
    await asyncio.sleep(0.1)
    assert not waiter.done()

    await producer.enqueue([job(clock)])
    await asyncio.wait_for(waiter, 2.0)

    assert time.monotonic() - start < 1.0


async def test_wait_returns_at_once_when_the_same_broker_enqueues(
    make_broker: MakeBroker, clock: FakeClock
) -> None:
    broker = make_broker()
    await broker.connect()
    waiter = asyncio.create_task(broker.wait(["default"], 5.0))
    await asyncio.sleep(0.05)

    start = time.monotonic()
    await broker.enqueue([job(clock)])
    await asyncio.wait_for(waiter, 2.0)

    assert time.monotonic() - start < 0.1


async def test_wait_ignores_other_queues_and_other_state_changes(
    make_broker: MakeBroker, clock: FakeClock
) -> None:
    # Given a job in "default" that another connection will run to completion,
    waiting, other = make_broker(), make_broker()
    await other.enqueue([job(clock)])
    await waiting.connect()
    start = time.monotonic()
    waiter = asyncio.create_task(waiting.wait(["default"], 0.5))
    await asyncio.sleep(0.05)

    # when that connection reserves and acks it, and enqueues to another queue only,
    [lease] = await other.reserve(["default"], worker_id="w", lease_s=30, limit=1)
    await other.ack(lease, None, result_ttl_s=None)
    await other.enqueue([job(clock, queue="elsewhere")])
    await asyncio.wait_for(waiter, 2.0)

    # the waiter sleeps its full timeout: nothing became ready in "default".
    assert time.monotonic() - start >= 0.45


def test_broker_can_be_used_from_several_event_loops(db_path: Path, clock: FakeClock) -> None:
    broker = SQLiteBroker(f"sqlite:///{db_path}", clock=clock)
    envelope, payload = job(clock)

    asyncio.run(broker.enqueue([(envelope, payload)]))
    leases = asyncio.run(broker.reserve(["default"], worker_id="w", lease_s=30, limit=1))
    asyncio.run(broker.close())

    assert [lease.job_id for lease in leases] == [envelope.id]


async def test_wait_returns_when_the_broker_is_closed_and_does_not_reopen_it(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker()
    waiter = asyncio.create_task(broker.wait(["default"], 5.0))
    await asyncio.sleep(0.05)

    await broker.close()
    await asyncio.wait_for(waiter, 1.0)

    assert broker._state is None  # no connection or thread left behind


async def test_an_end_by_another_connection_wakes_wait_finished_within_a_poll(
    tmp_path: Path,
) -> None:
    # No push across processes: the waiter looks again when `PRAGMA data_version`
    # changes, every WAIT_POLL_S, instead of after a 5 to 250 ms backoff.
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'ends.db'}"
    waiter, other = from_url(url, clock=clock), from_url(url, clock=clock)
    await waiter.connect()
    await other.connect()
    try:
        envelope, payload = job(clock)
        await waiter.enqueue([(envelope, payload)])
        [lease] = await other.reserve(["default"], worker_id="w", lease_s=30, limit=1)
        waiting = asyncio.create_task(waiter.wait_finished(envelope.id, 10.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # nothing ended: it keeps waiting, quietly
        await other.ack(lease, encode_value(1), result_ttl_s=None)
        started = time.monotonic()
        await asyncio.wait_for(waiting, 2.0)
        assert time.monotonic() - started < 0.2
    finally:
        await waiter.close()
        await other.close()


def test_a_store_dropped_without_close_closes_its_connection(tmp_path: Path) -> None:
    """A broker a program forgets to close still closes its SQLite connection when it is
    collected, instead of leaving it to the connection's own finaliser (which Python
    3.13 reports as a ResourceWarning: "unclosed database")."""
    import gc

    from offload.brokers.sqlite._store import Store

    store = Store.open(tmp_path / "dropped.db", FakeClock(), 3600.0)
    conn = store._conn
    del store
    gc.collect()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")


def test_the_demos_user_store_dropped_without_close_closes_its_connection(
    tmp_path: Path,
) -> None:
    import gc

    from offload.demo.signup import UserStore

    store = UserStore(str(tmp_path / "users.db"))
    store.init()
    conn = store._conn
    assert conn is not None
    del store
    gc.collect()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")


async def test_version_8_file_gets_ledger_columns_and_reserve_skips_ledger_jobs(
    make_broker: MakeBroker, db_path: Path, clock: FakeClock
) -> None:
    # Given a file written before the ledger (version 8) holding a waiting job,
    old = make_broker()
    [plain] = await old.enqueue([job(clock)])
    await old.close()
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("DROP INDEX offload_jobs_publish")
        conn.execute("ALTER TABLE offload_jobs DROP COLUMN stamp")
        conn.execute("ALTER TABLE offload_jobs DROP COLUMN publish_by")
        conn.execute("UPDATE offload_meta SET value = '8' WHERE key = 'schema_version'")
    conn.close()

    # when a broker of this version opens it and records a job another part delivers,
    broker = make_broker()
    _, [copy] = await broker.record([job(clock)])
    clock.advance(3600)

    # the old job is reserved as before, and the ledger job never (nor given back).
    leases = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=10)
    assert [lease.job_id for lease in leases] == [plain.id]
    assert await broker.reserve(["default"], worker_id="w", lease_s=30, limit=10) == []
    info = await broker.get_job(copy.job_id)
    assert info is not None and info.state is JobState.QUEUED


async def test_a_time_range_of_a_rare_state_reads_that_states_index(
    make_broker: MakeBroker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from offload.brokers.sqlite import _inspect

    # Given three dead jobs among twenty,
    broker = make_broker()
    await broker.enqueue([job(clock) for _ in range(20)])
    for lease in await broker.reserve(["default"], worker_id="w", lease_s=30, limit=3):
        await broker.bury(lease, error=ErrorInfo("E", "boom"))

    async def index_for(queue: str | None, state: JobState | None) -> str:
        return await broker._run(_inspect._created_walk_index, queue, state)

    # a range of dead jobs reads the state's index (a rare state), with no state the
    # creation index, and so does a dead one once more than DIRECT_MAX are dead;
    assert await index_for(None, JobState.DEAD) == "offload_jobs_state"
    assert await index_for("default", JobState.DEAD) == "offload_jobs_queue_state"
    assert await index_for(None, None) == "offload_jobs_created"
    monkeypatch.setattr(_inspect, "DIRECT_MAX", 2)
    assert await index_for(None, JobState.DEAD) == "offload_jobs_created"
    # both list the same jobs.
    listed = await broker.list_jobs(state=JobState.DEAD, since=0.0, limit=2)
    monkeypatch.setattr(_inspect, "DIRECT_MAX", 10)
    again = await broker.list_jobs(state=JobState.DEAD, since=0.0, limit=2)
    assert [i.id for i in listed.items] == [i.id for i in again.items]
    assert listed.cursor == again.cursor is not None


async def test_statements_that_name_an_index_read_it_in_order_without_sorting(
    make_broker: MakeBroker, db_path: Path, clock: FakeClock
) -> None:
    # Given a file with the current schema,
    broker = make_broker()
    await broker.enqueue([job(clock)])
    await broker.close()
    ordered = {
        name: sql
        for name, sql in named_queries("offload.brokers.sqlite").items()
        if "INDEXED BY" in sql and "ORDER BY" in sql
    }
    assert "ready_in_queue" in ordered
    # every statement that walks a named index in an ORDER BY takes rows in index
    # order: a temporary sort would read every ready job at each reserve (1M deep:
    # 0.5 s per call, when ORDER BY named the cast aliases of ready_in_queue).
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        for name, sql in ordered.items():
            named = {p: None for p in re.findall(r":(\w+)", sql)}
            params = (None,) * sql.count("?") if "?" in sql else named
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
            assert not [step for step in plan if "TEMP B-TREE" in step], (name, plan)


# -- the doorbell: cross-process wake-ups without polling (issue 16) --------------------

_ENQUEUER = """
import asyncio, sys, time
from offload.brokers.sqlite import SQLiteBroker
from offload.codec import encode_envelope
from offload.envelope import Envelope, new_job_id

async def main():
    broker = SQLiteBroker("sqlite:///" + sys.argv[1])
    await broker.connect()
    print("ready", flush=True)
    while (await asyncio.to_thread(sys.stdin.readline)).strip():
        env = Envelope(id=new_job_id(), task="t", created_at=time.time())
        await broker.enqueue([(env, encode_envelope(env))])
    await broker.close()

asyncio.run(main())
"""


async def _wake_latencies(waiting: SQLiteBroker, db_path: Path, rounds: int) -> list[float]:
    """How long `waiting.wait` took to return after another process was asked to
    enqueue, `rounds` times (each includes that process's enqueue)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ENQUEUER, str(db_path),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
        latencies = []
        for _ in range(rounds):
            waiter = asyncio.create_task(waiting.wait(["default"], 30.0))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            start = time.monotonic()
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            await asyncio.wait_for(waiter, 30.0)
            latencies.append(time.monotonic() - start)
            taken = await waiting.reserve(["default"], worker_id="w", lease_s=30, limit=1)
            assert len(taken) == 1
        return latencies
    finally:
        child.stdin.write(b"\n")
        child.stdin.close()
        await asyncio.wait_for(child.wait(), 30)


async def test_an_enqueue_in_another_process_wakes_wait_long_before_the_poll(
    make_broker: MakeBroker, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a fallback poll of 10 s (a wait looks first 10 s after it starts),
    monkeypatch.setattr("offload.brokers.sqlite.WAIT_POLL_S", 10.0)
    waiting = make_broker(clock=None)
    await waiting.connect()

    # each of three enqueues by another process wakes the waiter within 2 s (a
    # millisecond or so on a quiet machine), where the poll alone would take 10 s.
    latencies = await _wake_latencies(waiting, db_path, rounds=3)

    assert max(latencies) < 2.0, latencies


async def test_a_ring_naming_the_queue_wakes_a_waiter_without_a_poll(
    make_broker: MakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a fallback poll of 10 s and a count of the polls,
    monkeypatch.setattr("offload.brokers.sqlite.WAIT_POLL_S", 10.0)
    polls: list[object] = []
    poll_signal = Store.poll_signal

    def counted(store: Store, *args: Any) -> Any:
        polls.append(args)
        return poll_signal(store, *args)

    monkeypatch.setattr(Store, "poll_signal", counted)
    waiting, other = make_broker(clock=None), make_broker(clock=None)
    await waiting.connect()
    waiter = asyncio.create_task(waiting.wait(["a"], 30.0))
    await asyncio.sleep(0.05)

    # a job of another queue, enqueued by another broker (process), rings it: it
    # neither returns nor polls;
    envelope = Envelope(id=new_job_id(), task="t", queue="b", created_at=time.time())
    await other.enqueue([(envelope, encode_envelope(envelope))])
    await asyncio.sleep(0.2)
    assert not waiter.done() and polls == []

    # one of its own queue returns it at once, still without a poll.
    envelope = Envelope(id=new_job_id(), task="t", queue="a", created_at=time.time())
    await other.enqueue([(envelope, encode_envelope(envelope))])
    await asyncio.wait_for(waiter, 2.0)
    assert polls == []


async def test_a_ring_without_names_makes_the_waiter_poll(
    make_broker: MakeBroker, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As an older version rings: the poll decides, at once."""
    monkeypatch.setattr("offload.brokers.sqlite.WAIT_POLL_S", 10.0)
    waiting, other = make_broker(clock=None), make_broker(clock=None)
    await waiting.connect()
    waiter = asyncio.create_task(waiting.wait(["a"], 30.0))
    await asyncio.sleep(0.05)
    older = Doorbell(db_path, lambda: None)
    monkeypatch.setattr(older, "ring", lambda queues=(): Doorbell.ring(older))
    monkeypatch.setattr(other, "_doorbell", older)
    envelope = Envelope(id=new_job_id(), task="t", queue="a", created_at=time.time())
    await other.enqueue([(envelope, encode_envelope(envelope))])
    await asyncio.wait_for(waiter, 2.0)
    older.close()


def test_ringing_removes_the_sockets_of_brokers_that_are_gone(tmp_path: Path) -> None:
    # Given a socket left behind by a process that died (bound, then closed),
    bell = Doorbell(tmp_path / "jobs.db", lambda: None)
    bell.directory.mkdir()
    stale = bell.directory / "1-dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(stale))

    # a ring finds its send refused and removes it.
    bell.ring()
    bell.close()
    assert not stale.exists()


def test_a_waiting_broker_hears_a_ring_and_leaves_no_socket_behind(tmp_path: Path) -> None:
    heard = threading.Event()
    waiting = Doorbell(tmp_path / "jobs.db", heard.set)
    ringing = Doorbell(tmp_path / "jobs.db", lambda: None)
    waiting.listen()
    [bound] = list(waiting.directory.iterdir())

    ringing.ring()
    assert heard.wait(5.0)
    assert waiting.rings == 1

    waiting.close()
    ringing.close()
    assert not bound.exists()


def test_a_database_path_too_long_for_a_socket_rings_in_the_temp_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120) / "jobs.db"
    directory = wake_directory(deep)
    assert directory.parent == Path(tempfile.gettempdir())
    assert directory == wake_directory(deep)  # the same for every process
