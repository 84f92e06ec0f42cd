"""The worker registry: register, refresh, lapse and unregister."""

from __future__ import annotations

from dataclasses import replace

from offload.brokers.base import Broker, WorkerInfo
from offload.envelope import JobState
from offload.testing import FakeClock

from ..helpers import (
    approx_time,
)

ZERO = dict.fromkeys(JobState, 0)


def worker_info(worker_id: str, clock: FakeClock) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        hostname="host-1",
        pid=4242,
        queues=["default", "mail"],
        concurrency=8,
        started_at=clock.now() - 100,
        running=2,
        processed=17,
        extra={"version": "1.2", "tags": ["a", "b"]},
    )


async def test_register_worker_lists_it_with_last_seen(broker: Broker, clock: FakeClock) -> None:
    info = worker_info("w1", clock)

    await broker.register_worker(info, ttl_s=30)

    [seen] = await broker.workers()
    assert seen.id == "w1"
    assert (seen.hostname, seen.pid, seen.queues) == ("host-1", 4242, ["default", "mail"])
    assert (seen.concurrency, seen.running, seen.processed) == (8, 2, 17)
    assert seen.started_at == approx_time(info.started_at)
    assert seen.extra == {"version": "1.2", "tags": ["a", "b"]}
    assert seen.last_seen == approx_time(clock.now())


async def test_register_worker_again_refreshes_it(broker: Broker, clock: FakeClock) -> None:
    await broker.register_worker(worker_info("w1", clock), ttl_s=30)
    await broker.register_worker(worker_info("w2", clock), ttl_s=30)
    clock.advance(20)

    await broker.register_worker(replace(worker_info("w1", clock), processed=18), ttl_s=30)
    clock.advance(20)  # w2 lapsed at +30, w1 lives until +50

    [seen] = await broker.workers()
    assert (seen.id, seen.processed) == ("w1", 18)
    assert seen.last_seen == approx_time(clock.now() - 20)


async def test_worker_vanishes_after_ttl_and_sweep_forgets_it(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.register_worker(worker_info("w1", clock), ttl_s=10)
    await broker.register_worker(worker_info("w2", clock), ttl_s=100)

    clock.advance(9)
    assert sorted(w.id for w in await broker.workers()) == ["w1", "w2"]
    assert (await broker.sweep()).workers_removed == 0

    clock.advance(2)
    assert [w.id for w in await broker.workers()] == ["w2"]
    assert (await broker.sweep()).workers_removed == 1
    assert (await broker.sweep()).workers_removed == 0
    assert [w.id for w in await broker.workers()] == ["w2"]


async def test_unregister_worker_forgets_it(broker: Broker, clock: FakeClock) -> None:
    await broker.register_worker(worker_info("w1", clock), ttl_s=30)
    await broker.register_worker(worker_info("w2", clock), ttl_s=30)

    await broker.unregister_worker("w1")
    await broker.unregister_worker("never-registered")

    assert [w.id for w in await broker.workers()] == ["w2"]
