"""The worker on a broker whose leases lapse by themselves (`lapsing_leases`, as SQS's
visibility timeout): a job whose lease cannot be extended is given up before its
deadline, never settled, and stopped where it can be. Driven on the memory broker
declaring that capability, its extensions failing on demand, with a FakeClock moved
past the deadline; the real thing against SQS is `tests/integration/test_sqs_worker.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Sequence

import pytest

from offload import JobState, Offload
from offload.brokers import SCHEMES
from offload.brokers.memory import MemoryBroker
from offload.brokers.records import Lease
from offload.errors import BrokerUnavailable
from offload.testing import FakeClock
from tests.running import working

LEASE_S = 3.0


class LapsingMemory(MemoryBroker):
    """`lapsingmemory://`: the memory broker declaring leases that lapse by themselves,
    whose `extend` fails while `down` (an unreachable broker)."""

    capabilities = dataclasses.replace(MemoryBroker.capabilities, lapsing_leases=True)
    down = False

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        if LapsingMemory.down:
            raise BrokerUnavailable("the test cut the broker off")
        return await super().extend(leases, lease_s)


@pytest.fixture
def app(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Offload:
    monkeypatch.setitem(SCHEMES, "lapsingmemory", (__name__, "LapsingMemory"))
    monkeypatch.setattr(LapsingMemory, "down", False)
    return Offload("lapsingmemory://", clock=clock)


async def until(check: object, within: float = 10) -> None:
    assert callable(check)
    for _ in range(int(within / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached within {within} s")


async def test_a_sync_job_past_its_provable_deadline_is_never_settled(
    app: Offload, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an embedded worker running a sync handler (in a thread: it cannot be stopped)
    release = threading.Event()
    started = threading.Event()

    @app.task
    def blocking() -> str:
        started.set()
        release.wait(10)
        return "done"

    job = await blocking.enqueue_async()
    async with working(app, concurrency=1, lease_s=LEASE_S, stop_within_s=10) as worker:
        try:
            await until(started.is_set)
            # When extensions fail and the clock passes the point where SQS could hand
            # the job out again
            LapsingMemory.down = True
            clock.advance(LEASE_S - 0.5)
            await until(lambda: "its outcome is dropped" in caplog.text)
            release.set()
            await until(lambda: not worker.running_jobs())
            # Then its outcome was not recorded: the job is still the broker's to hand out
            info = await job.info_async()
            assert info.state is JobState.RUNNING
            assert info.result is None
        finally:
            release.set()
            LapsingMemory.down = False


async def test_an_async_job_past_its_provable_deadline_is_stopped_and_not_settled(
    app: Offload, clock: FakeClock
) -> None:
    finished = asyncio.Event()

    @app.task
    async def slow() -> str:
        await asyncio.sleep(30)
        finished.set()
        return "done"

    job = await slow.enqueue_async()
    async with working(app, concurrency=1, lease_s=LEASE_S, stop_within_s=10) as worker:
        try:
            await until(lambda: bool(worker.running_jobs()))
            LapsingMemory.down = True
            clock.advance(LEASE_S - 0.5)
            await until(lambda: not worker.running_jobs())
            assert not finished.is_set()
            assert (await job.info_async()).state is JobState.RUNNING
        finally:
            LapsingMemory.down = False


async def test_a_job_whose_extensions_succeed_is_not_stopped_however_long_it_runs(
    app: Offload, clock: FakeClock
) -> None:
    gate = asyncio.Event()

    @app.task
    async def long() -> str:
        await gate.wait()
        return "done"

    job = await long.enqueue_async()
    async with working(app, concurrency=1, lease_s=LEASE_S, stop_within_s=10) as worker:
        await until(lambda: bool(worker.running_jobs()))
        for _ in range(5):  # five leases long, each extension landing in time
            await asyncio.sleep(LEASE_S / 3 + 0.5)  # an extension at least (real time)
            clock.advance(LEASE_S / 2)
            await asyncio.sleep(0.3)  # the deadline check (real time)
            assert worker.running_jobs() == [job.id]
        gate.set()
        assert await job.result_async(timeout=5) == "done"
