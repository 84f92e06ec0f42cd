"""In-process wakeups: let `Broker.wait` return as soon as this process enqueues, and
`Broker.wait_finished` as soon as a job ends.

Waiters may live on different event loops (the worker's, the sync producer portal's),
so `notify` is thread-safe and hops onto each waiter's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable

__all__ = ["JobWaiters", "Wakeup"]


class Wakeup:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    async def wait(self, timeout_s: float) -> bool:
        """Wait for `notify` or `timeout_s`; True if notified."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.add(entry)
        try:  # not `wait_for`: on 3.11 it may drop a cancel that meets a notify
            async with asyncio.timeout(timeout_s):
                await entry[1].wait()
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(entry)

    def notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        _wake(waiters)


class JobWaiters:
    """Waiters keyed by job id: `notify(job_id)` wakes only that job's waiters, so a
    thousand pending `Job.result()` calls cost nothing per unrelated ack."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def __bool__(self) -> bool:
        return bool(self._waiters)

    async def wait(
        self,
        job_id: str,
        ended: Callable[[], Awaitable[bool]],
        timeout_s: float,
        *,
        recheck: Callable[[], Awaitable[bool]] | None = None,
        every_s: float = 0.0,
    ) -> bool:
        """Return when `ended()` holds (checked once registered, so a `notify`
        between the check and the wait is not missed), at `notify(job_id)`, when
        `recheck()` holds (called every `every_s`, for ends no `notify` reports, such
        as another process's), or after `timeout_s`: False only in that last case.

        One registration spans the whole wait, polls included: a `notify` that lands
        while `recheck` runs, or just as a poll interval lapses, is kept by the event
        rather than lost between two registrations."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        event = asyncio.Event()
        entry = (loop, event)
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(entry)
        try:
            if await ended():
                return True
            while (remaining := deadline - loop.time()) > 0:
                step = remaining if recheck is None else min(every_s, remaining)
                with contextlib.suppress(TimeoutError):  # (not `wait_for`, as above)
                    async with asyncio.timeout(step):
                        await event.wait()
                if event.is_set() or (recheck is not None and await recheck()):
                    return True
            return event.is_set()
        finally:
            with self._lock:
                waiters = self._waiters.get(job_id)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        del self._waiters[job_id]

    def notify(self, job_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(job_id, ()))
        _wake(waiters)


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
    for loop, event in waiters:
        if loop.is_closed():
            continue
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop closed between the check and the call
            pass
