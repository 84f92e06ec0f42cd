"""PostgreSQL migrations: every road to the latest version ends at the same schema.

A fresh install runs `schema.sql`; an old install runs the missing files of
`migrations/`. If someone edits one and forgets the other, the catalogs differ here.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("psycopg")

import psycopg

from offload.brokers.base import Finished, Outcome
from offload.brokers.postgres import PostgresBroker
from offload.brokers.postgres._sql import LATEST_VERSION, MIGRATIONS, apply_migrations
from offload.codec import encode_envelope
from offload.envelope import Envelope, JobState
from offload.errors import ConfigurationError
from offload.testing import FakeClock
from tests.conformance.helpers import enqueue_one, reserve_one

#: A minute boundary, and a time in it, for the per-minute counts.
M0 = 28_333_400
T0 = M0 * 60.0 + 30

_CATALOG = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default,
               is_identity, identity_generation
          FROM information_schema.columns WHERE table_schema = %(s)s
         ORDER BY 1, 2""",
    "indexes": """
        SELECT indexname, replace(indexdef, %(s)s || '.', '')
          FROM pg_indexes WHERE schemaname = %(s)s ORDER BY 1""",
    "constraints": """
        SELECT r.relname, c.conname, pg_get_constraintdef(c.oid)
          FROM pg_constraint c
          JOIN pg_namespace n ON n.oid = c.connamespace
          JOIN pg_class r ON r.oid = c.conrelid
         WHERE n.nspname = %(s)s ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
               p.prosrc, p.provolatile, l.lanname,
               replace(array_to_string(p.proconfig, ' '), %(s)s, '<schema>')
          FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace
          JOIN pg_language l ON l.oid = p.prolang
         WHERE n.nspname = %(s)s ORDER BY 1, 2""",
    "triggers": """
        SELECT c.relname, t.tgname, replace(pg_get_triggerdef(t.oid), %(s)s || '.', '')
          FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(s)s AND NOT t.tgisinternal ORDER BY 1, 2""",
    "migrations_recorded": "SELECT version, name FROM {schema}.offload_migrations ORDER BY 1",
}


def schema_of(url: str) -> str:
    return url.rpartition("schema=")[2]


def catalog(dsn: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything about a schema that code can depend on, with its name taken out."""
    with psycopg.connect(dsn) as conn:
        return {
            part: conn.execute(query.replace("{schema}", schema), {"s": schema}).fetchall()
            for part, query in _CATALOG.items()
        }


async def fresh(url: str) -> None:
    broker = PostgresBroker(url)
    await broker.connect()
    await broker.close()


async def by_migrations(url: str, upto: int) -> None:
    """Apply the first `upto` migration files, then let the broker do the rest."""
    schema = schema_of(url)
    broker = PostgresBroker(url)
    async with await psycopg.AsyncConnection.connect(
        broker.settings.conninfo, autocommit=True
    ) as conn:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await apply_migrations(conn, upto)
    version, applied = await broker.migrate()
    assert version == LATEST_VERSION
    assert applied == [m.version for m in MIGRATIONS[upto:]]


@pytest.fixture
def other_url(postgres_dsn: str) -> Any:
    """A second isolated schema."""
    import uuid

    schema = f"offload_test_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_dsn}?schema={schema}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize("upto", range(1, len(MIGRATIONS) + 1))
async def test_migrations_in_order_equal_a_fresh_install(
    postgres_dsn: str, postgres_url: str, other_url: str, upto: int
) -> None:
    await fresh(postgres_url)
    await by_migrations(other_url, upto)

    expected = catalog(postgres_dsn, schema_of(postgres_url))
    got = catalog(postgres_dsn, schema_of(other_url))

    assert expected["functions"], "the fresh install has no reserve function"
    assert expected["indexes"], "the fresh install has no indexes"
    for part in _CATALOG:
        assert got[part] == expected[part], part


async def at_migration(broker: PostgresBroker, upto: int, statement: str) -> None:
    """The broker's schema built by migrations 1..`upto`, then `statement` run in it."""
    async with await psycopg.AsyncConnection.connect(
        broker.settings.conninfo, autocommit=True
    ) as conn:
        await conn.execute(f'CREATE SCHEMA "{broker.settings.schema}"')
        await apply_migrations(conn, upto)
        await conn.execute(statement)


async def test_0009_counts_the_jobs_an_older_schema_holds(postgres_url: str) -> None:
    # Given a schema at migration 8 holding jobs written before the count triggers,
    broker = PostgresBroker(postgres_url)
    await at_migration(
        broker,
        8,
        "INSERT INTO offload_jobs (id, queue, task, state, created_at, due_at, payload)"
        " SELECT 'j' || g, CASE WHEN g <= 3 THEN 'a' ELSE 'b' END, 't',"
        " CASE WHEN g <= 3 THEN 'queued' ELSE 'dead' END, 1, 1, '{}'::bytea"
        " FROM generate_series(1, 5) AS g",
    )
    # when 0009 is applied, the counts are what it holds, and later changes move them.
    await broker.migrate()
    await broker.connect()
    try:
        counts = await broker.counts()
        assert counts["a"].states[JobState.QUEUED] == 3
        assert counts["b"].states[JobState.DEAD] == 2
        assert await broker.replay_dead("b") == 2
        assert await broker.purge_dead() == 0
        assert await broker.cancel("j1")
        counts = await broker.counts()
        assert counts["a"].states[JobState.QUEUED] == 2
        assert counts["a"].states[JobState.CANCELLED] == 1
        assert (counts["b"].states[JobState.QUEUED], counts["b"].states[JobState.DEAD]) == (2, 0)
    finally:
        await broker.close()


async def test_0011_keeps_older_jobs_runnable_and_reserve_skips_ledger_jobs(
    postgres_url: str,
) -> None:
    # Given a schema at migration 10 holding a waiting job,
    broker = PostgresBroker(postgres_url)
    async with await psycopg.AsyncConnection.connect(
        broker.settings.conninfo, autocommit=True
    ) as conn:
        await conn.execute(f'CREATE SCHEMA "{schema_of(postgres_url)}"')
        await apply_migrations(conn, 10)
        await conn.execute(
            "INSERT INTO offload_jobs (id, queue, task, state, created_at, due_at, payload)"
            " VALUES ('old', 'default', 't', 'queued', 1, 1, '{}'::bytea)"
        )
    # when 0011 is applied, that job is still reserved, and a ledger job never is.
    await broker.migrate()
    await broker.connect()
    try:
        envelope = Envelope(id="ledger", task="t", created_at=1.0)
        _, [copy] = await broker.record([(envelope, encode_envelope(envelope))])
        leases = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=10)
        assert [lease.job_id for lease in leases] == ["old"]
        assert copy.job_id == "ledger"
    finally:
        await broker.close()


