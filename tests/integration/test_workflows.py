"""Workflows end to end on every broker: a worker, a FakeClock, no sleeping."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from offload import Backoff, JobState, Offload, Worker, chain, chord, group
from offload.testing import FakeClock
from tests.conftest import BROKER_NAMES

QUICK = Backoff(base_s=1.0, cap_s=1.0, jitter=False)


@pytest.fixture(params=BROKER_NAMES)
def url(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> str:
    return broker_url(request.param)


async def _run_until(app: Offload, clock: FakeClock, done: Callable[[], bool]) -> None:
    worker = Worker(app, concurrency=50)
    for _ in range(50):
        await worker.drain()
        if done():
            return
        clock.advance(2.0)  # past every retry's backoff
    raise AssertionError("the workflow did not finish")


async def test_chain_middle_step_fails_then_replay_completes_it(url: str, clock: FakeClock) -> None:
    # Given a chain whose middle step is broken
    app = Offload(url, clock=clock)
    broken = {"on": True}

    @app.task(name="fetch")
    def fetch(n: int) -> list[int]:
        return list(range(n))

    @app.task(name="transform", max_attempts=2, backoff=QUICK)
    def transform(values: list[int], factor: int) -> list[int]:
        if broken["on"]:
            raise RuntimeError("transform bug")
        return [v * factor for v in values]

    @app.task(name="store")
    def store(values: list[int]) -> dict[str, int]:
        return {"count": len(values), "sum": sum(values)}

    try:
        flow = await chain(
            fetch.call(5), transform.partial(factor=3), store.partial()
        ).enqueue_async()
        first, middle, last = flow.jobs
        # When it runs, the middle step dies after its retries, and the chain stops
        await _run_until(app, clock, lambda: True)
        clock.advance(2.0)
        await Worker(app).drain()
        assert await middle.state_async() is JobState.DEAD
        assert await app.broker.get_job(last.id) is None
        # Then a replay of the dead step (`offload dlq replay`) after the fix completes it
        broken["on"] = False
        assert await app.broker.replay_dead(job_ids=[middle.id]) == 1
        await Worker(app).drain()
        assert await flow.result_async(timeout=5) == {"count": 5, "sum": 30}
        assert await middle.result_async(timeout=5) == [0, 3, 6, 9, 12]
        info = await last.info_async()
        assert info.key == f"chain:{middle.id}:next"
        envelope = info.envelope()
        assert envelope is not None and envelope.parent_id == middle.id
        assert envelope.workflow_id == first.id == flow.id
    finally:
        await app.aclose()


async def test_group_runs_every_member(url: str, clock: FakeClock) -> None:
    app = Offload(url, clock=clock)

    @app.task(name="square")
    def square(x: int) -> int:
        return x * x

    try:
        flow = await group(square.call(i) for i in range(20)).enqueue_async()
        await Worker(app, concurrency=20).drain()
        assert await flow.result_async(timeout=5) == [i * i for i in range(20)]
    finally:
        await app.aclose()


async def _chord_fires_once(url: str, clock: FakeClock, members: int) -> None:
    app = Offload(url, clock=clock)
    rng = random.Random(6)
    doomed = set(rng.sample(range(members), members // 50))  # die after every attempt
    flaky = set(rng.sample(range(members), members // 5))  # fail their first attempt
    attempts: dict[int, int] = {}
    fired: list[list[int | None]] = []

    @app.task(name="member", max_attempts=3, backoff=QUICK)
    def member(i: int) -> int:
        attempts[i] = attempts.get(i, 0) + 1
        if i in doomed or (i in flaky and attempts[i] == 1):
            raise ConnectionError(f"member {i} failed")
        return i

    @app.task(name="report")
    def report(results: list[int | None]) -> int:
        fired.append(results)
        return sum(r for r in results if r is not None)

    try:
        flow = await chord(
            group(member.call(i) for i in range(members)), report.partial()
        ).enqueue_async()
        await _run_until(app, clock, lambda: bool(fired))
        await Worker(app).drain()  # nothing else may fire
        assert len(fired) == 1
        expected = [None if i in doomed else i for i in range(members)]
        assert fired[0] == expected
        assert flow.last is not None
        assert await flow.last.result_async(timeout=5) == sum(i for i in expected if i)
    finally:
        await app.aclose()


async def test_chord_with_failures_and_retries_fires_exactly_once(
    url: str, clock: FakeClock
) -> None:
    n = 10_000 if url.startswith(("memory", "sqlite")) else 500
    await _chord_fires_once(url, clock, n)


@pytest.mark.slow
async def test_chord_of_10000_fires_exactly_once_on_every_broker(
    url: str, clock: FakeClock
) -> None:
    await _chord_fires_once(url, clock, 10_000)
