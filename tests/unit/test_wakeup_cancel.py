"""In-process wake-ups pass a cancellation on, even one that lands in the loop turn of
the wake-up (`asyncio.wait_for` on Python 3.11 returned as if woken and dropped it)."""

from __future__ import annotations

import asyncio

import pytest

from offload.brokers._wakeup import JobWaiters, Wakeup


async def _false() -> bool:
    return False


async def test_a_wakeup_wait_cancelled_as_it_is_notified_ends_cancelled() -> None:
    wakeup = Wakeup()
    for turns in range(5):
        waiting = asyncio.create_task(wakeup.wait(30.0))
        await asyncio.sleep(0)  # registered
        wakeup.notify()  # sets the event on a later loop turn
        for _ in range(turns):
            await asyncio.sleep(0)
        if waiting.cancel():  # not over yet: it must end cancelled
            with pytest.raises(asyncio.CancelledError):
                await waiting


async def test_a_job_waiter_cancelled_as_it_is_notified_ends_cancelled() -> None:
    waiters = JobWaiters()
    for turns in range(5):
        waiting = asyncio.create_task(waiters.wait("j", _false, 30.0))
        for _ in range(3):
            await asyncio.sleep(0)  # registered, `ended()` answered
        waiters.notify("j")
        for _ in range(turns):
            await asyncio.sleep(0)
        if waiting.cancel():  # not over yet: it must end cancelled
            with pytest.raises(asyncio.CancelledError):
                await waiting
