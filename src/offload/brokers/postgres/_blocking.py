"""Sync producers without the portal's thread hop (`Broker.enqueue_blocking`).

A sync `task.enqueue()` hands its coroutine to the portal loop and waits for it: two
thread hand-offs, about as long as the INSERT's own round trip and commit when the
server is local. Here the calling thread runs the same `enqueue` statement on a
connection of a plain (thread-safe, non-asyncio) psycopg pool, opened on first use.
It takes only the plain case: once this process has seen the schema migrated (the
first enqueue goes through `enqueue`), and without `max_depth` (whose advisory lock
and count stay in `enqueue`). A forked child opens a pool of its own and leaves its
parent's alone (closing it would end the parent's sessions).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from offload.brokers.postgres._pool_log import own_pool
from offload.errors import BrokerError, BrokerUnavailable

__all__ = ["BlockingPool", "unavailable"]

#: How long a call waits for a connection of the pool (or for the first one to open).
_WAIT_S = 10.0


def unavailable(exc: Exception) -> BrokerUnavailable:
    """One line, as the CLI prints errors (libpq's messages span several)."""
    return BrokerUnavailable(f"PostgreSQL is unavailable: {' '.join(str(exc).split())}")


class BlockingPool:
    """Autocommit connections to `conninfo` for calling threads (module docstring)."""

    def __init__(self, conninfo: str, max_size: int) -> None:
        self._conninfo = conninfo
        self._max_size = max_size
        self._lock = threading.Lock()
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pid = 0

    def _get(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                    self._conninfo,
                    min_size=1,
                    max_size=self._max_size,
                    kwargs={"autocommit": True},
                    open=False,
                    name="offload-blocking",
                )
                pool.open(wait=True, timeout=_WAIT_S)
                self._pool, self._pid = pool, os.getpid()
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, with psycopg's errors made offload's.

        Raises:
            BrokerUnavailable: the server cannot be reached (or no connection was free
                within 10 s).
            BrokerError: the server refused the statement.
        """
        try:
            with own_pool(), self._get().connection(timeout=_WAIT_S) as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise unavailable(exc) from exc
        except psycopg.Error as exc:
            raise BrokerError(f"PostgreSQL error: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            mine = self._pid == os.getpid()
        if pool is not None and mine:
            pool.close()
