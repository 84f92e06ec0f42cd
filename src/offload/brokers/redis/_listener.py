"""Push wake-ups for `RedisBroker.wait` and `RedisBroker.wait_finished`, over Redis
pub/sub.

Scripts that make a job ready now (enqueue, a due retry, release, replay) PUBLISH on
the queue's channel in the same atomic call. Each broker keeps one subscriber
connection; a reader task marks channels as pending when a message arrives, and a
waiter returns as soon as one of its channels is pending. Pending marks are only
cleared by a waiter, so a message that arrives between a worker's empty `reserve` and
its `wait` still wakes it at once: an idle worker starts a job within a round trip of
its enqueue, without polling.

Ends of jobs that someone waits on arrive on the job-end channel (see `_signals.py`),
whose messages go to a handler instead (the broker's `JobWaiters`). A waiter on an end
must be subscribed before it looks at the job, so `subscribe` can wait for Redis to
confirm the subscription.

Classic PUBLISH reaches every node of a Redis Cluster, so the subscriber may sit on any
one node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

__all__ = ["Listener"]

logger = logging.getLogger("offload.brokers.redis")

#: Longest wait for Redis to confirm a subscription, in seconds.
CONFIRM_TIMEOUT_S = 5.0


class Listener:
    """One pub/sub connection and its reader task, on the loop that created it."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pubsub: PubSub = client.pubsub()
        self._channels: set[str] = set()
        self._confirmed: set[str] = set()
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self._pending: set[str] = set()
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.failed = False

    async def subscribe(
        self,
        channels: Iterable[str],
        *,
        handler: Callable[[bytes], None] | None = None,
        confirm: bool = False,
    ) -> None:
        """Subscribe to channels not yet subscribed. Returns once the command is sent,
        or with `confirm` once Redis confirmed every channel. A `handler` receives the
        data of each message on the new channels (instead of marking them pending).

        Raises:
            ConnectionError: the connection failed before Redis confirmed.
        """
        wanted = set(channels)
        new = wanted - self._channels
        if new:
            if handler is not None:
                self._handlers.update(dict.fromkeys(new, handler))
            await self._pubsub.subscribe(*sorted(new))
            self._channels |= new
            if self._reader is None:
                self._reader = asyncio.create_task(self._read(), name="offload redis wakeups")
        if confirm and not wanted <= self._confirmed:  # (no task for what is confirmed)
            async with asyncio.timeout(CONFIRM_TIMEOUT_S):  # (not `wait_for`: see `wait`)
                await self._confirmation(wanted)

    async def _confirmation(self, channels: set[str]) -> None:
        while not channels <= self._confirmed:
            if self.failed:
                raise ConnectionError("the redis wake-up listener stopped")
            await self._changed.wait()

    async def wait(
        self,
        channels: Iterable[str],
        timeout_s: float,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """Return when one of `channels` got a message since the last wait on it, or
        `ready()` (checked after every message a handler took) is true, or after
        `timeout_s`, or when the connection failed."""
        wanted = set(channels)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.failed:
            if ready is not None and ready():
                return
            if self._pending & wanted:
                self._pending -= wanted
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            changed = self._changed
            try:  # not `wait_for`: on 3.11 it may swallow a cancel that meets a message
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return

    async def _read(self) -> None:
        try:
            while True:
                message = await self._pubsub.get_message(False, timeout=None)
                if message is not None:
                    self._dispatch(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection lost: waiters fall back to their timeout
            logger.debug("redis wake-up listener stopped: %s", exc)
            self.failed = True
            self._notify()

    def _dispatch(self, message: dict[str, object]) -> None:
        name = message["channel"]
        channel = name.decode() if isinstance(name, bytes) else str(name)
        kind = message["type"]
        if kind == "subscribe":
            self._confirmed.add(channel)
        elif kind != "message":
            return
        elif (handler := self._handlers.get(channel)) is not None:
            data = message["data"]
            handler(data if isinstance(data, bytes) else str(data).encode())
        else:
            self._pending.add(channel)
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
