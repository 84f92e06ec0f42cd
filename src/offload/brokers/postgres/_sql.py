"""The PostgreSQL broker's SQL assets, and the migrations that install them.

`queries.sql` holds the named statements, `schema.sql` the schema of a fresh install,
`migrations/NNNN_name.sql` the same schema built step by step. Both roads are kept
equal by tests/migrations/. A schema is migrated in one transaction under an advisory
lock keyed by the schema, so workers starting together neither race nor half-apply,
and a crash mid-migration leaves nothing behind (PostgreSQL DDL is transactional).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from psycopg import AsyncConnection, sql

from offload.brokers._sql import read_asset
from offload.errors import ConfigurationError

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "Migration",
    "migrate",
    "qualified",
    "schema_version",
]

_PACKAGE = __name__.rpartition(".")[0]
_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS offload_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def _load_migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files(_PACKAGE).joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"offload migrations are not numbered 1..n: {found}")
    return found


#: Every migration this version knows, in order.
MIGRATIONS = _load_migrations()
#: The schema version this code reads and writes.
LATEST_VERSION = MIGRATIONS[-1].version


def qualified(query: str, schema: str | None) -> sql.Composed | sql.SQL:
    """`query` with offload's tables named in `schema`, for a connection whose
    search_path we do not control (the application's own, in `enqueue_in`)."""
    if schema is None:
        return sql.SQL(query)
    parts = re.split(r"\b(offload_(?:jobs|queues|workers))\b", query)
    pieces: list[sql.Composable] = []
    for i, part in enumerate(parts):
        if i % 2:
            pieces.append(sql.Identifier(schema, part))
        elif part:
            pieces.append(sql.SQL(part))
    return sql.Composed(pieces)


async def schema_version(conn: AsyncConnection[Any]) -> int:
    """The highest migration applied to the connection's schema (0: none)."""
    exists = await conn.execute("SELECT to_regclass('offload_migrations') IS NOT NULL")
    row = await exists.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM offload_migrations")
    found = await cur.fetchone()
    return int(found[0]) if found else 0


async def migrate(conn: AsyncConnection[Any], schema: str | None) -> list[int]:
    """Bring the schema up to `LATEST_VERSION`; returns the versions applied.

    An empty schema gets `schema.sql` in one go (every migration recorded as applied);
    one that has some migrations gets the missing ones, in order. `conn` must be in
    autocommit mode; all of it is one transaction.

    A current schema is left alone, with no DDL at all: PostgreSQL checks the CREATE
    privilege before `IF NOT EXISTS`, so even a no-op `CREATE SCHEMA IF NOT EXISTS`
    would refuse a role that may not create (the workers', once `offload migrate` ran
    as one that may).

    Raises:
        ConfigurationError: the schema is newer than this code (a newer offload
            migrated it); upgrade offload rather than misread its tables.
    """
    async with conn.transaction():
        lock_name = f"offload.migrate:{schema or ''}"
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_name,))
        version = await schema_version(conn)  # 0 if the schema does not exist yet
        check_version(version)
        if version == LATEST_VERSION:
            return []
        if schema is not None:
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
        await conn.execute(_MIGRATIONS_TABLE)
        pending = [m for m in MIGRATIONS if m.version > version]
        if not pending:
            return []
        if version == 0:
            await conn.execute(read_asset(_PACKAGE, "schema.sql"))
        else:
            for migration in pending:
                await conn.execute(migration.sql)
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO offload_migrations (version, name) VALUES (%s, %s)",
                [(m.version, m.name) for m in pending],
            )
        return [m.version for m in pending]


async def apply_migrations(conn: AsyncConnection[Any], upto: int) -> None:
    """Apply migrations 1..`upto` one by one, the road an old install takes; for the
    test that compares it with a fresh install."""
    async with conn.transaction():
        await conn.execute(_MIGRATIONS_TABLE)
        for migration in MIGRATIONS[:upto]:
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO offload_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )


def check_version(version: int) -> None:
    """Raises ConfigurationError if `version` is newer than this code understands."""
    if version > LATEST_VERSION:
        raise ConfigurationError(
            f"the offload schema in this database is at version {version}, newer than "
            f"this offload understands ({LATEST_VERSION}); upgrade offload"
        )
