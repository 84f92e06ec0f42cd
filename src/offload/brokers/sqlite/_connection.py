"""Opening the database file: pragmas, the schema and its version, and waiting for locks.

Kept apart from `_store.py`, which holds the operations, so that each stays one idea:
this module decides how a connection is made safe to share between processes, that
one what each transaction does.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from offload.brokers._sql import read_asset
from offload.errors import ConfigurationError

__all__ = [
    "BUSY_RETRY_MAX_S",
    "BUSY_TIMEOUT_S",
    "SCHEMA_VERSION",
    "connect",
    "retry_busy",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Version of `schema.sql`, kept in `offload_meta`. A file with a newer version was
#: written by a newer offload and is refused rather than misread.
SCHEMA_VERSION = 9
#: How long a call waits for another connection's write lock before failing with
#: `BrokerUnavailable`, in seconds. Transactions here last well under a millisecond.
BUSY_TIMEOUT_S = 10.0
#: Longest sleep between two attempts at a busy lock, in seconds (each sleep is random,
#: from a sixth of this up to it). SQLite's own busy handler backs off to 100 ms sleeps,
#: and a connection that sleeps that long almost never lands in the microsecond gaps
#: between another busy connection's transactions: a worker process would starve while
#: its neighbour took every job. Short random sleeps share the lock.
BUSY_RETRY_MAX_S = 0.0006
#: Oldest SQLite with everything we use: RETURNING (3.35), UPSERT (3.24), json_each.
MIN_SQLITE_VERSION = (3, 35, 0)

#: Columns added to existing tables since version 1, oldest first: (table, column,
#: declaration, backfill). `CREATE TABLE IF NOT EXISTS` in `schema.sql` cannot add a
#: column to a file's table, so an older file gets each missing one here, with the
#: backfill statement (or None) that fills it for the rows already there.
ADDED_COLUMNS: tuple[tuple[str, str, str, str | None], ...] = (
    # Version 5: the outbox records only workflow jobs. Waiting jobs of an older file
    # that are steps of a chain or members of a chord are flagged from their envelope;
    # a payload that is not JSON is no envelope (CASE, unlike AND, never evaluates
    # json_extract on it).
    (
        "offload_jobs",
        "flow",
        "INTEGER NOT NULL DEFAULT 0",
        "UPDATE offload_jobs SET flow = 1"
        " WHERE state NOT IN ('succeeded', 'expired', 'cancelled')"
        " AND CASE WHEN json_valid(CAST(payload AS TEXT))"
        " THEN json_extract(CAST(payload AS TEXT), '$.then') IS NOT NULL"
        " OR json_extract(CAST(payload AS TEXT), '$.chord') IS NOT NULL"
        " ELSE 0 END",
    ),
    # Version 9: ledger jobs (`_ledger.py`); no job of an older file is one.
    ("offload_jobs", "stamp", "TEXT", None),
    ("offload_jobs", "publish_by", "REAL", None),
)

_META_TABLE = "CREATE TABLE IF NOT EXISTS offload_meta (key TEXT PRIMARY KEY, value TEXT)"
_PACKAGE = __name__.rpartition(".")[0]


def _split_statements(script: str) -> list[str]:
    """Cut a script into statements, leaving out comment-only tails.

    `executescript` would do this too, but it cannot run inside the transaction that
    checks the schema version first.
    """
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return statements


def retry_busy(call: Callable[[], T]) -> T:
    """Run `call`, again and again while the database is locked, for `BUSY_TIMEOUT_S`.

    Safe because SQLITE_BUSY comes before anything is written: at BEGIN IMMEDIATE, on a
    read, or (without WAL) at COMMIT, after which the transaction is rolled back whole.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if time.monotonic() >= deadline:
                raise
        time.sleep(random.uniform(BUSY_RETRY_MAX_S / 6, BUSY_RETRY_MAX_S))


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    # No busy handler in SQLite: `retry_busy` waits instead (see BUSY_RETRY_MAX_S).
    conn.execute("PRAGMA busy_timeout = 0")
    # WAL lets readers (inspection, `wait`) run beside the one writer. NORMAL is
    # durable across process crashes in WAL mode; only a power loss may drop the last
    # transactions, and never corrupts the file.
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        logger.warning(
            "SQLite file %s cannot use WAL (journal_mode=%s): readers will block writers",
            path,
            mode,
            extra={"action": "sqlite_wal_unavailable", "path": str(path)},
        )
    conn.execute("PRAGMA synchronous = NORMAL")


def _install_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the tables, or check that the file's schema is one we understand.

    One IMMEDIATE transaction, so two processes starting at once cannot interleave
    their checks and creations.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_META_TABLE)
        row = conn.execute("SELECT value FROM offload_meta WHERE key = 'schema_version'")
        found = row.fetchone()
        version = int(found[0]) if found else 0
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"SQLite file {path} has offload schema version {version}, newer than "
                f"this offload understands ({SCHEMA_VERSION}); upgrade offload"
            )
        if version < SCHEMA_VERSION:
            _add_columns(conn)
            had_counts = _has_table(conn, "offload_counts")
            for statement in _split_statements(read_asset(_PACKAGE, "schema.sql")):
                conn.execute(statement)
            if not had_counts:  # version 8: count the jobs of an older file once
                conn.execute(
                    "INSERT INTO offload_counts (queue, state, n)"
                    " SELECT queue, state, count(*) FROM offload_jobs GROUP BY queue, state"
                )
            conn.execute(
                "INSERT OR REPLACE INTO offload_meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return found.fetchone() is not None


def _add_columns(conn: sqlite3.Connection) -> None:
    """Bring the tables of an older file up to `schema.sql`'s columns (see
    `ADDED_COLUMNS`). Looks at the tables themselves rather than trusting the stored
    version, so it is idempotent like the script; a new file has no tables yet."""
    for table, column, declaration, backfill in ADDED_COLUMNS:
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if not columns or column in columns:
            continue
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        if backfill is not None:
            conn.execute(backfill)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database file, in WAL mode, with our schema.

    Raises:
        ConfigurationError: SQLite is too old, the file is not an SQLite database, or
            it has a newer offload schema.
        sqlite3.Error: the file cannot be opened or stayed locked (the broker wraps it).
    """
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        raise ConfigurationError(
            f"the sqlite broker needs SQLite >= 3.35; this Python has {sqlite3.sqlite_version}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: the sqlite3 module must not open transactions of its own;
    # every write here says BEGIN IMMEDIATE itself. check_same_thread=False because the
    # connection is opened and used on the broker's executor thread, and closed there.
    conn = sqlite3.connect(
        path,
        timeout=0,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=256,
    )
    try:
        retry_busy(lambda: _configure(conn, path))
        retry_busy(lambda: _install_schema(conn, path))
    except sqlite3.DatabaseError as exc:
        conn.close()
        if exc.sqlite_errorname == "SQLITE_NOTADB":
            raise ConfigurationError(f"{path} is not an SQLite database") from exc
        raise
    except BaseException:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn
