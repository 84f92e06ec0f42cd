"""Enqueue on PostgreSQL on a given connection: the broker's own pool, or the
application's connection inside its transaction (`enqueue_in`, `enqueue_in_sync`).

Every path runs the same statements with the same parameters (`_rows`), so a job
enqueued in the application's transaction is stored exactly as one enqueued by the
broker. On the application's connection the tables are qualified with the URL's
`schema` (if it has one), since that connection's search_path is the application's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import tuple_row

from offload.brokers.base import EnqueueResult
from offload.brokers.postgres import _rows
from offload.brokers.postgres._sql import load_queries, qualified
from offload.envelope import Envelope
from offload.errors import ConfigurationError

if TYPE_CHECKING:
    from offload.brokers.postgres import PostgresBroker

__all__ = ["enqueue_in", "enqueue_in_sync", "enqueue_on"]

_Q = load_queries()


async def enqueue_in(
    broker: PostgresBroker,
    connection: psycopg.AsyncConnection[Any],
    jobs: Sequence[tuple[Envelope, bytes]],
) -> list[EnqueueResult]:
    _require_transaction(connection)
    if not jobs:
        return []
    return await enqueue_on(broker, connection, jobs, broker.settings.schema)


def enqueue_in_sync(
    broker: PostgresBroker,
    connection: psycopg.Connection[Any],
    jobs: Sequence[tuple[Envelope, bytes]],
) -> list[EnqueueResult]:
    _require_transaction(connection)
    if not jobs:
        return []
    s = broker.settings
    with connection.cursor(row_factory=tuple_row) as cur:
        cur.execute(
            qualified(_Q["enqueue"], s.schema),
            _rows.enqueue_params(jobs, broker.clock.now(), s.channel),
        )
        created = {row[0] for row in cur.fetchall()}
        holders: dict[str, str] = {}
        keys = _unresolved_keys(jobs, created)
        if keys:
            cur.execute(qualified(_Q["ids_for_keys"], s.schema), {"keys": keys})
            holders = {row[0]: row[1] for row in cur.fetchall()}
    return _rows.enqueue_results(jobs, created, holders)


async def enqueue_on(
    broker: PostgresBroker,
    conn: psycopg.AsyncConnection[Any],
    jobs: Sequence[tuple[Envelope, bytes]],
    schema: str | None,
) -> list[EnqueueResult]:
    params = _rows.enqueue_params(jobs, broker.clock.now(), broker.settings.channel)
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(qualified(_Q["enqueue"], schema), params)
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
