"""A handler that raises a `BaseException` (`sys.exit()`, `KeyboardInterrupt`, ...)
fails its own job, as any exception does; the worker and the jobs beside it go on.
Child-process handlers are covered by tests/integration/test_worker_shutdown.py."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from offload import Backoff, Job, JobState, Offload, Task, Worker
from offload.testing import FakeClock


class Meltdown(BaseException):
    """A user's own BaseException subclass."""


def exit_3() -> None:
    sys.exit(3)


def interrupt() -> None:
    raise KeyboardInterrupt("from the handler")


def generator_exit() -> None:
    raise GeneratorExit("closing")


def meltdown() -> None:
    raise Meltdown("core")


def cancelled() -> None:  # raised by the handler itself: no one cancelled the job
    raise asyncio.CancelledError("self-inflicted")


RAISERS: dict[str, Callable[[], None]] = {
    "SystemExit": exit_3,
    "KeyboardInterrupt": interrupt,
    "GeneratorExit": generator_exit,
    "Meltdown": meltdown,
    "CancelledError": cancelled,
}


@pytest.fixture
def app(clock: FakeClock) -> Offload:
    return Offload("memory://", clock=clock)


def define(app: Offload, flavour: str, raiser: Callable[[], None], **options: object) -> str:
    """Register a task named `culprit` that calls `raiser`, as async or sync."""
    if flavour == "async":

        async def culprit_async() -> None:
            await asyncio.sleep(0)
            raiser()

        app.task(name="culprit", **options)(culprit_async)  # type: ignore[call-overload]
    else:

        def culprit_sync() -> None:
            raiser()

        app.task(name="culprit", **options)(culprit_sync)  # type: ignore[call-overload]
    return "culprit"


@pytest.mark.parametrize("flavour", ["async", "sync"])
@pytest.mark.parametrize("raised", list(RAISERS))
async def test_base_exception_in_a_handler_fails_its_job_only(
    app: Offload, flavour: str, raised: str
) -> None:
    both_running = threading.Barrier(2, timeout=10)

    @app.task
    def innocent(meet: bool) -> str:
        if meet:
            both_running.wait()  # the culprit runs beside it
        return "fine"

    def raiser() -> None:
        both_running.wait()
        RAISERS[raised]()

    define(app, flavour, raiser)
    bystander = await innocent.enqueue_async(True)
    culprit = await app.enqueue_async("culprit")
    worker = Worker(app, concurrency=2)
    assert await worker.drain() == 2

    assert await bystander.result_async(timeout=0) == "fine"
    assert (await bystander.info_async()).attempt == 1
    info = await culprit.info_async()
    assert (info.state, info.attempt) == (JobState.DEAD, 1)  # the default retry_on: Exception
    assert info.error is not None and info.error.type == raised
    assert f"{raised} is not retryable" in info.error.message
    assert info.error.traceback and raised in info.error.traceback

    after = await innocent.enqueue_async(False)
    assert await worker.drain() == 1  # the same worker goes on
    assert await after.result_async(timeout=0) == "fine"


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_base_exception_is_retried_when_the_policy_names_it(
    app: Offload, clock: FakeClock, flavour: str
) -> None:
    backoff = Backoff(base_s=2.0, cap_s=10.0, jitter=False)
    define(app, flavour, exit_3, retry_on=(SystemExit,), max_attempts=2, backoff=backoff)
    job = await app.enqueue_async("culprit")
    worker = Worker(app)
    await worker.drain()
    info = await job.info_async()
    assert info.state is JobState.SCHEDULED
    assert info.error is not None and (info.error.type, info.error.message) == ("SystemExit", "3")
    clock.advance(2.1)
    await worker.drain()
    info = await job.info_async()
    assert (info.state, info.attempt) == (JobState.DEAD, 2)
    assert info.error is not None and "attempts exhausted (2/2)" in info.error.message


async def cancelled_once_started(
    app: Offload, task: Task[[], Coroutine[Any, Any, str]], started: asyncio.Event
) -> tuple[Worker, asyncio.Task[None], Job]:
    """A worker running `task`'s job, which is cancelled once its handler started."""
    worker = Worker(app, poll_s=0.01)
    runner = asyncio.create_task(worker.run())
    job = await task.enqueue_async()
    await asyncio.wait_for(started.wait(), 5)
    assert await job.cancel_async()
    return worker, runner, job


async def test_cancel_of_a_job_that_swallowed_an_earlier_one_still_cancels_it() -> None:
    """An async handler runs in its job's task; each `Job.cancel` check cancels that
    task, and the executor takes those cancellations back: a handler that ignored the
    first one is cancelled again and the job ends `cancelled`, not as a shutdown."""
    app = Offload("memory://")
    started = asyncio.Event()
    seen: list[str] = []

    @app.task(name="stubborn")
    async def stubborn() -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("ignored")
        await asyncio.sleep(30)  # the second cancel ends this
        return "finished"

    worker, runner, job = await cancelled_once_started(app, stubborn, started)
    for _ in range(400):
        if await job.state_async() is JobState.CANCELLED:
            break
        await asyncio.sleep(0.01)
    worker.stop()
    await asyncio.wait_for(runner, 5)
    info = await job.info_async()
    assert (info.state, seen) == (JobState.CANCELLED, ["ignored"])
    assert info.error is not None and info.error.type == "Cancelled"


async def test_handler_that_ignores_a_cancel_and_returns_succeeds_and_the_task_goes_on() -> None:
    app = Offload("memory://")
    started, ignored = asyncio.Event(), asyncio.Event()

    @app.task(name="shrugs")
    async def shrugs() -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            ignored.set()
        task = asyncio.current_task()
        assert task is not None
        return f"cancelling={task.cancelling()}"  # taken back before it settles

    worker, runner, job = await cancelled_once_started(app, shrugs, started)
    await asyncio.wait_for(ignored.wait(), 5)
    result = await job.result_async(timeout=5)
    worker.stop()
    await asyncio.wait_for(runner, 5)
    assert result == "cancelling=1"  # inside the handler the cancel is still counted
    assert (await job.info_async()).state is JobState.SUCCEEDED
