"""Broker outages, loop by loop, on a real broker whose calls are made to fail for a
while (`Outage`): the worker and the scheduler ride them out, log one warning and one
line when the broker is back, and run no job twice. And the lease-lost warning, which
must appear only when another worker really took the job.

The proof against real servers going away is `tests/integration/test_broker_outages.py`;
these keep every loop covered cheaply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from offload import JobState, Offload, Worker
from offload._health import BrokerHealth
from offload.brokers.base import Broker
from offload.errors import BrokerUnavailable
from offload.schedule import Every
from offload.scheduler import Scheduler
from offload.testing import FakeClock
from tests.conftest import BROKER_NAMES

#: The broker calls the worker's and the scheduler's loops make.
CALLS = (
    "reserve", "next_due", "wait", "extend", "settle_many",
    "cancel_requested", "register_worker", "sweep", "outbox",
    "clear_outbox", "enqueue", "find", "get_job", "cancel", "workers",
)  # fmt: skip


class Outage:
    """While `down`, every call in `CALLS` of a real broker raises `BrokerUnavailable`
    (as a lost connection does); `failed` counts them by name."""

    def __init__(self, broker: Broker, calls: tuple[str, ...] = CALLS) -> None:
        self.down = False
        self.failed: Counter[str] = Counter()
        for name in calls:
            setattr(broker, name, self._guarded(name, getattr(broker, name)))

    def _guarded(self, name: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.failed[name] += 1
                raise BrokerUnavailable("the test's broker is unavailable")
            return await call(*args, **kwargs)

        return guarded


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def jobs_in(app: Offload, state: JobState | None = None) -> int:
    """Jobs of the default queue (in `state`), read with a call the outage spares."""
    stats = (await app.broker.counts(["default"]))["default"].states
    return sum(n for s, n in stats.items() if state is None or s is state)


def outage_report(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """The offload records at info and above about the outage, and every record at
    warning and above or with a traceback."""
    ours = [r for r in caplog.records if r.name.startswith("offload")]
    about = [r.getMessage() for r in ours if "broker" in r.getMessage() and r.levelno >= 20]
    loud = [r.getMessage() for r in ours if r.levelno >= logging.WARNING or r.exc_info]
    return about, loud


async def test_worker_rides_out_an_outage_in_every_loop_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Offload("memory://")
    runs: Counter[str] = Counter()

    @app.task(name="job")
    async def job(tag: str, seconds: float) -> None:
        runs[tag] += 1
        await asyncio.sleep(seconds)

    @app.task(name="tick", queue="ticks")
    def tick() -> None: ...

    app.schedule(tick, Every(1), id="tick")
    outage = Outage(app.broker)
    worker = Worker(app, concurrency=8, lease_s=0.6, poll_s=0.05, sweep_s=0.2, scheduler=True)
    running = asyncio.create_task(worker.run())
    try:
        await job.enqueue_many_async([(f"long{i}", 2.5) for i in range(3)])
        await job.enqueue_many_async([(f"short{i}", 0.3) for i in range(3)])

        async def all_started() -> bool:
            return len(runs) == 6

        await wait_for(all_started)
        with caplog.at_level(logging.INFO, logger="offload"):
            outage.down = True  # leases lapse meanwhile: 2 s is more than 0.6
            await asyncio.sleep(2.0)
            assert not running.done(), "the worker stopped during the outage"
            outage.down = False

            async def all_succeeded() -> bool:
                return await jobs_in(app, JobState.SUCCEEDED) == 6

            await wait_for(all_succeeded)
        assert runs == dict.fromkeys(runs, 1), "a job ran twice"
        loops = {"extend", "register_worker", "sweep", "outbox", "settle_many", "find"}
        assert loops <= set(outage.failed), outage.failed
        # The fetch loop's first failure is whichever of its calls the outage met
        # (a reserve, or the next_due after an empty one); its retries extend the
        # worker's own leases first, which fail as long as the broker is away.
        assert {"reserve", "next_due", "wait"} & set(outage.failed), outage.failed
        assert "cancel_requested" in outage.failed  # the async jobs' cancel checks
        about, loud = outage_report(caplog)
        assert len(about) == 2, about
        assert "broker unavailable" in about[0] and "reachable again" in about[1], about
        assert loud == [about[0]], loud
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
        await app.aclose()


async def test_delivery_down_while_the_state_store_answers_is_one_outage_not_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RabbitMQ or SQS away, its state store up (`sqs://…&state=sqlite:///…`): only
    the fetch loop's calls fail. The heartbeat, which is also the health probe, still
    succeeds, and used to declare the broker back after each failed reserve: "a broker
    connection was lost; reconnected" every second or so, never the warning, and
    `/ready` said the broker was up for the whole outage."""
    app = Offload("memory://")

    @app.task(name="job")
    async def job() -> None: ...

    outage = Outage(app.broker, calls=("reserve", "next_due", "wait"))
    worker = Worker(app, lease_s=0.3, poll_s=0.05, sweep_s=0.1)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.2)
        with caplog.at_level(logging.INFO, logger="offload"):
            outage.down = True
            await asyncio.sleep(1.5)  # several heartbeats (every lease_s / 3)
            assert worker.health.down, "the delivery is down, and the worker says it is up"
            assert outage.failed["reserve"] >= 2, outage.failed
            about, _ = outage_report(caplog)
            assert len(about) == 1 and "broker unavailable" in about[0], about
            outage.down = False
            await job.enqueue_async()

            async def ran() -> bool:
                return await jobs_in(app, JobState.SUCCEEDED) == 1

            await wait_for(ran)
        about, loud = outage_report(caplog)
        assert len(about) == 2 and "reachable again" in about[1], about
        assert not worker.health.down
        assert loud == [about[0]], loud
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
        await app.aclose()


