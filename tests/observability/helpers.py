"""Run a real worker (`Worker.run`, the system clock) until a condition holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from offload import Offload, Worker


async def run_worker_until(
    app: Offload, done: Callable[[], Awaitable[bool]], *, timeout_s: float = 30.0, **options: object
) -> Worker:
    """Start `Worker(app, **options)`, wait until `done()` is true, stop it and wait
    for its end (so its stop hooks have run)."""
    worker = Worker(app, poll_s=0.05, **options)  # type: ignore[arg-type]
    running = asyncio.create_task(worker.run())
    deadline = time.monotonic() + timeout_s
    try:
        while not await done():
            if running.done():
                running.result()
                raise AssertionError("the worker stopped early")
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the jobs")
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await running
    return worker


async def all_ended(app: Offload, job_ids: list[str]) -> bool:
    """Whether every job has reached a final state."""
    for job_id in job_ids:
        info = await app.broker.get_job(job_id)
        if info is None or info.state.value not in ("succeeded", "dead", "cancelled", "expired"):
            return False
    return True
