"""A stop whose cancellation a broker's library swallowed still ends an idle worker's
wait (psycopg 3.2.1 could return a query's rows when the cancel landed as it ended)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from offload import Offload
from offload.worker import Worker


async def test_a_stop_swallowed_by_next_due_still_ends_the_idle_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Offload("memory://")
    broker = await app.connected_broker()
    entered = asyncio.Event()

    async def swallowing_next_due(self: object, queues: Sequence[str]) -> float | None:
        entered.set()
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            pass  # as the library did: the call returns as if the cancel came too late
        return None

    monkeypatch.setattr(type(broker), "next_due", swallowing_next_due)
    worker = Worker(app, poll_s=30.0)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(entered.wait(), 5)
    worker.stop()
    await asyncio.wait_for(running, 5)  # before: the wait slept its 30 s poll
