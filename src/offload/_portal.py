"""Run the async core from synchronous code.

Synchronous producers (a Flask view, a script, the CLI) call `portal.run(coro)`: the
coroutine runs on one long-lived event loop in a daemon thread, so a sync `enqueue`
costs a thread hop, not a new event loop per call.

A script may simply end. At interpreter exit every portal still alive runs its owner's
`on_exit` (the app closes its brokers there), then cancels and awaits what still runs
on its loop, all within `EXIT_TIMEOUT_S`: otherwise the interpreter would destroy the
loop's pending tasks (a PostgreSQL pool's workers, a Redis subscriber) mid-flight and
print "Task was destroyed but it is pending!" for each. Nothing an enqueue returned is
at stake there: an enqueue returns once the broker stored the job.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["EXIT_TIMEOUT_S", "Portal"]

T = TypeVar("T")
log = logging.getLogger("offload")

#: The longest interpreter exit waits for all portals to close their brokers and loops.
EXIT_TIMEOUT_S = 5.0

_live: weakref.WeakSet[Portal] = weakref.WeakSet()


class Portal:
    """One event loop in a daemon thread, started on first use.

    Args:
        on_exit: coroutine function run on the loop when the interpreter exits while
            this portal is open (the owner's cleanup); its errors are logged, not raised.
    """

    def __init__(self, on_exit: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._on_exit = on_exit
        self._finalizer: weakref.finalize[Any, Portal] | None = None
        self._pid = os.getpid()
        #: The parent's loop, in a forked child: kept, never run, closed or collected.
        self._inherited: list[asyncio.AbstractEventLoop] = []

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None and self._pid != os.getpid():
                self._forget_parents_loop()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    try:
                        loop.run_forever()
                    finally:
                        loop.close()

                thread = threading.Thread(target=serve, name="offload-portal", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
                # A portal dropped without close() stops its loop when collected.
                self._finalizer = weakref.finalize(self, _stop, loop, thread, None)
                self._finalizer.atexit = False  # exit is `_close_all`'s, on_exit first
                _live.add(self)
            return self._loop

    def _forget_parents_loop(self) -> None:
        """In a forked child (gunicorn --preload, multiprocessing's fork): the loop was
        copied but not its thread, so a coroutine handed to it would wait forever.
        Drop it (the next `run` starts a loop of the child's own) without closing it:
        its selector and sockets are the parent's too."""
        assert self._loop is not None
        self._inherited.append(self._loop)
        if self._finalizer is not None:
            self._finalizer.detach()
        self._loop = self._thread = self._finalizer = None
        _live.discard(self)

    def is_current(self) -> bool:
        """Whether the caller runs on the portal's loop."""
        return self._thread is not None and threading.current_thread() is self._thread

    @property
    def started(self) -> bool:
        """Whether the loop runs (a `run` since the last `close`)."""
        return self._loop is not None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the portal loop and wait for its result (or exception)."""
        loop = self._start()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("Portal.run called from the portal's own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def close(self, timeout: float = EXIT_TIMEOUT_S) -> None:
        """Cancel what still runs on the loop, stop it and its thread (waiting at most
        `timeout` seconds); idempotent."""
        with self._lock:
            loop, thread, finalizer = self._loop, self._thread, self._finalizer
            self._loop = self._thread = self._finalizer = None
        _live.discard(self)
        if finalizer is not None:
            finalizer.detach()
        if loop is not None and thread is not None:
            _stop(loop, thread, timeout)

    def _exit(self, deadline: float) -> None:
        """At interpreter exit: the owner's cleanup, then `close`, by `deadline`."""
        loop, thread, on_exit = self._loop, self._thread, self._on_exit
        if loop is None or thread is None or not thread.is_alive() or loop.is_closed():
            return  # not started, or a fork's copy whose thread does not exist here
        if on_exit is not None:
            try:
                future = asyncio.run_coroutine_threadsafe(on_exit(), loop)
                future.result(timeout=max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                log.warning("offload: closing the broker at exit took over %.0f s", EXIT_TIMEOUT_S)
            except Exception as exc:  # the process is ending: say why, do not raise
                log.debug("offload: closing the broker at exit failed: %r", exc)
        self.close(max(deadline - time.monotonic(), 0.1))


async def _cancel_rest() -> None:
    """Cancel every other task of the running loop and wait for them to finish."""
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    await asyncio.get_running_loop().shutdown_asyncgens()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread, timeout: float | None) -> None:
    """Cancel what runs on the portal loop and stop it, waiting for its thread at most
    `timeout` seconds (None: not at all, as from a finalizer, which runs on whatever
    thread the collector does)."""
    if loop.is_closed() or not thread.is_alive():
        return
    if timeout is None or threading.current_thread() is thread:
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            loop.call_soon_threadsafe(_shut_down, loop)
        return
    try:
        asyncio.run_coroutine_threadsafe(_cancel_rest(), loop).result(timeout)
    except Exception as exc:  # a task that will not end: stop the loop anyway
        log.debug("offload: stopping the portal loop: %r", exc)
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout)


def _shut_down(loop: asyncio.AbstractEventLoop) -> None:
    loop.create_task(_cancel_rest()).add_done_callback(lambda _: loop.stop())


@atexit.register
def _close_all() -> None:
    """Close every open portal of this process, all within EXIT_TIMEOUT_S."""
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    for portal in list(_live):
        portal._exit(deadline)
