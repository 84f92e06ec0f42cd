"""`Broker.wait`: early wake-up on enqueue (pushed or polled), else the timeout.

These tests use real time, so their timeouts are small and their bounds generous.
"""

from __future__ import annotations

import asyncio
import time

from offload.brokers.roles import Delivery
from offload.testing import FakeClock

from ..helpers import enqueue_one


async def test_wait_returns_early_when_a_job_is_enqueued(
    delivery: Delivery, clock: FakeClock
) -> None:
    start = time.monotonic()
    waiter = asyncio.create_task(delivery.wait(["default"], 2.0))
    await asyncio.sleep(0.05)  # let the waiter start waiting
    assert not waiter.done()

    await enqueue_one(delivery)
    await asyncio.wait_for(waiter, 1.0)

    assert time.monotonic() - start < 1.0


async def test_wait_returns_after_timeout_when_nothing_happens(delivery: Delivery) -> None:
    start = time.monotonic()

    await asyncio.wait_for(delivery.wait(["default"], 0.2), 2.0)

    elapsed = time.monotonic() - start
    # May return early spuriously, says the contract, but nothing happens here.
    assert 0.15 <= elapsed < 1.0
