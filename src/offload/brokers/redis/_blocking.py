"""Sync producers without the portal's thread hop (`Broker.enqueue_blocking`).

A sync `task.enqueue()` used to hand its coroutine to the portal loop and wait for it:
a thread hop and the asyncio client's packing cost most of a call (profile in
`benchmarks/README.md`). Here the calling thread runs the same `enqueue.lua` on a
plain, thread-safe `redis.Redis` client. It takes only the plain case: a single
Redis (a cluster keeps the portal path), queues this broker has recorded already, and
jobs outside workflows (`RedisBroker.enqueue_blocking` decides); anything else goes
through `enqueue`, which records queues and indexes workflows first.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from redis import Redis

from offload.brokers.redis._connection import RedisURL, blocking_client, errors
from offload.brokers.redis._executor import SCRIPTS
from offload.brokers.redis._scripts import Call

__all__ = ["BlockingClient"]


class BlockingClient:
    """A plain client of `options`, opened on first use, shared by every thread."""

    def __init__(self, options: RedisURL, where: str) -> None:
        self._options = options
        self._where = where
        self._lock = threading.Lock()
        self._client: Redis | None = None

    def get(self) -> Redis:
        with self._lock:
            if self._client is None:
                self._client = blocking_client(self._options)
            return self._client

    def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """The scripts `calls`, in one pipeline from the calling thread."""
        with errors(self._where):
            return SCRIPTS.run_many_blocking(self.get(), calls)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
