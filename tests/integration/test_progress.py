"""A handler reports progress; the enqueuer reads it while the job runs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from offload import Offload, Worker, current_job
from tests.conftest import BROKER_NAMES


@pytest.fixture(params=BROKER_NAMES)
def url(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> str:
    return broker_url(request.param)


async def _progress_of(job: object, expected: object) -> None:
    for _ in range(500):
        if (await job.info_async()).progress == expected:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"progress never became {expected!r}")


async def test_async_and_sync_handlers_report_progress(url: str) -> None:
    app = Offload(url)
    gate = asyncio.Event()
    sync_gate = threading.Event()

    @app.task(name="steps")
    async def steps(n: int) -> int:
        for i in range(n):
            current_job().progress({"done": i + 1, "of": n})
            await asyncio.sleep(0)
        await gate.wait()
        return n

    @app.task(name="blocking")
    def blocking() -> str:
        current_job().progress(50)
        sync_gate.wait(10)
        current_job().progress(100)
        return "ok"

    worker = Worker(app, poll_s=0.05)
    runner = asyncio.create_task(worker.run())
    try:
        async_job = await steps.enqueue_async(3)
        sync_job = await blocking.enqueue_async()
        await _progress_of(async_job, {"done": 3, "of": 3})
        await _progress_of(sync_job, 50)
        gate.set()
        sync_gate.set()
        assert await async_job.result_async(timeout=10) == 3
        assert await sync_job.result_async(timeout=10) == "ok"
        assert (await sync_job.info_async()).progress == 100
    finally:
        gate.set()
        sync_gate.set()
        worker.stop()
        await runner
        await app.aclose()


def test_progress_outside_a_worker_is_a_no_op() -> None:
    from offload.context import JobContext

    ctx = JobContext("x", "t", "default", 1, 1, None, 0.0, None, "w")
    ctx.progress(1)  # nothing to report to; never raises
