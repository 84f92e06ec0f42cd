"""The threads that run plain-function (`def`) handlers, handing results back in batches.

`concurrent.futures.ThreadPoolExecutor` with `asyncio.wrap_future` wakes the event loop
once per finished job (a self-pipe write, an epoll turn and a GIL hand-off each). Here a
thread that finishes a job appends its result to a shared list and wakes the loop only
if no wake-up is pending already, so every job that finished meanwhile is delivered in
one loop turn: the loop wakes once per burst, not once per job (issue 16). A thread
takes its next job without waiting while there is one.

`running()` names the jobs whose handler has started in a thread and not returned:
nothing can stop those but their return. A job whose future was cancelled before a
thread took it never starts (a thread marks a job running first, then checks for the
cancellation, so the loop never sees a job as neither running nor stoppable).
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["HandlerThreads"]

#: What a thread hands back: the call's value, or what it raised.
Done = Callable[[Any, "BaseException | None"], None]
#: A job for a thread: its key (the job id), the future whose cancellation stops it
#: before it starts, the call to make, and where its result goes (on the loop).
_Item = tuple[str, "asyncio.Future[Any]", Callable[[], Any], Done]


class HandlerThreads:
    """Up to `size` threads (started on demand) running calls for one event loop."""

    def __init__(self, size: int, *, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._done: deque[tuple[asyncio.Future[Any], Done, Any, BaseException | None]] = deque()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job
        self._running: set[str] = set()
        self._queued: dict[str, asyncio.Future[Any]] = {}  # key → guard, not taken yet
        self._lock = threading.Lock()  # guards _running, _queued and _idle
        self._closed = False

    def submit(self, key: str, call: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `call()` in a thread; its result or exception comes back in the future.

        Cancelling the future before a thread takes the job means it never runs; once
        it runs, cancelling only stops the caller from waiting for it.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.run(key, call, future, functools.partial(_resolve, future))
        return future

    def run(
        self, key: str, call: Callable[[], Any], guard: asyncio.Future[Any], done: Done
    ) -> None:
        """Run `call()` in a thread, then `done(value, error)` on the loop, in the turn
        that delivers every result finished meanwhile; neither happens if `guard` was
        cancelled before a thread took the job."""
        if self._closed:
            raise RuntimeError("handler threads are closed")
        self._loop = asyncio.get_running_loop()
        with self._lock:  # an idle thread takes the job, else a new one if allowed
            start = self._idle == 0 and len(self._threads) < self._size
            if self._idle > 0:
                self._idle -= 1
            self._queued[key] = guard
        if start:
            thread = threading.Thread(
                target=self._serve, name=f"{self._name}_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._jobs.put((key, guard, call, done))

    def running(self) -> set[str]:
        """Keys of the jobs whose call runs in a thread now."""
        with self._lock:
            return set(self._running)

    def stop(self, keys: Iterable[str]) -> set[str]:
        """Of the jobs `keys`, the ones a thread runs now (nothing can stop them); the
        others that wait for a thread are cancelled, and will not run. One step against
        the threads taking jobs (under the lock a thread takes a job with): a job is
        either reported running here or never runs, so a caller that gives back every
        job not reported never gives back one that is running. Call on the loop's
        thread."""
        with self._lock:
            running = {key for key in keys if key in self._running}
            for key in keys:
                guard = None if key in running else self._queued.pop(key, None)
                if guard is not None:
                    guard.cancel()
        return running

    def queued(self) -> list[str]:
        """Keys of the jobs waiting for a thread (none has taken them yet)."""
        with self._lock:
            return list(self._queued)

    def take_back(self, key: str) -> bool:
        """Cancel the job `key` if no thread has taken it yet (it will never run); False
        if a thread has, or it is not queued here. One step under the lock, as `stop`.
        Call on the loop's thread."""
        with self._lock:
            guard = None if key in self._running else self._queued.pop(key, None)
            if guard is None:
                return False
            guard.cancel()
            return True

    def withdraw(self) -> list[str]:
        """Take back every job no thread has taken yet, cancelling its guard (it will
        never run); returns their keys. Call on the loop's thread."""
        keys: list[str] = []
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return keys
            if item is None:  # closed: leave the threads their ends
                self._jobs.put(None)
                return keys
            self._forget(item[0], item[1])
            if not item[1].cancelled():
                item[1].cancel()
                keys.append(item[0])

    def close(self) -> None:
        """Cancel the jobs no thread has taken and let the threads end (a running call
        is not interrupted; the threads are daemons). Call on the loop's thread."""
        self._closed = True
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._forget(item[0], item[1])
                item[1].cancel()
        for _ in self._threads:
            self._jobs.put(None)

    def _serve(self) -> None:
        while (item := self._jobs.get()) is not None:
            key, guard, call, done = item
            with self._lock:  # taken and running in one step (see `stop`)
                if self._queued.get(key) is guard:
                    del self._queued[key]
                self._running.add(key)  # first running, then the cancel check
            value: Any = None
            error: BaseException | None = None
            if not guard.cancelled():
                try:
                    value = call()
                except BaseException as exc:
                    error = exc
            with self._lock:
                self._running.discard(key)
                self._idle += self._jobs.empty()
            self._deliver_later(guard, done, value, error)

    def _forget(self, key: str, guard: asyncio.Future[Any]) -> None:
        with self._lock:
            if self._queued.get(key) is guard:
                del self._queued[key]

    def _deliver_later(
        self, guard: asyncio.Future[Any], done: Done, value: Any, error: BaseException | None
    ) -> None:
        self._done.append((guard, done, value, error))
        if self._wake_pending or self._loop is None:
            return
        self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody waits for the result
            pass

    def _deliver(self) -> None:
        """On the loop: hand over the result of every job finished since the last turn."""
        self._wake_pending = False  # before draining: a later append wakes us again
        while self._done:
            guard, done, value, error = self._done.popleft()
            if not guard.cancelled():
                done(value, error)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if error is None:
        future.set_result(value)
    elif isinstance(error, StopIteration):  # a future refuses it (PEP 479)
        future.set_exception(RuntimeError(f"{type(error).__name__}: {error}"))
    else:
        future.set_exception(error)
