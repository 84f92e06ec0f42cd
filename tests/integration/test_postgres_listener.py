"""The PostgreSQL listener passes a cancellation on wherever it lands: a worker stopped
while idle cancels its `wait_for_work`, and must not sleep on for its poll interval."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from offload.brokers import from_url
from offload.brokers.postgres._listener import _wait_set
from offload.brokers.roles import Broker

pytest.importorskip("psycopg")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def broker(postgres_url: str) -> AsyncIterator[Broker]:
    broker = from_url(postgres_url)
    await broker.connect()
    await broker.wait(["default"], 0)  # the listener LISTENs from here on
    try:
        yield broker
    finally:
        await broker.close()


@pytest.mark.parametrize("turns", range(8))
async def test_a_cancelled_wait_ends_in_whichever_loop_turn_the_cancel_lands(
    broker: Broker, turns: int
) -> None:
    # Before, `Listener.start` waited for its (already set) "listening" event with
    # `asyncio.wait_for`, which on Python 3.11 drops a cancel that lands in the loop turn
    # after its inner task finished: the call then slept on in `wait` for the full 30 s.
    waiting = asyncio.create_task(broker.wait(["default"], 30.0))
    for _ in range(turns):
        await asyncio.sleep(0)
    waiting.cancel()
    done, _ = await asyncio.wait({waiting}, timeout=2)
    assert waiting in done, f"wait() still running 2 s after a cancel {turns} loop turns in"
    assert waiting.cancelled()


async def test_an_event_set_in_the_turn_of_the_cancel_still_cancels_the_wait() -> None:
    # The wait that is not already over: set and cancelled in one loop turn, it must end
    # cancelled (`asyncio.wait_for` on Python 3.11 returned as if set).
    event = asyncio.Event()
    for turns in range(4):
        event.clear()
        waiting = asyncio.create_task(_wait_set(event, 30.0))
        for _ in range(turns):
            await asyncio.sleep(0)
        event.set()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
