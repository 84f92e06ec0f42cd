"""Push wake-ups for `RedisBroker.wait`, over Redis pub/sub.

Scripts that make a job ready now (enqueue, a due retry, release, replay) PUBLISH on
the queue's channel in the same atomic call. Each broker keeps one subscriber
connection; a reader task marks channels as pending when a message arrives, and a
waiter returns as soon as one of its channels is pending. Pending marks are only
cleared by a waiter, so a message that arrives between a worker's empty `reserve` and
its `wait` still wakes it at once: an idle worker starts a job within a round trip of
its enqueue, without polling.

Classic PUBLISH reaches every node of a Redis Cluster, so the subscriber may sit on any
one node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

__all__ = ["Listener"]

logger = logging.getLogger("offload.brokers.redis")


class Listener:
    """One pub/sub connection and its reader task, on the loop that created it."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pubsub: PubSub = client.pubsub()
        self._channels: set[str] = set()
        self._pending: set[str] = set()
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.failed = False

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Subscribe to channels not yet subscribed (returns once the command is sent)."""
        new = set(channels) - self._channels
        if not new:
            return
        await self._pubsub.subscribe(*sorted(new))
        self._channels |= new
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="offload redis wakeups")

    async def wait(self, channels: Iterable[str], timeout_s: float) -> None:
        """Return when one of `channels` got a message since the last wait on it, or
        after `timeout_s`, or when the connection failed."""
        wanted = set(channels)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.failed:
            if self._pending & wanted:
                self._pending -= wanted
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return

    async def _read(self) -> None:
        try:
            while True:
                message = await self._pubsub.get_message(True, timeout=None)
                if message is None:
                    continue
                name = message["channel"]
                self._pending.add(name.decode() if isinstance(name, bytes) else str(name))
                self._notify()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection lost: waiters fall back to their timeout
            logger.debug("redis wake-up listener stopped: %s", exc)
            self.failed = True
            self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def close(self) -> None:
        self.failed = True
        self._notify()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await self._client.aclose()
