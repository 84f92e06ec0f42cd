"""`Broker.wait_finished`: `Job.result()` waits on the broker's push, not a poll loop.

Waiting uses real time (asyncio), job times the test's FakeClock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from offload.brokers import from_url
from offload.brokers.base import Broker
from offload.codec import encode_value
from offload.envelope import new_job_id
from offload.testing import FakeClock

from .helpers import BOOM, enqueue_one, reserve_one

#: The wait's timeout; every test that expects a push must return well before it.
LONG_S = 10.0
#: A push arrives well within this (seconds, on a loaded CI machine).
PROMPT_S = 2.0


async def _returns_within(wait: Awaitable[None], seconds: float) -> float:
    started = time.monotonic()
    await asyncio.wait_for(wait, seconds)
    return time.monotonic() - started


async def _ended_meanwhile(
    waiter: Broker, job_id: str, end: Callable[[], Awaitable[object]]
) -> float:
    """Start waiting, end the job 50 ms later, return how long the wait took."""
    waiting = asyncio.create_task(waiter.wait_finished(job_id, LONG_S))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "returned before the job ended"
    await end()
    return await _returns_within(waiting, PROMPT_S)


async def test_returns_at_once_for_a_finished_or_unknown_job(broker: Broker) -> None:
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)
    await broker.ack(lease, encode_value(1), result_ttl_s=None)

    await _returns_within(broker.wait_finished(job_id, LONG_S), PROMPT_S)
    await _returns_within(broker.wait_finished(new_job_id(), LONG_S), PROMPT_S)


async def test_gives_up_after_its_timeout(broker: Broker) -> None:
    job_id = await enqueue_one(broker)

    assert await _returns_within(broker.wait_finished(job_id, 0.2), PROMPT_S) < PROMPT_S


@pytest.mark.parametrize("end", ["ack", "bury", "cancel_running"])
async def test_an_end_in_this_process_wakes_the_waiter(broker: Broker, end: str) -> None:
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)

    async def finish() -> None:
        if end == "ack":
            await broker.ack(lease, encode_value(1), result_ttl_s=None)
        else:
            await getattr(broker, end)(lease, error=BOOM)

    assert await _ended_meanwhile(broker, job_id, finish) < PROMPT_S


async def test_cancel_and_expiry_wake_the_waiter(broker: Broker, clock: FakeClock) -> None:
    cancelled = await enqueue_one(broker)
    assert await _ended_meanwhile(broker, cancelled, lambda: broker.cancel(cancelled)) < PROMPT_S

    stale = await enqueue_one(broker, expires_at=clock.now() + 1)
    clock.advance(2)
    assert await _ended_meanwhile(broker, stale, broker.sweep) < PROMPT_S


async def test_an_end_in_another_process_wakes_the_waiter(broker: Broker, clock: FakeClock) -> None:
    if not broker.capabilities.push_results:
        pytest.skip(f"{broker.url.split(':')[0]} declares no cross-process result push")
    if not broker.capabilities.cross_process:
        pytest.skip("one process only")
    other = from_url(broker.url, clock=clock)  # its own connections, as another process
    await other.connect()
    try:
        job_id = await enqueue_one(broker)
        lease = await reserve_one(other)

        async def ack() -> None:
            await other.ack(lease, encode_value(1), result_ttl_s=None)

        assert await _ended_meanwhile(broker, job_id, ack) < PROMPT_S
    finally:
        await other.close()


async def test_every_waiter_wakes_when_many_jobs_end_one_by_one(broker: Broker) -> None:
    """Ends that land at every point of the waiters' cycles (mid-poll, as a poll times
    out) must each wake their waiter: not one may sleep through to its timeout."""
    jobs = [await enqueue_one(broker) for _ in range(60)]
    waiting = [asyncio.create_task(broker.wait_finished(j, 3 * LONG_S)) for j in jobs]
    await asyncio.sleep(0.05)
    for job_id in jobs:
        assert await broker.cancel(job_id)
        await asyncio.sleep(0.003)  # spread the ends over the waiters' poll cycles
    _, asleep = await asyncio.wait(waiting, timeout=LONG_S)  # generous: 60 round trips
    for task in asleep:
        task.cancel()
    await asyncio.gather(*asleep, return_exceptions=True)
    assert not asleep, f"{len(asleep)} of {len(jobs)} waiters slept through their job's end"
