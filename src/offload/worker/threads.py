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
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["HandlerThreads"]

#: A job for a thread: its key (the job id), its future, and the call to make.
_Item = tuple[str, "asyncio.Future[Any]", Callable[[], Any]]


class HandlerThreads:
    """Up to `size` threads (started on demand) running calls for one event loop."""

    def __init__(self, size: int, *, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._done: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job
        self._running: set[str] = set()
        self._lock = threading.Lock()  # guards _running and _idle
        self._closed = False

    def submit(self, key: str, call: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `call()` in a thread; its result or exception comes back in the future.

        Cancelling the future before a thread takes the job means it never runs; once
        it runs, cancelling only stops the caller from waiting for it.
        """
        if self._closed:
            raise RuntimeError("handler threads are closed")
        loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:  # an idle thread takes the job, else a new one if allowed
            start = self._idle == 0 and len(self._threads) < self._size
            if self._idle > 0:
                self._idle -= 1
        if start:
            thread = threading.Thread(
                target=self._serve, name=f"{self._name}_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._jobs.put((key, future, call))
        return future

    def running(self) -> set[str]:
        """Keys of the jobs whose call runs in a thread now."""
        with self._lock:
            return set(self._running)

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
                item[1].cancel()
        for _ in self._threads:
            self._jobs.put(None)

    def _serve(self) -> None:
        while (item := self._jobs.get()) is not None:
            key, future, call = item
            with self._lock:
                self._running.add(key)  # first running, then the cancel check
            value: Any = None
            error: BaseException | None = None
            if not future.cancelled():
                try:
                    value = call()
                except BaseException as exc:
                    error = exc
            with self._lock:
                self._running.discard(key)
                self._idle += self._jobs.empty()
            self._deliver_later(future, value, error)

    def _deliver_later(
        self, future: asyncio.Future[Any], value: Any, error: BaseException | None
    ) -> None:
        self._done.append((future, value, error))
        if self._wake_pending or self._loop is None:
            return
        self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody waits for the result
            pass

    def _deliver(self) -> None:
        """On the loop: settle the future of every job finished since the last turn."""
        self._wake_pending = False  # before draining: a later append wakes us again
        while self._done:
            future, value, error = self._done.popleft()
            if future.cancelled():
                continue
            if error is None:
                future.set_result(value)
            elif isinstance(error, StopIteration):  # a future refuses it (PEP 479)
                future.set_exception(RuntimeError(f"{type(error).__name__}: {error}"))
            else:
                future.set_exception(error)
