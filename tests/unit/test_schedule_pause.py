"""A paused schedule fires nothing on any replica, and a resume does not catch up the
ticks that fell in the pause (every broker, FakeClock)."""

from __future__ import annotations

from offload import Every, Scheduler
from offload.brokers.base import Broker
from offload.testing import FakeClock
from tests.unit.test_scheduler import all_jobs, fired, on


async def test_a_paused_schedule_fires_nothing_and_resumes_at_its_next_tick(
    broker: Broker, clock: FakeClock
) -> None:
    app = on(broker, clock)
    app.schedule("t", Every(60), id="every-minute", misfire="run_all", overlap="allow")
    app.schedule("t", Every(60), id="other", overlap="allow")
    replicas = [Scheduler(app), Scheduler(app)]
    clock.set(6000)
    for replica in replicas:
        await replica.tick()
    assert await app.pause_schedule_async("every-minute")
    assert not await app.pause_schedule_async("every-minute")
    for now in (6060, 6120):
        clock.set(now)
        for replica in replicas:
            await replica.tick()
    late = Scheduler(app)  # a replica started during the pause
    await late.tick()
    assert list((await app.paused_async()).schedules) == ["every-minute"]
    assert await app.resume_schedule_async("every-minute")
    clock.set(6180)
    for replica in [*replicas, late]:
        await replica.tick()
    assert fired(await all_jobs(broker)) == {
        "every-minute": [6000, 6180],
        "other": [6000, 6060, 6120, 6180],
    }
