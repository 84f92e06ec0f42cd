"""Enqueue on PostgreSQL on a given connection: the broker's own pool (bounded by
`max_depth` or not), or the application's connection inside its transaction
(`enqueue_in`, `enqueue_in_sync`).

A bounded enqueue counts a queue's waiting jobs and then inserts, which one statement
cannot make safe against a concurrent writer: it is one short transaction that first
takes a transaction-scoped advisory lock on each of its queues.

Every path runs the same statements with the same parameters (`_rows`), so a job
enqueued in the application's transaction is stored exactly as one enqueued by the
broker. On the application's connection the tables are qualified with the URL's
`schema` (if it has one), since that connection's search_path is the application's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from offload.brokers._depth import adding_per_queue, queue_full
from offload.brokers.base import EnqueueResult
from offload.brokers.postgres import _rows
from offload.brokers.postgres._executor import QUERIES as _Q
from offload.brokers.postgres._executor import Database
from offload.brokers.postgres._sql import qualified
from offload.clock import Clock
from offload.envelope import Envelope
from offload.errors import ConfigurationError

__all__ = ["Inserter"]


class Inserter:
    """Every enqueue path, on a `Database` or a given connection."""

    def __init__(self, db: Database, clock: Clock, *, schema: str | None, channel: str) -> None:
        self._db = db
        self._clock = clock
        self._schema = schema  # the URL's schema, named on the application's connection
        self._channel = channel  # the NOTIFY channel of new work

    async def enqueue(
        self,
        jobs: Sequence[tuple[Envelope, bytes]],
        max_depth: int | None,
        ledger: Mapping[str, Any] | None = None,
    ) -> list[EnqueueResult]:
        """Insert `jobs`; with `ledger` (its `now`, `stamps` and `publish_by` columns,
        from `_ledger.py`), as ledger jobs."""
        if not jobs:
            return []
        if max_depth is not None:
            return await self.enqueue_bounded(jobs, max_depth, ledger)
        async with self._db.connection() as conn:
            return await self.enqueue_on(conn, jobs, None, ledger)

    async def enqueue_bounded(
        self,
        jobs: Sequence[tuple[Envelope, bytes]],
        max_depth: int,
        ledger: Mapping[str, Any] | None = None,
    ) -> list[EnqueueResult]:
        """`enqueue` that refuses (QueueFull) to push a queue past `max_depth` waiting jobs."""
        adding = adding_per_queue(jobs)
        async with self._db.connection() as conn, conn.transaction():
            for queue in sorted(adding):  # one lock order: two bounded enqueues never deadlock
                await conn.execute(_Q["lock_key"], {"lock": f"offload.depth:{queue}"})
                row = await (await conn.execute(_Q["depth"], {"queue": queue})).fetchone()
                depth = int(row["n"]) if row else 0
                if depth + adding[queue] > max_depth:
                    raise queue_full(queue, depth, max_depth)
            return await self.enqueue_on(conn, jobs, None, ledger)

    async def enqueue_in(
        self,
        connection: psycopg.AsyncConnection[Any],
        jobs: Sequence[tuple[Envelope, bytes]],
    ) -> list[EnqueueResult]:
        _require_transaction(connection)
        if not jobs:
            return []
        return await self.enqueue_on(connection, jobs, self._schema)

    def enqueue_in_sync(
        self,
        connection: psycopg.Connection[Any],
        jobs: Sequence[tuple[Envelope, bytes]],
    ) -> list[EnqueueResult]:
        _require_transaction(connection)
        if not jobs:
            return []
        return self.enqueue_on_sync(connection, jobs, self._schema)

    def enqueue_on_sync(
        self,
        conn: psycopg.Connection[Any],
        jobs: Sequence[tuple[Envelope, bytes]],
        schema: str | None,
    ) -> list[EnqueueResult]:
        """`enqueue_on` on a synchronous connection: the application's, inside its
        transaction (`enqueue_in_sync`), or the broker's own, in autocommit
        (`PostgresBroker.enqueue_blocking`)."""
        query, params = self._insert(jobs)
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(qualified(query, schema), params)
            created = {row[0] for row in cur.fetchall()}
            holders: dict[str, str] = {}
            keys = _unresolved_keys(jobs, created)
            if keys:
                cur.execute(qualified(_Q["ids_for_keys"], schema), {"keys": keys})
                holders = {row[0]: row[1] for row in cur.fetchall()}
        return _rows.enqueue_results(jobs, created, holders)

    def _insert(self, jobs: Sequence[tuple[Envelope, bytes]]) -> tuple[str, dict[str, Any]]:
        """The statement that inserts `jobs`, and its parameters: `enqueue_one` for one
        job (plain parameters are cheaper to send than one-element arrays), else
        `enqueue`. Both store the same rows."""
        now = self._clock.now()
        if len(jobs) == 1:
            [(env, payload)] = jobs
            return _Q["enqueue_one"], _rows.enqueue_one_params(env, payload, now, self._channel)
        return _Q["enqueue"], _rows.enqueue_params(jobs, now, self._channel)

    async def enqueue_on(
        self,
        conn: psycopg.AsyncConnection[Any],
        jobs: Sequence[tuple[Envelope, bytes]],
        schema: str | None,
        ledger: Mapping[str, Any] | None = None,
    ) -> list[EnqueueResult]:
        if ledger is None:
            query, params = self._insert(jobs)
        else:
            query = _Q["ledger_enqueue"]
            params = {**_rows.enqueue_params(jobs, ledger["now"], self._channel), **ledger}
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(qualified(query, schema), params)
            created = {row[0] for row in await cur.fetchall()}
            holders: dict[str, str] = {}
            keys = _unresolved_keys(jobs, created)
            if keys:
                await cur.execute(qualified(_Q["ids_for_keys"], schema), {"keys": keys})
                holders = {row[0]: row[1] for row in await cur.fetchall()}
        return _rows.enqueue_results(jobs, created, holders)


def _require_transaction(
    connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
) -> None:
    idle = connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if connection.autocommit and idle:
        raise ConfigurationError(
            "enqueue_in needs a transaction to join, but the connection is in autocommit "
            "mode outside a transaction block: use `with conn.transaction():`"
        )


def _unresolved_keys(jobs: Sequence[tuple[Envelope, bytes]], created: set[str]) -> list[str]:
    """Keys of the jobs that were not stored, whose holders must be looked up (with the
    keys of the stored ones: a key repeated in one batch resolves to the first)."""
    if all(env.id in created for env, _ in jobs):
        return []
    return sorted({env.key for env, _ in jobs if env.key is not None})
