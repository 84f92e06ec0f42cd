"""Plain-function handlers on the worker's own threads (`worker/threads.py`)."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

from offload import JobState, Offload, Worker
from offload.worker.threads import HandlerThreads


async def test_sync_handlers_run_side_by_side_up_to_the_concurrency() -> None:
    app = Offload("memory://")
    barrier = threading.Barrier(4, timeout=5)

    @app.task
    def meet(n: int) -> int:
        barrier.wait()  # only returns once 4 handlers run at the same time
        return n

    jobs = [await meet.enqueue_async(i) for i in range(8)]
    assert await Worker(app, concurrency=4).drain() == 8
    assert [await j.result_async(timeout=1) for j in jobs] == list(range(8))


async def test_handler_raising_stop_iteration_fails_its_job_only() -> None:
    app = Offload("memory://")

    @app.task(max_attempts=1)
    def stops() -> None:
        raise StopIteration("no more")

    @app.task
    def fine() -> str:
        return "ok"

    bad, good = await stops.enqueue_async(), await fine.enqueue_async()
    assert await Worker(app, concurrency=2).drain() == 2
    info = await bad.info_async()
    assert info.state is JobState.DEAD
    assert info.error is not None and info.error.type == "StopIteration"
    assert await good.result_async(timeout=1) == "ok"


async def test_results_finished_together_come_back_in_one_loop_turn() -> None:
    threads = HandlerThreads(4, name="test-handler")
    gate = threading.Event()
    try:

        def call(i: int) -> int:
            gate.wait(5)
            return i

        futures = [threads.submit(str(i), functools.partial(call, i)) for i in range(4)]
        await asyncio.sleep(0.05)
        assert threads.running() == {"0", "1", "2", "3"}
        wakeups = 0
        deliver = threads._deliver

        def counted() -> None:
            nonlocal wakeups
            wakeups += 1
            deliver()

        threads._deliver = counted  # type: ignore[method-assign]
        gate.set()
        # The loop is held (a blocking wait on its own thread) until all four results
        # are waiting: however the threads are scheduled, they finish before the loop
        # runs again, so exactly one delivery must take all four.
        deadline = time.monotonic() + 5
        while len(threads._done) < 4 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert await asyncio.gather(*futures) == [0, 1, 2, 3]
        assert wakeups == 1
        assert threads.running() == set()
    finally:
        threads.close()


async def test_job_cancelled_before_a_thread_takes_it_never_runs() -> None:
    threads = HandlerThreads(1, name="test-handler")
    gate = threading.Event()
    ran: list[str] = []
    try:
        first = threads.submit("first", lambda: gate.wait(5))
        second = threads.submit("second", lambda: ran.append("second"))
        await asyncio.sleep(0.05)
        assert threads.running() == {"first"}  # the second waits for the only thread
        second.cancel()
        gate.set()
        assert await first is True
        await asyncio.sleep(0.05)
        assert ran == []
    finally:
        threads.close()


async def test_plain_function_job_runs_whole_in_a_thread_without_a_job_task() -> None:
    app = Offload("memory://")
    seen: list[str] = []

    @app.task
    def plain(n: int) -> int:
        seen.append(threading.current_thread().name)
        return n * 2

    jobs = [await plain.enqueue_async(i) for i in range(5)]
    worker = Worker(app, concurrency=2, poll_s=0.01)
    runner = asyncio.create_task(worker.run())
    names: set[str] = set()
    while len(seen) < 5:  # no asyncio task of the worker's ever stands for a job
        names |= {t.get_name() for t in asyncio.all_tasks()}
        await asyncio.sleep(0)
    assert [await j.result_async(timeout=2) for j in jobs] == [0, 2, 4, 6, 8]
    worker.stop()
    await asyncio.wait_for(runner, 5)
    assert not [n for n in names if n.startswith("job [")]
    assert all(name.startswith("offload-handler") for name in seen)
    assert worker.processed == 5


async def test_jobs_waiting_for_a_handler_thread_are_released_at_stop() -> None:
    """Up to `concurrency` more jobs wait for a thread (`lane.py`); a stop takes back
    those no thread took, released at once without an attempt, as the prefetched."""
    app = Offload("memory://")
    started, gate = threading.Event(), threading.Event()

    @app.task
    def hold(n: int) -> int:
        started.set()
        gate.wait(10)
        return n

    jobs = [await hold.enqueue_async(i) for i in range(4)]
    worker = Worker(app, concurrency=1, prefetch=3, grace_s=10, poll_s=0.01)
    runner = asyncio.create_task(worker.run())
    await asyncio.to_thread(started.wait, 5)
    assert len(worker.running_jobs()) == 2  # one in the thread, one waiting for it
    worker.stop()
    await asyncio.sleep(0.1)
    states = [await j.state_async() for j in jobs]
    assert states == [JobState.RUNNING] + [JobState.QUEUED] * 3
    assert [(await j.info_async()).attempt for j in jobs[1:]] == [0, 0, 0]
    gate.set()
    await asyncio.wait_for(runner, 10)
    assert await jobs[0].result_async(timeout=0) == 0
    assert [await j.state_async() for j in jobs[1:]] == [JobState.QUEUED] * 3


async def test_lane_outcomes_other_than_success_take_the_one_job_path() -> None:
    app = Offload("memory://")

    @app.task(max_attempts=1)
    def flaky(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n

    good, bad = await flaky.enqueue_async(1), await flaky.enqueue_async(-1)
    assert await Worker(app, concurrency=2).drain() == 2
    assert await good.result_async(timeout=1) == 1
    info = await bad.info_async()
    assert (info.state, info.attempt) == (JobState.DEAD, 1)
    assert len(info.attempts) == 1  # its history, written by the one-job path
    assert info.error is not None and "negative" in info.error.message


async def test_stop_reports_the_running_jobs_and_cancels_the_waiting_ones() -> None:
    threads = HandlerThreads(1, name="test-handler")
    gate = threading.Event()
    ran: list[str] = []
    try:
        first = threads.submit("first", lambda: gate.wait(5))
        second = threads.submit("second", lambda: ran.append("second"))
        await asyncio.sleep(0.05)
        assert threads.stop(["first", "second", "other"]) == {"first"}
        assert second.cancelled() and not first.done()
        gate.set()
        assert await first is True
        await asyncio.sleep(0.05)
        assert ran == []
    finally:
        threads.close()
