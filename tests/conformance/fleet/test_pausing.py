"""Pause flags (`set_paused`, `paused`): the same contract on every broker."""

from __future__ import annotations

from offload import pausing
from offload.brokers.base import Broker
from offload.testing import FakeClock


async def test_pause_flags_are_raised_once_lowered_once_and_listed(
    broker: Broker, clock: FakeClock
) -> None:
    assert await broker.paused() == {}
    assert await broker.set_paused("queue:mail", True)
    raised_at = clock.now()
    clock.advance(5)
    assert not await broker.set_paused("queue:mail", True)  # keeps its first time
    assert await broker.set_paused("schedule:nightly", True)
    flags = await broker.paused()
    assert set(flags) == {"queue:mail", "schedule:nightly"}
    assert abs(flags["queue:mail"] - raised_at) < 1e-3
    held = await pausing.paused(broker)
    assert list(held.queues) == ["mail"] and list(held.schedules) == ["nightly"]
    assert await broker.set_paused("queue:mail", False)
    assert not await broker.set_paused("queue:mail", False)
    assert set(await broker.paused()) == {"schedule:nightly"}
