"""Cancelling jobs through a real worker, on every broker, in real time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from offload import Backoff, JobCancelled, JobState, Offload, Worker, chord, current_job, group
from tests.conftest import BROKER_NAMES


@pytest.fixture(params=BROKER_NAMES)
def url(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> str:
    return broker_url(request.param)


async def test_a_running_async_job_sees_a_cancel_within_a_second(url: str) -> None:
    app = Offload(url)
    started = asyncio.Event()
    stopped: list[bool] = []

    @app.task(name="long")
    async def long() -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.append(True)
            raise
        return "finished"

    worker = Worker(app, poll_s=0.05)
    runner = asyncio.create_task(worker.run())
    try:
        job = await long.enqueue_async()
        await asyncio.wait_for(started.wait(), 10)
        t0 = time.monotonic()
        assert await job.cancel_async()
        while (await job.state_async()) is not JobState.CANCELLED:
            await asyncio.sleep(0.01)
            assert time.monotonic() - t0 < 5
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0, elapsed
        assert stopped == [True]
        info = await job.info_async()
        assert info.error is not None and info.error.type == "Cancelled"
        with pytest.raises(JobCancelled):
            await job.result_async(timeout=1)
    finally:
        worker.stop()
        await runner
        await app.aclose()


async def test_a_running_sync_job_runs_to_completion_after_a_cancel(url: str) -> None:
    app = Offload(url)
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    @app.task(name="blocking")
    def blocking() -> str:
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)
        return "done"

    worker = Worker(app, poll_s=0.05)
    runner = asyncio.create_task(worker.run())
    try:
        job = await blocking.enqueue_async()
        await asyncio.wait_for(started.wait(), 10)
        assert await job.cancel_async()
        await asyncio.sleep(0.8)  # more than a cancel poll
        assert (await job.info_async()).cancel_requested
        release.set()
        assert await job.result_async(timeout=10) == "done"
    finally:
        worker.stop()
        await runner
        await app.aclose()


async def test_a_cancel_with_every_worker_stopped_holds_after_workers_start(url: str) -> None:
    # Given jobs enqueued and cancelled while no worker runs
    app = Offload(url)
    ran: list[int] = []

    @app.task(name="work")
    def work(i: int) -> int:
        ran.append(i)
        return i

    try:
        jobs = [await work.enqueue_async(i) for i in range(3)]
        delayed = await work.options(delay=0.2).enqueue_async(99)
        assert await jobs[1].cancel_async()
        assert await delayed.cancel_async()
        if not url.startswith("memory"):  # memory's jobs live and die with its app
            # When workers start later (a fresh app, as after a restart)
            await app.aclose()
            app = Offload(url)
            app.task(name="work")(work.fn)
        await asyncio.sleep(0.3)  # the delayed one is due by now
        worker = Worker(app)
        await worker.drain()
        # Then the cancelled jobs never run
        assert sorted(ran) == [0, 2]
        assert await app.job(jobs[1].id).state_async() is JobState.CANCELLED
        assert await app.job(delayed.id).state_async() is JobState.CANCELLED
        assert not await app.job(jobs[1].id).cancel_async()  # finished: nothing to cancel
    finally:
        await app.aclose()


async def test_a_member_cancelled_while_running_cancels_the_chord_callback(url: str) -> None:
    app = Offload(url)
    gate = asyncio.Event()

    @app.task(name="member")
    async def member(i: int) -> int:
        if i == 0:
            await gate.wait()
        return i

    @app.task(name="collect")
    def collect(results: list[int | None]) -> list[int | None]:
        return results

    worker = Worker(app, poll_s=0.05)
    runner = asyncio.create_task(worker.run())
    try:
        flow = await chord(
            group(member.call(i) for i in range(3)), collect.partial()
        ).enqueue_async()
        first = flow.jobs[0]
        while (await first.state_async()) is not JobState.RUNNING:
            await asyncio.sleep(0.01)
        await first.cancel_async()
        # A cancel stops what depends on the cancelled job: the callback never runs
        with pytest.raises(JobCancelled):
            await flow.result_async(timeout=10)
        assert flow.last is not None
        assert await flow.last.state_async() is JobState.CANCELLED
    finally:
        gate.set()
        worker.stop()
        await runner
        await app.aclose()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_job_cancelled_while_running_that_then_fails_is_not_retried(
    url: str, kind: str
) -> None:
    # Given a job with attempts left and no backoff, cancelled while it runs (the cancel
    # says True: it will not run again), whose attempt then fails: a sync handler
    # (cannot be stopped) or an async one that fails before the worker's next check
    app = Offload(url)
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    started: list[int] = []
    no_backoff = Backoff(base_s=0, cap_s=0)

    if kind == "sync":

        @app.task(name="fails", max_attempts=3, backoff=no_backoff)
        def fails() -> None:
            loop.call_soon_threadsafe(started.append, current_job().attempt)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)
            raise RuntimeError("boom")

    else:

        @app.task(name="fails", max_attempts=3, backoff=no_backoff)
        async def fails() -> None:
            started.append(current_job().attempt)
            assert await app.job(current_job().id).cancel_async()
            raise RuntimeError("boom")

    worker = Worker(app, poll_s=0.05)
    runner = asyncio.create_task(worker.run())
    try:
        job = await fails.enqueue_async()
        if kind == "sync":
            deadline = time.monotonic() + 10
            while not started:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert await job.cancel_async()
            release.set()
        deadline = time.monotonic() + 15
        while (await job.state_async()) is not JobState.CANCELLED:
            assert time.monotonic() < deadline, await job.info_async()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # a retry (due at once) would have started by now
        # Then it ends cancelled, and no other attempt ever started
        assert started == [1]
        info = await job.info_async()
        assert info.error is not None and info.error.type == "Cancelled"
        if kind == "sync":  # (an async one may also have been stopped by the check)
            assert "boom" in info.error.message
        with pytest.raises(JobCancelled):
            await job.result_async(timeout=1)
    finally:
        worker.stop()
        await runner
        await app.aclose()


async def test_prefetched_jobs_cancelled_before_they_started_never_run(url: str) -> None:
    # Given a worker running one sync job at a time, with two more reserved (one queued
    # for a handler thread, one in its prefetch buffer): the broker sees them running,
    # so a cancel only flags them
    app = Offload(url)
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    started: list[int] = []

    @app.task(name="blocking")
    def blocking(i: int) -> int:
        loop.call_soon_threadsafe(started.append, i)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(30)
        return i

    worker = Worker(app, concurrency=1, prefetch=2, poll_s=0.05)
    runner = asyncio.create_task(worker.run())
    try:
        jobs = [await blocking.enqueue_async(i) for i in range(3)]
        deadline = time.monotonic() + 15
        while not started or any([await j.state_async() is not JobState.RUNNING for j in jobs]):
            assert time.monotonic() < deadline, [await j.state_async() for j in jobs]
            await asyncio.sleep(0.02)
        [first] = started
        waiting = [j for i, j in enumerate(jobs) if i != first]
        # When those not started are cancelled (True: they will never run)
        for job in waiting:
            assert await job.cancel_async()
        # Then the worker ends them unrun, while the first still runs
        for job in waiting:
            while (await job.state_async()) is not JobState.CANCELLED:
                assert time.monotonic() < deadline, await job.info_async()
                await asyncio.sleep(0.02)
            with pytest.raises(JobCancelled):
                await job.result_async(timeout=1)
        release.set()
        assert await jobs[first].result_async(timeout=15) == first
        await asyncio.sleep(0.3)
        assert started == [first]
    finally:
        release.set()
        worker.stop()
        await runner
        await app.aclose()
