"""Enqueue inside the application's own PostgreSQL transaction, with a real worker.

Rollback: the job never exists. Commit: it runs. Before the commit, no worker can see
it; at the commit, NOTIFY wakes the idle worker (its poll interval is far longer than
these tests wait).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from offload import Offload, Worker
from offload.envelope import JobState
from offload.errors import ConfigurationError

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def app(postgres_url: str) -> AsyncIterator[Offload]:
    app = Offload(postgres_url)
    await app.connected_broker()  # creates the schema the app's connection writes into
    yield app
    await app.aclose()


@pytest.fixture
def users(postgres_url: str) -> str:
    """The application's own table, beside offload's in the test's schema."""
    return f'"{postgres_url.rpartition("schema=")[2]}".users'


@pytest.fixture
async def conn(postgres_dsn: str, users: str) -> AsyncIterator[Any]:
    """The application's own connection (not the broker's), with its `users` table."""
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        await conn.execute(f"CREATE TABLE {users} (email text PRIMARY KEY)")
        await conn.commit()
        yield conn


class Sent:
    """What the task saw: the emails it ran for."""

    def __init__(self) -> None:
        self.emails: list[str] = []
        self.event = asyncio.Event()


def register(app: Offload, sent: Sent) -> Any:
    @app.task(name="emails.welcome")
    async def welcome(email: str) -> str:
        sent.emails.append(email)
        sent.event.set()
        return f"sent to {email}"

    return welcome


async def running_worker(app: Offload) -> tuple[Worker, asyncio.Task[None]]:
    worker = Worker(app, poll_s=30.0)  # only a NOTIFY can wake it within a test
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.3)  # idle and listening
    return worker, task


async def stop(worker: Worker, task: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(task, 10)


async def test_rollback_means_the_job_never_exists(app: Offload, conn: Any, users: str) -> None:
    sent = Sent()
    welcome = register(app, sent)

    async with conn.transaction(force_rollback=True):
        await conn.execute(f"INSERT INTO {users} VALUES ('ada@example.com')")
        job = await welcome.enqueue_in_async(conn, "ada@example.com")

    assert await app.broker.get_job(job.id) is None
    assert await Worker(app).drain() == 0
    assert sent.emails == []
    rows = await (await conn.execute(f"SELECT count(*) FROM {users}")).fetchone()
    assert rows[0] == 0


async def test_uncommitted_job_is_invisible_then_commit_wakes_the_worker(
    app: Offload, conn: Any, users: str
) -> None:
    sent = Sent()
    welcome = register(app, sent)
    worker, task = await running_worker(app)
    try:
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {users} VALUES ('ada@example.com')")
            job = await welcome.enqueue_in_async(conn, "ada@example.com")
            await asyncio.sleep(0.5)  # the worker is awake and looking
            assert sent.emails == []
            assert await app.broker.get_job(job.id) is None  # other sessions see nothing
            # (This reserve also waits until the loop's listener, the worker's, LISTENs:
            # the NOTIFY at commit cannot be missed, however slowly the worker started.)
            leases = await app.broker.reserve(["default"], worker_id="x", lease_s=5, limit=5)
            assert leases == []
        await asyncio.wait_for(sent.event.wait(), 5)  # woken by the NOTIFY at commit
        assert await job.result_async(timeout=5) == "sent to ada@example.com"
    finally:
        await stop(worker, task)
    assert sent.emails == ["ada@example.com"]


async def test_sync_connection_commit_runs_and_rollback_does_not(
    app: Offload, postgres_dsn: str, postgres_url: str
) -> None:
    sent = Sent()
    welcome = register(app, sent)
    with psycopg.connect(postgres_dsn) as sync_conn:
        committed = welcome.options(key="welcome:ada").enqueue_in(sync_conn, "ada@example.com")
        sync_conn.commit()
        rolled_back = welcome.enqueue_in(sync_conn, "bob@example.com")
        sync_conn.rollback()
        again = welcome.options(key="welcome:ada").enqueue_in(sync_conn, "ada@example.com")
        sync_conn.commit()

    assert (committed.created, again.created, again.id) == (True, False, committed.id)
    assert await Worker(app).drain() == 1
    assert sent.emails == ["ada@example.com"]
    assert await app.broker.get_job(rolled_back.id) is None
    assert await committed.state_async() is JobState.SUCCEEDED


async def test_autocommit_connection_outside_a_transaction_is_refused(
    app: Offload, postgres_dsn: str
) -> None:
    welcome = register(app, Sent())
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as auto:
        with pytest.raises(ConfigurationError, match="autocommit"):
            await welcome.enqueue_in_async(auto, "ada@example.com")
        async with auto.transaction():  # an explicit block is a transaction to join
            job = await welcome.enqueue_in_async(auto, "ada@example.com")
    assert await app.broker.get_job(job.id) is not None


def test_brokers_without_transactions_refuse(tmp_path: Any) -> None:
    app = Offload(f"sqlite:///{tmp_path / 'o.db'}")

    @app.task
    def noop() -> None: ...

    with pytest.raises(ConfigurationError, match="cannot enqueue inside your transaction"):
        noop.enqueue_in(object())
    app.close()


async def _open_transaction(postgres_dsn: str) -> Any:
    """An application connection inside an open transaction that gives up on any lock
    wait after 5 s (so a blocked enqueue fails the test instead of hanging it)."""
    conn = await psycopg.AsyncConnection.connect(postgres_dsn)
    await conn.execute("SET lock_timeout = '5s'")
    return conn


@pytest.mark.parametrize("first_ends", ["commit", "rollback"])
async def test_first_enqueue_into_a_new_queue_does_not_block_other_transactions(
    app: Offload, postgres_dsn: str, first_ends: str
) -> None:
    welcome = register(app, Sent()).options(queue="brand-new")
    first = await _open_transaction(postgres_dsn)
    second = await _open_transaction(postgres_dsn)
    try:
        # Given a transaction that enqueued the first job of a new queue, still open
        a = await welcome.enqueue_in_async(first, "ada@example.com")
        # When another transaction enqueues into the same queue (no lock wait allowed)
        b = await welcome.enqueue_in_async(second, "bob@example.com")
        await second.commit()
        # Then it did not wait for the first; the first still commits (or rolls back)
        if first_ends == "commit":
            await first.commit()
        else:
            await first.rollback()
    finally:
        await first.close()
        await second.close()
    assert await app.broker.get_job(b.id) is not None
    assert (await app.broker.get_job(a.id) is not None) == (first_ends == "commit")
    assert "brand-new" in await app.broker.queues()
    assert (await app.broker.counts(["brand-new"]))["brand-new"].states[JobState.QUEUED] == (
        2 if first_ends == "commit" else 1
    )


async def test_max_depth_bounds_enqueue_but_not_enqueue_in(
    postgres_url: str, postgres_dsn: str
) -> None:
    """What the README says: a count that `QueueFull` could trust would lock the queue
    until the application's commit, so `enqueue_in` is not checked."""
    from offload import QueueFull

    app = Offload(postgres_url)
    try:

        @app.task(name="bounded", max_depth=1)
        async def bounded() -> None:
            pass

        await bounded.enqueue_async()
        with pytest.raises(QueueFull):
            await bounded.enqueue_async()
        async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
            async with conn.transaction():
                job = await bounded.enqueue_in_async(conn)
        assert job is not None and await job.state_async() is JobState.QUEUED
    finally:
        await app.aclose()
