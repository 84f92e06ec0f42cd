"""Helpers of the Django integration's tests: the backends, and real workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def backend(alias: str = "default") -> Any:
    from django.tasks import task_backends

    return task_backends[alias]


def drain(alias: str = "default", **options: Any) -> int:
    """Run every ready job of the backend's broker with a real `Worker` (on the app's
    portal loop, so sync handlers run in its threads as in `offload worker`)."""
    from offload.worker import Worker

    app = backend(alias).app
    return int(app.portal.run(Worker(app, **options).drain()))


@contextmanager
def running_worker(alias: str = "default", **options: Any) -> Iterator[Any]:
    """A real worker running on the backend's app until the block ends."""
    from offload.worker import Worker

    app = backend(alias).app
    worker = Worker(app, poll_s=0.2, **options)
    thread = threading.Thread(target=lambda: app.portal.run(worker.run()), daemon=True)
    thread.start()
    try:
        yield worker
    finally:

        async def stop() -> None:
            worker.stop()

        app.portal.run(stop())
        thread.join(30)
        assert not thread.is_alive(), "the worker did not stop"


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `predicate` until it returns a truthy value (generous: the machine is busy)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)
