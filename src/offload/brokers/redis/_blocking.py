"""Sync producers without the portal's thread hop (`Broker.enqueue_blocking`).

A sync `task.enqueue()` used to hand its coroutine to the portal loop and wait for it:
a thread hop and the asyncio client's packing cost most of a call (profile in
`benchmarks/README.md`). Here the calling thread runs the same `enqueue.lua` on a
plain, thread-safe `redis.Redis` client. It takes only the plain case: a single
Redis (a cluster keeps the portal path), queues this broker has recorded already, and
jobs outside workflows; anything else returns None and goes through `enqueue`, which
records queues and indexes workflows first.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from redis import Redis

from offload.brokers.base import EnqueueResult
from offload.brokers.redis._connection import blocking_client, errors
from offload.envelope import Envelope

if TYPE_CHECKING:
    from offload.brokers.redis import RedisBroker

__all__ = ["BlockingClient", "enqueue"]


class BlockingClient:
    """The broker's plain client, opened on first use, shared by every thread."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self._lock = threading.Lock()
        self._client: Redis | None = None

    def get(self) -> Redis:
        with self._lock:
            if self._client is None:
                self._client = blocking_client(self._broker.options)
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def enqueue(
    broker: RedisBroker, jobs: Sequence[tuple[Envelope, bytes]], max_depth: int | None
) -> list[EnqueueResult] | None:
    from offload.brokers.redis import _SCRIPTS  # the package imports this module

    if broker.options.cluster or not jobs:
        return None
    by_queue: dict[str, list[int]] = {}
    for i, (env, _) in enumerate(jobs):
        if env.workflow_id is not None:
            return None
        by_queue.setdefault(env.queue, []).append(i)
    if not broker._known.issuperset(by_queue):
        return None
    calls = broker._enqueue_calls(jobs, by_queue, broker.clock.now(), max_depth)
    with errors(broker._where):
        replies = _SCRIPTS.run_many_blocking(broker._blocking.get(), calls)
    return broker._enqueue_results(jobs, by_queue, replies, max_depth)
