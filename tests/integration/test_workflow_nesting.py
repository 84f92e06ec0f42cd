"""Nested workflows and failure policies end to end on every broker, including the ends
that happen inside the broker (a member cancelled while queued, or expired)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from offload import JobCancelled, JobFailed, JobState, Offload, Worker, chain, chord, group
from offload.context import current_job
from offload.testing import FakeClock
from tests.conftest import BROKER_NAMES


@pytest.fixture(params=BROKER_NAMES)
async def app(
    request: pytest.FixtureRequest, broker_url: Callable[[str], str], clock: FakeClock
) -> AsyncIterator[Offload]:
    app = Offload(broker_url(request.param), clock=clock)
    yield app
    await app.aclose()


def _tasks(app: Offload) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    @app.task(name="fetch")
    def fetch(n: int) -> int:
        return n

    @app.task(name="double")
    def double(x: int) -> int:
        return x * 2

    @app.task(name="inc")
    async def inc(x: int) -> int:
        return x + 1

    @app.task(name="square")
    def square(x: int) -> int:
        return x * x

    @app.task(name="total")
    def total(values: list[int | None]) -> int:
        seen["failures"] = [(f.index, f.state) for f in current_job().failures]
        return sum(v for v in values if v is not None)

    @app.task(name="label")
    def label(x: int, name: str) -> str:
        return f"{name}={x}"

    @app.task(name="boom", max_attempts=1)
    def boom(x: int) -> int:
        raise RuntimeError(f"boom {x}")

    return {"seen": seen, **{t.name: t for t in (fetch, double, inc, square, total, label, boom)}}


async def test_a_group_of_chains_inside_a_chain_feeds_the_next_step(app: Offload) -> None:
    t = _tasks(app)
    fetch, double, inc, square, total, label = (
        t[n] for n in ("fetch", "double", "inc", "square", "total", "label")
    )
    # fetch(3) → [double → inc, square] → total → label
    flow = await chain(
        fetch.call(3),
        group([chain(double.partial(), inc.partial()), square.partial()]),
        total.partial(),
        label.partial("sum"),
    ).enqueue_async()

    assert await Worker(app, concurrency=10).drain() == 6
    assert await flow.result_async(timeout=5) == "sum=16"  # (3*2+1) + 3*3
    assert [await j.state_async() for j in flow.jobs] == [JobState.SUCCEEDED] * 6
    infos = [await j.info_async() for j in flow.jobs]
    envelopes = [i.envelope() for i in infos]
    assert {e.workflow_id for e in envelopes if e is not None} == {flow.id}
    assert None not in envelopes


async def test_a_group_of_chords_and_chains_returns_each_branch_result(app: Offload) -> None:
    t = _tasks(app)
    fetch, double, square, total = (t[n] for n in ("fetch", "double", "square", "total"))
    flow = await group(
        [
            chain(fetch.call(2), double.partial()),
            chord(group(square.call(i) for i in range(4)), total.partial()),
            group([fetch.call(7), fetch.call(8)]),
        ]
    ).enqueue_async()

    await Worker(app, concurrency=10).drain()
    assert await flow.result_async(timeout=5) == [4, 14, [7, 8]]


async def test_a_chain_after_a_chord_gets_the_callback_result(app: Offload) -> None:
    t = _tasks(app)
    square, total, label = (t[n] for n in ("square", "total", "label"))
    flow = await chain(
        chord(group(square.call(i) for i in range(5)), total.partial()),
        label.partial("squares"),
    ).enqueue_async()

    await Worker(app, concurrency=10).drain()
    assert await flow.result_async(timeout=5) == "squares=30"


async def test_continue_policy_runs_the_callback_with_the_failures(app: Offload) -> None:
    t = _tasks(app)
    square, boom, total = (t[n] for n in ("square", "boom", "total"))
    flow = await chord(
        [square.call(2), boom.call(1), square.call(3)],
        total.partial(),
    ).enqueue_async()

    await Worker(app, concurrency=10).drain()
    assert await flow.result_async(timeout=5) == 13
    assert t["seen"]["failures"] == [(1, "dead")]


async def test_stop_policy_cancels_what_follows_a_failed_group(app: Offload) -> None:
    t = _tasks(app)
    square, boom, total, label = (t[n] for n in ("square", "boom", "total", "label"))
    flow = await chain(
        chord(
            [square.call(2), boom.call(1)],
            total.partial(),
            on_failure="stop",
        ),
        label.partial("never"),
    ).enqueue_async()

    await Worker(app, concurrency=10).drain()
    callback, after = flow.jobs[-2:]
    assert await callback.state_async() is JobState.CANCELLED
    assert await after.state_async() is JobState.CANCELLED
    with pytest.raises(JobCancelled):
        await flow.result_async(timeout=5)
    assert "failures" not in t["seen"]  # the callback never ran


async def test_a_member_cancelled_while_queued_cancels_the_callback(app: Offload) -> None:
    # Before the outbox, this callback never fired and never ended: the cancel happened
    # inside the broker, where no worker saw it.
    t = _tasks(app)
    square, total = t["square"], t["total"]
    flow = await chord(
        group(square.call(i) for i in range(3)),
        total.partial(),
    ).enqueue_async()
    await app.broker.cancel(flow.jobs[1].id)  # the broker alone, as another process would

    await Worker(app).drain()
    assert [await j.state_async() for j in flow.jobs] == [
        JobState.SUCCEEDED,
        JobState.CANCELLED,
        JobState.SUCCEEDED,
        JobState.CANCELLED,
    ]
    with pytest.raises(JobCancelled):
        await flow.result_async(timeout=5)


async def test_an_expired_member_still_completes_its_chord(app: Offload, clock: FakeClock) -> None:
    t = _tasks(app)
    square, total = t["square"], t["total"]

    @app.task(name="stale", expires=10)
    def stale(x: int) -> int:
        return x

    flow = await chord(
        [square.call(2), stale.call(5)],
        total.partial(),
    ).enqueue_async()
    clock.advance(11)  # nobody ran `stale` in time

    await Worker(app).drain()
    assert await flow.jobs[1].state_async() is JobState.EXPIRED
    assert await flow.result_async(timeout=5) == 4
    assert t["seen"]["failures"] == [(1, "expired")]


async def test_a_chain_cancelled_while_queued_records_the_rest_cancelled(app: Offload) -> None:
    t = _tasks(app)
    fetch, double, inc = t["fetch"], t["double"], t["inc"]
    flow = await chain(
        fetch.call(1),
        double.partial(),
        inc.partial(),
    ).enqueue_async()
    assert await flow.jobs[0].cancel_async()

    assert await Worker(app).drain() == 0
    assert [await j.state_async() for j in flow.jobs] == [JobState.CANCELLED] * 3
    with pytest.raises(JobCancelled):
        await flow.result_async(timeout=5)


async def test_a_dead_step_in_a_branch_fails_its_group_at_once(app: Offload) -> None:
    t = _tasks(app)
    fetch, boom, double, total = (t[n] for n in ("fetch", "boom", "double", "total"))
    flow = await chain(
        fetch.call(4),
        group([chain(boom.partial(), double.partial()), double.partial()]),
        total.partial(),
    ).enqueue_async()

    await Worker(app, concurrency=10).drain()
    # the branch's later step waits for a replay of the dead one; the group went on
    assert await flow.result_async(timeout=5) == 8
    assert t["seen"]["failures"] == [(0, "dead")]
    with pytest.raises(JobFailed):
        await flow.jobs[1].result_async(timeout=1)
