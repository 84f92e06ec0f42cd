"""The PostgreSQL listener passes a cancellation on wherever it lands: a worker stopped
while idle cancels its `wait_for_work`, and must not sleep on for its poll interval.
And a listener that lost its connection and cannot get another holds up no `reserve`,
and wakes the waiters once it is back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from offload import Backoff
from offload._health import Attempts
from offload.brokers import from_url
from offload.brokers.postgres._listener import _wait_set
from offload.brokers.roles import Broker
from offload.testing import FakeClock
from tests.conformance.helpers import make_job

pytest.importorskip("psycopg")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def broker(postgres_url: str) -> AsyncIterator[Broker]:
    broker = from_url(postgres_url)
    await broker.connect()
    await broker.wait(["default"], 0)  # the listener LISTENs from here on
    try:
        yield broker
    finally:
        await broker.close()


@pytest.mark.parametrize("turns", range(8))
async def test_a_cancelled_wait_ends_in_whichever_loop_turn_the_cancel_lands(
    broker: Broker, turns: int
) -> None:
    # Before, `Listener.start` waited for its (already set) "listening" event with
    # `asyncio.wait_for`, which on Python 3.11 drops a cancel that lands in the loop turn
    # after its inner task finished: the call then slept on in `wait` for the full 30 s.
    waiting = asyncio.create_task(broker.wait(["default"], 30.0))
    for _ in range(turns):
        await asyncio.sleep(0)
    waiting.cancel()
    done, _ = await asyncio.wait({waiting}, timeout=2)
    assert waiting in done, f"wait() still running 2 s after a cancel {turns} loop turns in"
    assert waiting.cancelled()


async def test_an_event_set_in_the_turn_of_the_cancel_still_cancels_the_wait() -> None:
    # The wait that is not already over: set and cancelled in one loop turn, it must end
    # cancelled (`asyncio.wait_for` on Python 3.11 returned as if set).
    event = asyncio.Event()
    for turns in range(4):
        event.clear()
        waiting = asyncio.create_task(_wait_set(event, 30.0))
        for _ in range(turns):
            await asyncio.sleep(0)
        event.set()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting


# -- a listener that cannot reconnect ----------------------------------------------------


@pytest.fixture
def own_role(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    """A login role of this test's own (its name, and the test DSN as that role), whose
    connection limit the test may lower; dropped after, with all it owns."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"offload_t_{uuid.uuid4().hex[:10]}"
    database = conninfo_to_dict(postgres_dsn)["dbname"]
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        admin.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(str(database)), sql.Identifier(name)
            )
        )
    params = conninfo_to_dict(postgres_dsn)
    dsn = "postgresql://{user}@{host}:{port}/{dbname}".format(
        **{"port": 5432, "host": "127.0.0.1", **params, "user": name}
    )
    assert make_conninfo(dsn)
    try:
        yield name, dsn
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _admin(postgres_dsn: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        cursor = admin.execute(query.encode(), params)  # (a composed query, not user input)
        return cursor.fetchall() if cursor.description else []


async def test_a_listener_that_cannot_reconnect_holds_up_no_reserve_and_wakes_waiters_once_back(
    own_role: tuple[str, str], postgres_dsn: str
) -> None:
    name, dsn = own_role
    broker = from_url(f"{dsn}?schema=offload_t_{uuid.uuid4().hex[:10]}")
    await broker.connect()
    try:
        await broker.wait(["default"], 0)  # LISTEN is in effect
        listener = (await broker._state()).listener  # type: ignore[attr-defined]
        listener._attempts = Attempts(Backoff(base_s=1.0, cap_s=1.0, jitter=False))
        # The role may keep the connections it has, but not open another: then its
        # listener's connection is ended, and the listener cannot come back.
        count = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
        held = _admin(postgres_dsn, count, name)[0][0]
        _admin(postgres_dsn, f'ALTER ROLE "{name}" CONNECTION LIMIT {held - 1}')
        listening = f"{count} AND query LIKE 'LISTEN%%'"
        cut = _admin(postgres_dsn, listening.replace("count(*)", "pg_terminate_backend(pid)"), name)
        assert len(cut) == 1, "the listener's connection was not found: the test proves nothing"
        await asyncio.sleep(0.3)  # the listener sees the loss
        assert _admin(postgres_dsn, listening, name)[0][0] == 0

        # Reserves go on at once without it (before: each waited 5 s for LISTEN).
        started = time.monotonic()
        for _ in range(3):
            assert await broker.reserve(["default"], worker_id="w", lease_s=30, limit=1) == []
        assert time.monotonic() - started < 2.5

        # Each failed attempt to reconnect wakes the waiters (they poll meanwhile). Just
        # after one, a worker reserves, finds nothing and waits; a job is committed (its
        # NOTIFY reaches no one) and the role may connect again: the next attempt, a
        # second later, brings LISTEN back and must wake the worker to look (before,
        # it slept through to its timeout).
        while listener._attempts.failures < 2:
            await broker.wait(["default"], 5.0)
        assert await broker.reserve(["default"], worker_id="w", lease_s=30, limit=1) == []
        waiting = asyncio.create_task(broker.wait(["default"], 30.0))
        [created] = await broker.enqueue([make_job(FakeClock())])
        _admin(postgres_dsn, f'ALTER ROLE "{name}" CONNECTION LIMIT -1')
        await asyncio.wait_for(waiting, 5)
        assert _admin(postgres_dsn, listening, name)[0][0] == 1
        leases = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=1)
        assert [lease.job_id for lease in leases] == [created.id]
    finally:
        await broker.close()


