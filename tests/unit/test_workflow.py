"""Workflows (chain, group, chord) driven through a real worker on the memory broker."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import msgspec
import pytest

from offload import JobCancelled, JobFailed, JobState, Offload, Worker, chain, chord, group
from offload.brokers.base import JobInfo
from offload.brokers.memory import MemoryBroker
from offload.envelope import Envelope
from offload.errors import ConfigurationError, InvalidArguments
from offload.testing import FakeClock


@pytest.fixture
def app(clock: FakeClock) -> Offload:
    return Offload("memory://", clock=clock)


async def test_chain_passes_each_result_to_the_next_step(app: Offload) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    async def double(x: int) -> int:
        return x * 2

    flow = await chain(add.call(2, 3), double.partial(), add.partial(100)).enqueue_async()
    assert await Worker(app).drain() == 3
    assert await flow.result_async(timeout=1) == 110
    infos = [await job.info_async() for job in flow.jobs]
    assert [i.state for i in infos] == [JobState.SUCCEEDED] * 3
    envelopes = [i.envelope() for i in infos]
    assert all(e is not None and e.workflow_id == flow.id for e in envelopes)
    assert envelopes[1] is not None and envelopes[1].parent_id == flow.jobs[0].id
    assert infos[2].key == f"chain:{flow.jobs[1].id}:next"


async def test_chain_stops_at_a_dead_step_and_replay_continues_it(app: Offload) -> None:
    broken = {"on": True}

    @app.task
    def fetch(x: int) -> int:
        return x + 1

    @app.task(max_attempts=1)
    def transform(x: int) -> int:
        if broken["on"]:
            raise RuntimeError("bug")
        return x * 10

    @app.task
    def store(x: int, label: str) -> str:
        return f"{label}={x}"

    flow = await chain(fetch.call(4), transform.partial(), store.partial("v")).enqueue_async()
    worker = Worker(app)
    await worker.drain()
    first, middle, last = flow.jobs
    assert await middle.state_async() is JobState.DEAD
    assert await app.broker.get_job(last.id) is None  # never enqueued

    broken["on"] = False  # "fix" the code, then replay the dead step
    assert await app.broker.replay_dead(job_ids=[middle.id]) == 1
    await worker.drain()
    assert await flow.result_async(timeout=1) == "v=50"
    assert await first.result_async(timeout=1) == 5


async def test_chain_step_reruns_do_not_double_the_next_step(app: Offload) -> None:
    @app.task
    def one() -> int:
        return 1

    @app.task
    def inc(x: int) -> int:
        return x + 1

    flow = await chain(one.call(), inc.partial()).enqueue_async()
    worker = Worker(app)
    lease = (await app.broker.reserve(["default"], worker_id="w", lease_s=30, limit=1))[0]
    outcome = await worker.executor.execute(lease)
    follow_up = functools.partial(
        worker.engine.follow_up,
        lease,
        outcome.action,
        outcome.envelope,
        result=outcome.result,
        error=outcome.error,
    )
    await follow_up()  # "crash" before ack
    await follow_up()  # the rerun
    page = await app.broker.list_jobs()
    assert len(page.items) == 2
    await worker.drain()
    assert await flow.result_async(timeout=1) == 2


def test_chain_checks_arguments_at_the_producer(app: Offload) -> None:
    @app.task
    def inc(x: int) -> int:
        return x + 1

    with pytest.raises(InvalidArguments):
        chain(inc.call(1), inc.partial(2))  # the second gets the first's result, too many
    with pytest.raises(ConfigurationError):
        chain()


async def test_group_enqueues_every_member_in_one_round_trip(app: Offload) -> None:
    @app.task
    def square(x: int) -> int:
        return x * x

    @app.task
    def neg(x: int) -> int:
        return -x

    calls = [square.call(i) for i in range(5)] + [neg.call(7)]
    enqueues = 0
    original = app.broker.enqueue

    async def counting(*args: object, **kwargs: object) -> object:
        nonlocal enqueues
        enqueues += 1
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    setattr(app.broker, "enqueue", counting)  # noqa: B010 (counts the calls)
    flow = await group(calls).enqueue_async()
    assert enqueues == 1
    await Worker(app).drain()
    assert await flow.result_async(timeout=1) == [0, 1, 4, 9, 16, -7]


async def test_chord_callback_gets_results_in_order_with_none_for_dead(
    app: Offload, clock: FakeClock
) -> None:
    @app.task(max_attempts=2)
    def maybe(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    @app.task
    def total(results: list[int | None], label: str) -> str:
        return f"{label}:{results}"

    flow = await chord(group(maybe.call(i) for i in range(5)), total.partial("sum")).enqueue_async()
    worker = Worker(app)
    await worker.drain()
    clock.advance(600)  # past the retry's backoff
    await worker.drain()
    assert flow.last is not None
    info = await flow.last.info_async()
    assert info.state is JobState.SUCCEEDED
    assert info.result_value() == "sum:[0, 1, 2, None, 4]"
    assert info.key == f"chord:{flow.id}:callback"


async def test_chain_result_raises_for_the_step_that_stopped_it(app: Offload) -> None:
    @app.task(max_attempts=1)
    def fail() -> int:
        raise RuntimeError("no")

    @app.task
    def inc(x: int) -> int:
        return x + 1

    flow = await chain(fail.call(), inc.partial()).enqueue_async()
    await Worker(app).drain()
    with pytest.raises(JobFailed):
        await flow.result_async(timeout=1)


async def test_cancelling_a_chain_stops_it_even_if_the_running_step_succeeds(
    app: Offload,
) -> None:
    @app.task
    def one() -> int:
        return 1

    @app.task
    def inc(x: int) -> int:
        return x + 1

    flow = await chain(one.call(), inc.partial(), inc.partial()).enqueue_async()
    worker = Worker(app)
    [lease] = await app.broker.reserve(["default"], worker_id="w", lease_s=30, limit=1)
    assert await flow.cancel_async() == 1  # the running first step is flagged
    outcome = await worker.executor.execute(lease)  # a sync step runs to completion
    await worker._settle(lease, outcome)
    assert await flow.jobs[0].state_async() is JobState.SUCCEEDED
    # the chain stopped: the steps after it are recorded cancelled, never run
    assert await Worker(app).drain() == 0
    assert [await j.state_async() for j in flow.jobs[1:]] == [JobState.CANCELLED] * 2
    with pytest.raises(JobCancelled):
        await flow.result_async(timeout=1)


async def test_cancelling_a_group_cancels_its_waiting_members(app: Offload) -> None:
    @app.task
    def square(x: int) -> int:
        return x * x

    flow = await group(square.call(i) for i in range(4)).enqueue_async()
    assert await flow.cancel_async() == 4
    assert await Worker(app).drain() == 0
    assert {await j.state_async() for j in flow.jobs} == {JobState.CANCELLED}


class RemoteMemory(MemoryBroker):
    """The memory broker with a network's round trip on the calls a cancel makes, so
    that how many of them a cancel waits for one after the other shows in time."""

    ROUND_TRIP_S = 0.002

    async def cancel(self, job_id: str) -> bool:
        await asyncio.sleep(self.ROUND_TRIP_S)
        return await super().cancel(job_id)

    async def get_job(self, job_id: str) -> JobInfo | None:
        await asyncio.sleep(self.ROUND_TRIP_S)
        return await super().get_job(job_id)

    async def join(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(self.ROUND_TRIP_S)
        return await super().join(*args, **kwargs)


async def test_cancelling_a_big_group_stops_the_members_that_had_not_started() -> None:
    """A group's cancel took its members one at a time, each with its follow-ups (a
    get_job and the group's join): slower than a worker taking them in the same order,
    so it met member after member already running, flagged them, and they ran to
    success (PostgreSQL: 974 of 1,361 waiting members ran). Every member is now taken
    first, concurrently, before any follow-up."""
    app = Offload("memory://")
    app.broker = RemoteMemory()
    started: list[int] = []

    @app.task
    async def member(i: int) -> None:
        started.append(i)
        await asyncio.sleep(0.003)

    @app.task
    def callback(results: list[None]) -> None: ...

    flow = await chord(
        group(member.call(i) for i in range(300)), callback.partial()
    ).enqueue_async()
    worker = Worker(app, concurrency=1, poll_s=0.01)
    running = asyncio.create_task(worker.run())
    while len(started) < 5:
        await asyncio.sleep(0.001)
    before = len(started)
    await flow.cancel_async()
    ran_after = len(started) - before
    worker.stop()
    await running
    assert ran_after < 30, f"{ran_after} members started after the cancel was called"
    assert await flow.last.state_async() is JobState.CANCELLED  # type: ignore[union-attr]


async def test_an_empty_group_enqueues_nothing_and_its_result_is_empty(app: Offload) -> None:
    flow = await group([]).enqueue_async()
    assert flow.jobs == [] and flow.last is None
    assert await flow.result_async(timeout=1) == []
    assert group([]).enqueue().result(timeout=1) == []
    assert await app.broker.counts() == {}


def test_a_workflow_cannot_start_with_a_partial_step(app: Offload) -> None:
    @app.task
    def inc(x: int) -> int:
        return x + 1

    with pytest.raises(ConfigurationError, match="partial"):
        chain(inc.partial(), inc.partial()).enqueue()


def test_partial_steps_are_checked_at_the_producer(app: Offload) -> None:
    @app.task
    def label(x: int, name: str) -> str:
        return f"{name}={x}"

    with pytest.raises(InvalidArguments, match="label"):
        chain(label.call(1, "a"), label.partial("b", "extra"))


async def test_a_failing_outbox_entry_does_not_hold_up_the_others(app: Offload) -> None:
    @app.task
    def square(x: int) -> int:
        return x * x

    @app.task
    def total(values: list[int | None]) -> int:
        return sum(v or 0 for v in values)

    broken = await chord([square.call(1), square.call(2)], total.partial()).enqueue_async()
    fine = await chord([square.call(3), square.call(4)], total.partial()).enqueue_async()
    for flow in (broken, fine):
        assert await app.broker.cancel(flow.jobs[0].id)  # in the broker: only the outbox knows
    join = app.broker.join

    async def failing_join(group_id: str, *args: object, **kwargs: object) -> object:
        if group_id == broken.id:
            raise ConnectionError("join failed")
        return await join(group_id, *args, **kwargs)  # type: ignore[arg-type]

    app.broker.join = failing_join  # type: ignore[assignment,method-assign]
    assert await Worker(app).drain_outbox() == 1  # the fine one
    # the broken one stays and counts as nothing handled, so `drain()` cannot spin on it
    assert await Worker(app).drain_outbox() == 0

    assert [e.job_id for e in await app.broker.outbox()] == [broken.jobs[0].id]
    app.broker.join = join  # type: ignore[method-assign]
    await Worker(app).drain()
    for flow in (broken, fine):
        assert flow.last is not None
        assert await flow.last.state_async() is JobState.CANCELLED
    assert await app.broker.outbox() == []


async def test_a_step_keeps_its_own_options(app: Offload, clock: FakeClock) -> None:
    @app.task
    def fetch(n: int) -> int:
        return n

    @app.task
    async def transcode(n: int, codec: str) -> str:  # async: a timeout needs no child process
        return f"{n}:{codec}"

    slow = transcode.options(queue="gpu", priority=7, max_attempts=2, timeout=30, delay=60)
    flow = await chain(fetch.call(4), slow.partial("av1")).enqueue_async()
    worker = Worker(app, queues=["default", "gpu"])
    await worker.drain()
    second = await flow.jobs[1].info_async()
    assert (second.queue, second.priority, second.max_attempts) == ("gpu", 7, 2)
    assert second.state is JobState.SCHEDULED  # its delay counts from its start
    envelope = second.envelope()
    assert envelope is not None and envelope.timeout_s == 30
    clock.advance(61)
    await worker.drain()
    assert await flow.result_async(timeout=1) == "4:av1"


def test_a_step_refuses_options_that_do_not_apply(app: Offload) -> None:
    @app.task
    def fetch(n: int) -> int:
        return n

    with pytest.raises(ConfigurationError, match="key="):
        chain(fetch.call(1), fetch.options(key="k").partial())


async def test_enqueue_many_honours_each_calls_options(app: Offload) -> None:
    @app.task
    def ping(n: int) -> int:
        return n

    jobs = await ping.enqueue_many_async([ping.call(1), ping.options(priority=9).call(2)])
    assert [(await j.info_async()).priority for j in jobs] == [0, 9]


async def test_a_chord_enqueued_before_nesting_still_fires(app: Offload) -> None:
    # An envelope and join outcomes as written by offload before nested workflows:
    # `chord.callback`, and bare results recorded by `Broker.join`.
    import json

    from offload.codec import encode_value

    @app.task
    def square(x: int) -> int:
        return x * x

    @app.task
    def total(values: list[int | None]) -> int:
        return sum(v or 0 for v in values)

    group_id, callback_id = "g" * 32, "c" * 32
    await app.broker.join(group_id, "earlier", index=0, total=2, outcome=encode_value(4))
    legacy = {
        "id": "a" * 32,
        "task": square.name,
        "args": [3],
        "chord": {
            "id": group_id,
            "index": 1,
            "total": 2,
            "callback": {"id": callback_id, "task": total.name},
        },
    }
    envelope = msgspec.json.decode(json.dumps(legacy).encode(), type=Envelope)
    await app.broker.enqueue([(envelope, json.dumps(legacy).encode())])

    await Worker(app).drain()
    assert await app.job(callback_id).result_async(timeout=1) == 13


def test_a_workflow_step_that_is_not_a_call_is_refused_naming_what_it_got(app: Offload) -> None:
    """`chain(t.call(1), "x")` (or a task, or a job where a call belongs) raised a bare
    AttributeError ("'str' object has no attribute 'task'") that said nothing of the
    workflow; it is a ConfigurationError naming the step now."""

    @app.task(name="t")
    def t(x: int = 0) -> int:
        return x

    for build in (
        lambda: chain(t.call(1), "x"),  # type: ignore[arg-type]
        lambda: chord(group([t.call(1)]), t),  # type: ignore[arg-type]
        lambda: group(["x", t.call(1)]).enqueue(),  # type: ignore[list-item]
    ):
        with pytest.raises(ConfigurationError, match=r"workflow steps are made with task\.call"):
            build()
