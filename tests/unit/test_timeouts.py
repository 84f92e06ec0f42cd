"""A job's timeout really stops it: async handlers are cancelled, sync handlers run in
a child process that is killed. These use real time (well under a second each)."""

from __future__ import annotations

import asyncio
import os
import time

from offload import Backoff, JobState, Offload, Retry, Worker, current_job

app = Offload("memory://")


@app.task(timeout=0.2, max_attempts=1)
async def async_sleeper() -> None:
    await asyncio.sleep(30)


@app.task(timeout=0.5, max_attempts=1)
def sync_sleeper(marker: str) -> None:
    time.sleep(3)
    with open(marker, "w") as f:  # reached only if the child was not killed
        f.write("still running")


@app.task(timeout=5)
def sync_in_child(x: int) -> dict[str, int]:
    ctx = current_job()
    return {"x": x * 2, "pid": os.getpid(), "attempt": ctx.attempt}


@app.task(timeout=5, max_attempts=3, backoff=Backoff(base_s=0.0, jitter=False))
def sync_retry_in_child() -> int:
    if current_job().attempt < 2:
        raise Retry(delay=0)
    return current_job().attempt


@app.task(timeout=5, give_up_on=(KeyError,))
def sync_raises_in_child() -> None:
    raise KeyError("missing")


@app.task(timeout=5, max_attempts=1)
def sync_nan_in_child() -> float:
    return float("nan")


async def test_a_nan_result_from_a_child_process_is_refused_not_read_back_as_none() -> None:
    """The child encoded the result and NaN came back as null: the job succeeded with
    None. The child now refuses it as the worker does."""
    job = await sync_nan_in_child.enqueue_async()
    await Worker(app).drain()
    info = await job.info_async()
    assert info.state is JobState.DEAD
    assert info.error is not None and info.error.type == "SerializationError"
    assert "holds nan" in info.error.message


async def test_async_timeout_cancels_the_handler() -> None:
    job = await async_sleeper.enqueue_async()
    started = time.monotonic()
    await Worker(app).drain()
    assert time.monotonic() - started < 2
    info = await job.info_async()
    assert info.state is JobState.DEAD
    assert info.error is not None and info.error.type == "JobTimeout"


async def test_sync_timeout_kills_the_child_process(tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "marker")
    job = await sync_sleeper.enqueue_async(marker)
    worker = Worker(app)
    started = time.monotonic()
    await worker.drain()
    assert time.monotonic() - started < 2.5
    info = await job.info_async()
    assert info.state is JobState.DEAD
    assert info.error is not None and info.error.type == "JobTimeout"
    await asyncio.sleep(3)
    assert not os.path.exists(marker)


async def test_sync_handler_with_timeout_runs_in_a_reused_child() -> None:
    jobs = [await sync_in_child.enqueue_async(i) for i in range(3)]
    await Worker(app, concurrency=1).drain()
    results = [await j.result_async(timeout=0) for j in jobs]
    assert [r["x"] for r in results] == [0, 2, 4]
    assert len({r["pid"] for r in results}) == 1  # one child, reused
    assert results[0]["pid"] != os.getpid()


async def test_child_process_errors_keep_retry_semantics() -> None:
    retried = await sync_retry_in_child.enqueue_async()
    buried = await sync_raises_in_child.enqueue_async()
    worker = Worker(app)
    await worker.drain()
    await asyncio.sleep(0.01)
    await worker.drain()
    assert await retried.result_async(timeout=0) == 2
    info = await buried.info_async()
    assert info.state is JobState.DEAD
    assert info.error is not None and info.error.type == "KeyError"
    assert "not retryable" in info.error.message
