"""Shutdown and recycling of a `Worker` embedded in a program (no `hard_exit`), on the
memory broker. The CLI's hard exit is tested with real processes in
tests/integration/test_worker_shutdown.py."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from offload import JobState, Offload, Worker
from offload.errors import BrokerUnavailable
from offload.testing import FakeClock


@pytest.fixture
def app(clock: FakeClock) -> Offload:
    return Offload("memory://", clock=clock)


async def wait_until_running(app: Offload, job_id: str) -> None:
    for _ in range(500):
        if await app.job(job_id).state_async() is JobState.RUNNING:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the job never started")


async def test_sync_handler_past_the_grace_period_is_waited_for_not_given_back(
    app: Offload,
) -> None:
    started, release = threading.Event(), threading.Event()

    @app.task
    def blocking() -> str:
        started.set()
        release.wait(10)
        return "done"

    job = await blocking.enqueue_async()
    worker = Worker(app, grace_s=0.05, poll_s=0.01)
    runner = asyncio.create_task(worker.run())
    # The handler itself must have started: a job the broker shows running may still
    # wait for a thread, and a stop then rightly gives it back unstarted.
    assert await asyncio.to_thread(started.wait, 10)
    worker.stop()
    await asyncio.sleep(0.5)  # ten times the grace period
    assert not runner.done()
    assert await job.state_async() is JobState.RUNNING  # still its own, not given back
    release.set()
    await asyncio.wait_for(runner, 10)
    info = await job.info_async()
    assert (info.state, info.attempt) == (JobState.SUCCEEDED, 1)


async def test_max_jobs_takes_that_many_jobs_then_recycles(app: Offload) -> None:
    @app.task
    async def nap(n: int) -> int:
        await asyncio.sleep(0.2)
        return n

    jobs = [await nap.enqueue_async(i) for i in range(5)]
    worker = Worker(app, concurrency=2, max_jobs=3, grace_s=0, poll_s=0.01)
    await asyncio.wait_for(worker.run(), 10)  # returns by itself
    assert worker.recycled == "took 3 jobs (--max-jobs 3)"
    infos = [await j.info_async() for j in jobs]
    assert [(i.state, i.attempt) for i in infos[:3]] == [(JobState.SUCCEEDED, 1)] * 3
    assert [(i.state, i.attempt) for i in infos[3:]] == [(JobState.QUEUED, 0)] * 2


async def test_memory_recycling_waits_for_running_jobs_until_a_stop(app: Offload) -> None:
    @app.task
    async def quick() -> None:
        return None

    @app.task
    async def stuck() -> None:
        await asyncio.sleep(60)

    long = await stuck.enqueue_async()
    worker = Worker(app, concurrency=2, max_memory_mb=1, grace_s=0.1, poll_s=0.01)
    runner = asyncio.create_task(worker.run())
    await wait_until_running(app, long.id)
    await quick.enqueue_async()  # after it, the memory check trips
    for _ in range(500):
        if worker.recycled:
            break
        await asyncio.sleep(0.01)
    assert worker.recycled is not None and "--max-memory 1" in worker.recycled
    await asyncio.sleep(0.5)  # five grace periods: recycling has none
    assert not runner.done()
    assert await long.state_async() is JobState.RUNNING
    worker.stop()  # a stop on request has one
    await asyncio.wait_for(runner, 5)
    assert worker.recycled is None
    info = await long.info_async()
    assert info.state is JobState.SCHEDULED
    assert info.error is not None and info.error.type == "WorkerShutdown"
    [given_back] = info.attempts  # recorded in its history, with the worker that stopped
    assert (given_back.outcome, given_back.worker_id) == ("retried", worker.id)
    assert given_back.error is not None and given_back.error.type == "WorkerShutdown"


async def test_stop_returns_when_a_lease_extension_swallows_its_cancellation() -> None:
    app = Offload("memory://")
    release = asyncio.Event()
    started = asyncio.Event()

    @app.task
    async def slow() -> None:
        started.set()
        await release.wait()

    extend = app.broker.extend

    async def swallowing(leases: Any, lease_s: float) -> list[bool]:
        """A broker call that turns its cancellation into an error, as client libraries
        may; the first one after the stop also lets the job finish."""
        release.set()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            raise BrokerUnavailable("cancelled mid-call") from None
        return await extend(leases, lease_s)

    app.broker.extend = swallowing  # type: ignore[method-assign]
    await slow.enqueue_async()
    worker = Worker(app, poll_s=0.01)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    worker.stop()
    await asyncio.wait_for(runner, 4)  # the keeper's next sleep was lease_s / 3 = 10 s