async def test_a_listener_that_never_connects_is_reported_once_and_the_worker_polls(
    own_role: tuple[str, str], postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    name, dsn = own_role
    broker = from_url(f"{dsn}?schema=offload_t_{uuid.uuid4().hex[:10]}")
    await broker.connect()  # (its pool holds one connection)
    try:
        _admin(postgres_dsn, f'ALTER ROLE "{name}" CONNECTION LIMIT 1')
        caplog.set_level("WARNING", logger="offload.brokers.postgres._listener")
        started = time.monotonic()
        await broker.wait(["default"], 0)  # the first start waits for LISTEN: 5 s
        assert 4.5 < time.monotonic() - started < 8
        for _ in range(3):  # and no later call waits again
            started = time.monotonic()
            assert await broker.reserve(["default"], worker_id="w", lease_s=30, limit=1) == []
            await broker.wait(["default"], 0.1)
            assert time.monotonic() - started < 2.5  # (before: 5 s each)
        said = [r.getMessage() for r in caplog.records if "LISTEN not in effect" in r.getMessage()]
        assert said == [
            "postgres listener: LISTEN not in effect after 5 s; idle workers poll for jobs "
            "until it is"
        ]
    finally:
        await broker.close()


async def test_the_first_wait_looks_for_a_job_committed_before_its_listen(
    postgres_url: str,
) -> None:
    """A job committed after a process's first `wait` began but before its LISTEN took
    effect was announced to nobody: the wait slept its whole timeout (the conformance
    test `test_wait_returns_early_when_a_job_is_enqueued[postgres]` failed so under
    load). The first wait now looks once LISTEN is in effect. Here the job is committed
    before the wait, the widest form of that window; later waits do not look."""
    producer = from_url(postgres_url)
    consumer = from_url(postgres_url)
    try:
        await producer.enqueue([make_job(FakeClock())])
        started = time.monotonic()
        await consumer.wait(["default"], 3.0)
        assert time.monotonic() - started < 1.5  # at once, not after 3 s
        started = time.monotonic()
        await consumer.wait(["default"], 0.3)  # a later wait waits for a notification
        assert time.monotonic() - started >= 0.25
    finally:
        await producer.close()
        await consumer.close()