async def test_0012_counts_ends_on_a_schema_upgraded_with_jobs_in_flight(
    postgres_url: str,
) -> None:
    # Given a schema at migration 11 holding a waiting job past its expiry,
    broker = PostgresBroker(postgres_url, clock=FakeClock(T0))
    await at_migration(
        broker,
        11,
        "INSERT INTO offload_jobs (id, queue, task, state, created_at, due_at, expires_at,"
        " payload) VALUES ('old', 'a', 't', 'queued', 1, 1, 2, '{}'::bytea)",
    )
    # when 0012 is applied, the reserve function of older workers counts its expiries,
    await broker.migrate()
    await broker.connect()
    try:
        assert await broker.reserve(["a"], worker_id="w", lease_s=5, limit=1) == []
        # and the new statements count what they end.
        await enqueue_one(broker, queue="a")
        await broker.ack(await reserve_one(broker, ("a",)), None, result_ttl_s=None)
        assert await broker.finished(T0) == [
            Finished("a", M0, Outcome.EXPIRED, 1),
            Finished("a", M0, Outcome.SUCCEEDED, 1),
        ]
    finally:
        await broker.close()


async def test_connect_is_idempotent_and_concurrent(postgres_url: str) -> None:
    import asyncio

    brokers = [PostgresBroker(postgres_url) for _ in range(4)]
    results = await asyncio.gather(*(b.migrate() for b in brokers))
    applied = [versions for _, versions in results]
    assert sorted(applied, key=len) == [[], [], [], [m.version for m in MIGRATIONS]]


async def test_schema_newer_than_the_code_is_refused(postgres_dsn: str, postgres_url: str) -> None:
    await fresh(postgres_url)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{schema_of(postgres_url)}".offload_migrations (version, name) '
            f"VALUES ({LATEST_VERSION + 1}, 'from_the_future')"
        )
    broker = PostgresBroker(postgres_url)
    with pytest.raises(ConfigurationError, match="newer than this offload"):
        await broker.connect()
    await broker.close()


def test_offload_migrate_command(postgres_url: str) -> None:
    def run() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "offload", "migrate", "--url", postgres_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert f"schema is at version {LATEST_VERSION}" in run()
    assert "up to date" in run()


@pytest.fixture
def worker_role(postgres_dsn: str) -> Any:
    """A login role of this test's own that may not create anything (no CREATE on the
    database, as a worker's role is meant to be), and its DSN; dropped after."""
    import uuid

    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    name = f"offload_w_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    params = {"port": 5432, "host": "127.0.0.1", **conninfo_to_dict(postgres_dsn)}
    try:
        yield name, f"postgresql://{name}@{params['host']}:{params['port']}/{params['dbname']}"
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


async def test_a_role_that_may_not_create_uses_a_schema_offload_migrate_made(
    postgres_dsn: str, postgres_url: str, worker_role: tuple[str, str]
) -> None:
    """The README's deploy step: `offload migrate` as a role that may run DDL, workers
    as one that may not. The workers' connect must not run DDL on a current schema
    (PostgreSQL checks CREATE before `IF NOT EXISTS`, so a no-op `CREATE SCHEMA IF NOT
    EXISTS` was refused: every connect failed with InsufficientPrivilege); a schema
    still to be made is a one-line ConfigurationError saying what to do, not a psycopg
    traceback."""
    from psycopg import sql

    name, dsn = worker_role
    schema = schema_of(postgres_url)
    missing = PostgresBroker(f"{dsn}?schema={schema}")  # not made yet: the role cannot
    with pytest.raises(ConfigurationError, match="offload migrate"):
        await missing.connect()
    await missing.close()
    await fresh(postgres_url)  # `offload migrate`, as the admin
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        for grant in (
            "GRANT USAGE ON SCHEMA {s} TO {r}",
            "GRANT ALL ON ALL TABLES IN SCHEMA {s} TO {r}",
            "GRANT ALL ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
            "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} TO {r}",
        ):
            admin.execute(sql.SQL(grant).format(s=sql.Identifier(schema), r=sql.Identifier(name)))
    broker = PostgresBroker(f"{dsn}?schema={schema}")
    try:
        await broker.connect()
        await enqueue_one(broker)
        await reserve_one(broker)
    finally:
        await broker.close()
