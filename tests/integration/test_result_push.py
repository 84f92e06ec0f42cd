"""`Job.result()` waits on the broker's push: it reads the job a few times, not in a
poll loop, and returns promptly once another process's worker finishes the job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from offload import Offload, Worker
from tests.conftest import BROKER_NAMES

#: How long the job runs (seconds): a poll loop with a 5→250 ms backoff reads ~9 times.
RUN_S = 1.0


@pytest.mark.parametrize("name", BROKER_NAMES)
async def test_result_reads_the_job_a_few_times_not_in_a_loop(
    name: str, broker_url: Callable[[str], str]
) -> None:
    url = broker_url(name)
    producer = Offload(url)
    # Another "process": its own app and broker connections (the memory broker lives in
    # one process, so there the worker shares the producer's app).
    runner = producer if name == "memory" else Offload(url)
    cross_process = runner is not producer

    @runner.task(name="slow")
    async def slow() -> str:
        await asyncio.sleep(RUN_S)
        return "done"

    broker = await producer.connected_broker()
    if cross_process and not broker.capabilities.push_results:
        pytest.skip(f"{name}: no cross-process result push (declared); re-reads back off")
    reads = 0
    get_job = broker.get_job

    async def counted(job_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await get_job(job_id)

    broker.get_job = counted  # type: ignore[method-assign]
    worker = Worker(runner, poll_s=0.05)
    running = asyncio.create_task(worker.run())
    try:
        job = await producer.enqueue_async("slow")
        result = await job.result_async(timeout=30)
        finished = time.time()
        info = await job.info_async()
        assert result == "done"
        assert info.finished_at is not None
        assert finished - info.finished_at < 0.5  # pushed, not found by a late re-read
        assert reads <= 3, f"{reads} reads of the job while it ran for {RUN_S} s"
    finally:
        worker.stop()
        await running
        await producer.aclose()
        if cross_process:
            await runner.aclose()