async def test_a_worker_stopped_during_an_outage_does_not_say_the_broker_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGTERM while RabbitMQ or SQS is away (its state store up): the fetch loop's last
    turn asks the broker nothing (it is stopping), and it counted as a reserve that
    answered, so the heartbeat probe logged "broker reachable again after 14.8 s" in
    the middle of the outage, as the worker stopped."""
    app = Offload("memory://")

    @app.task(name="job")
    async def job() -> None: ...

    outage = Outage(app.broker, calls=("reserve", "next_due", "wait"))
    failing = app.broker.reserve

    async def slow(*args: Any, **kwargs: Any) -> Any:
        if outage.down:  # as SQS's client, which retries a refused connection first
            await asyncio.sleep(0.5)
        return await failing(*args, **kwargs)

    app.broker.reserve = slow  # type: ignore[method-assign]
    worker = Worker(app, lease_s=0.3, poll_s=0.05, sweep_s=0.1)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.2)
        with caplog.at_level(logging.INFO, logger="offload"):
            outage.down = True
            await asyncio.sleep(1.5)
            assert worker.health.down
            while worker._waiting is None:  # the stop comes while a reserve is out
                await asyncio.sleep(0.01)
            worker.stop()
            await asyncio.wait_for(running, 10)
        about, _ = outage_report(caplog)
        assert len(about) == 1 and "broker unavailable" in about[0], about
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
        await app.aclose()


async def test_another_loops_success_wakes_a_failing_loop_but_does_not_end_the_outage() -> None:
    probes: list[int] = []

    async def probe() -> None:
        probes.append(1)

    health = BrokerHealth(logging.getLogger("offload.test"), probe=probe)
    health.failed("reserve", BrokerUnavailable("SQS is away"), recurring=True)
    backoff = asyncio.create_task(health.pause(30.0))  # the fetch loop's, after a failure
    await asyncio.sleep(0)
    await health.succeeded("heartbeat")  # the state store answers
    await asyncio.wait_for(backoff, 1.0)  # woken to try again now, not in 30 s
    assert health.down and not probes
    await health.succeeded("heartbeat")
    assert health.down  # a second success within POKE_S wakes nobody, ends nothing
    await health.succeeded("reserve")
    assert not health.down and probes == [1]


async def test_scheduler_rides_out_an_outage_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Offload("memory://")

    @app.task(name="tick")
    def tick() -> None: ...

    app.schedule(tick, Every(1), id="tick", overlap="allow")  # nothing runs them
    outage = Outage(app.broker)
    scheduler = Scheduler(app)
    running = asyncio.create_task(scheduler.run())
    try:

        async def fired() -> bool:
            return await jobs_in(app) > before

        before = 0
        await wait_for(fired)
        with caplog.at_level(logging.INFO, logger="offload"):
            outage.down = True
            await asyncio.sleep(2.5)
            assert not running.done()
            outage.down = False
            before = await jobs_in(app)
            await wait_for(fired)
        assert {"find", "enqueue"} & set(outage.failed), outage.failed
        about, loud = outage_report(caplog)
        assert len(about) == 2, about
        assert "broker unavailable" in about[0] and "reachable again" in about[1], about
        assert loud == [about[0]], loud
    finally:
        scheduler.stop()
        await asyncio.wait_for(running, 10)
        await app.aclose()


# -- lease lost: warned about only when true -------------------------------------------


@pytest.fixture(params=BROKER_NAMES)
async def held(
    request: pytest.FixtureRequest, broker_url: Callable[[str], str], clock: FakeClock
) -> AsyncIterator[Held]:
    app = Offload(broker_url(request.param), clock=clock)
    held = Held(app)
    try:
        yield held
    finally:
        await held.finish()
        await app.aclose()


class Held:
    """One job running in a worker (lease 30 s) until `finish()`."""

    def __init__(self, app: Offload) -> None:
        self.app = app
        self.started = asyncio.Event()
        self.release = asyncio.Event()

        @app.task(name="hold")
        async def hold() -> None:
            self.started.set()
            await self.release.wait()

        self.task = hold
        self.worker = Worker(app, lease_s=30)

    async def start(self) -> str:
        handle = await self.task.enqueue_async()
        assert await self.worker.tick() == 1
        await asyncio.wait_for(self.started.wait(), 10)
        return handle.id

    async def finish(self) -> None:
        self.release.set()
        tasks = [task for _, task in self.worker._running.values()]
        await asyncio.gather(*tasks)
        self.worker.executor.close()


def lease_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()]


async def test_lease_taken_over_by_another_worker_is_warned_about_once(
    held: Held, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await held.start()
    clock.advance(31)
    broker = await held.app.connected_broker()
    [taken] = await broker.reserve(["default"], worker_id="thief", lease_s=30, limit=1)
    assert taken.job_id == job_id
    with caplog.at_level(logging.WARNING, logger="offload"):
        await held.worker.extend_leases()
        await held.finish()  # its ack is refused too: already said
    [warning] = lease_warnings(caplog)
    assert job_id in warning and "thief" in warning and "may run twice" in warning


async def test_lapsed_lease_nobody_took_is_kept_without_a_warning(
    held: Held, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await held.start()
    clock.advance(31)  # a stall (or an outage) longer than the lease
    with caplog.at_level(logging.WARNING, logger="offload"):
        await held.worker.extend_leases()
        await held.finish()
    assert lease_warnings(caplog) == []
    info = await held.app.broker.get_job(job_id)
    assert info is not None and info.state is JobState.SUCCEEDED and info.attempt == 1


async def test_extend_that_loses_the_race_with_the_jobs_own_ack_is_not_warned_about(
    held: Held, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await held.start()
    [(lease, _)] = held.worker._running.values()
    broker = await held.app.connected_broker()
    await broker.ack(lease, None, result_ttl_s=None)  # the ack lands first
    with caplog.at_level(logging.WARNING, logger="offload"):
        await held.worker.extend_leases()
        await held.finish()  # a retried ack whose first try landed: refused, harmless
    assert lease_warnings(caplog) == []
    info = await broker.get_job(job_id)
    assert info is not None and info.state is JobState.SUCCEEDED


async def test_a_worker_started_while_its_broker_is_down_waits_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A deploy during a broker restart: the worker waits instead of exiting, warns
    once, and runs jobs once the broker answers."""
    app = Offload(f"sqlite:///{tmp_path / 'later.db'}")
    ran: list[int] = []

    @app.task(name="later.ok")
    def ok(n: int) -> None:
        ran.append(n)

    await ok.enqueue_async(1)
    real_connect = app.connected_broker
    refusals = {"left": 5}

    async def flaky_connect() -> Broker:
        if refusals["left"] > 0:
            refusals["left"] -= 1
            raise BrokerUnavailable("connection refused (test)")
        return await real_connect()

    app.connected_broker = flaky_connect  # type: ignore[method-assign]
    worker = Worker(app, poll_s=0.05)
    runner = asyncio.create_task(worker.run())
    deadline = asyncio.get_running_loop().time() + 30
    while not ran and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    worker.stop()
    await asyncio.wait_for(runner, 30)
    await app.aclose()
    assert ran == [1]
    assert refusals["left"] == 0
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "connection refused" in warnings[0].getMessage()


async def test_a_worker_stopped_while_waiting_for_its_broker_ends(tmp_path: Path) -> None:
    app = Offload(f"sqlite:///{tmp_path / 'never.db'}")

    async def refused() -> Broker:
        raise BrokerUnavailable("connection refused (test)")

    app.connected_broker = refused  # type: ignore[method-assign]
    worker = Worker(app, poll_s=0.05)
    runner = asyncio.create_task(worker.run())
    await asyncio.sleep(0.3)
    assert not runner.done()
    worker.stop()
    await asyncio.wait_for(runner, 10)
    await app.aclose()
