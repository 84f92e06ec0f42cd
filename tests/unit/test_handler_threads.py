"""Plain-function handlers on the worker's own threads (`worker/threads.py`)."""

from __future__ import annotations

import asyncio
import functools
import threading

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
        assert await asyncio.gather(*futures) == [0, 1, 2, 3]
        assert 1 <= wakeups < 4
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
