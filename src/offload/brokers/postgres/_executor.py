"""`Database`: how the PostgreSQL broker and its parts reach the server.

It runs a named query of `queries.sql` (`rows`, `rowcount`) or hands out a pooled
connection (`connection`, with psycopg's errors made ours) for a transaction of
several statements, whose texts are in `QUERIES`. The parts (`_inspect.py`,
`_flow.py`, `_signals.py`, `_enqueue.py`) are built on one, so each can be read (and
tested) without the broker, and none reaches into it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeAlias

import psycopg

from offload.brokers._sql import named_queries

__all__ = ["QUERIES", "Connection", "Database"]

#: The named statements of `queries.sql`, loaded once.
QUERIES = named_queries(__name__.rpartition(".")[0])

Connection: TypeAlias = psycopg.AsyncConnection[dict[str, Any]]


class Database:
    """Named queries and pooled connections (autocommit; rows as dicts)."""

    def __init__(self, connection: Callable[[], AbstractAsyncContextManager[Connection]]) -> None:
        self.connection = connection

    async def rows(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows the query `name` returns (none for a statement without RETURNING)."""
        async with self.connection() as conn:
            cur = await conn.execute(QUERIES[name], params)
            return await cur.fetchall() if cur.description else []

    async def rowcount(self, name: str, params: dict[str, Any]) -> int:
        """How many rows the statement `name` changed."""
        async with self.connection() as conn:
            return (await conn.execute(QUERIES[name], params)).rowcount
