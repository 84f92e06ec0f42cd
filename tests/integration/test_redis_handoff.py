"""Idle workers parked on their queue and handed jobs by `enqueue` itself (Redis,
`brokers/redis/_handoff.py`): the handoff, what happens when its message is lost, when
the parked worker is gone or stops, and rolling upgrades in both directions.

A producer of an older version (whose `enqueue.lua` knows no `parked` key) is played
by the current script given a `parked` key nobody parks in: it then writes exactly
what the older script wrote, and publishes the same wake-up. An older worker is one
that never parks: `reserve` without a ticket and a subscriber to the wake-up channel.

Every test runs twice: with producers that hand a job over by `enqueue_one.lua`'s full
path (inbox level 1, as while a worker of the previous version is live) and with
producers that lend it in the plain case, its state left in the queue's `lent` list
(level 2, `_inbox.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from offload import Offload
from offload.brokers import from_url
from offload.brokers.records import WorkerInfo
from offload.brokers.redis import RedisBroker, _inbox
from offload.brokers.redis import keys as K
from offload.brokers.redis._inbox import INBOX_FLAG
from offload.envelope import JobState
from offload.worker import Worker
from tests.conformance.helpers import enqueue_one, make_job, state_of

LONG_S = 30.0  # a wait that only a missed handoff or wake-up would run out


@pytest.fixture(params=["redis", "redis_cluster"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(params=[1, 2], ids=["handed", "lent"], autouse=True)
def level(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The highest inbox level producers use (`_inbox.py`): 1 hands over by the full
    path, 2 lends."""
    monkeypatch.setattr(_inbox, "INBOX_LEVEL", request.param)
    return int(request.param)


def redis_broker(url: str) -> RedisBroker:
    broker = from_url(url)
    assert isinstance(broker, RedisBroker)
    return broker


def park(broker: RedisBroker, timeout_s: float = LONG_S, worker_id: str = "w1") -> Any:
    """An idle worker's wait, as a task."""
    wait = broker.wait_for_work(["default"], timeout_s, worker_id=worker_id, lease_s=30, limit=10)
    return asyncio.create_task(wait)


async def parked(broker: RedisBroker, n: int = 1) -> None:
    """Until `n` tickets are parked in the default queue."""
    client = await broker._redis()
    deadline = time.monotonic() + 5
    while await client.zcard(broker._x.q("default").parked) < n:
        assert time.monotonic() < deadline, "no worker parked"
        await asyncio.sleep(0.005)


async def test_a_parked_worker_is_handed_the_job_by_the_enqueue_itself(url: str) -> None:
    worker, producer = redis_broker(url), redis_broker(url)
    async with worker, producer:
        waiting = park(worker)
        await parked(worker)
        job_id = await enqueue_one(producer)
        assert await state_of(producer, job_id) is JobState.RUNNING  # leased by the enqueue
        [lease] = await asyncio.wait_for(waiting, 5)
        assert lease.job_id == job_id and lease.attempt == 1
        assert await worker.reserve(["default"], worker_id="w1", lease_s=30, limit=10) == []
        await worker.ack(lease, None, result_ttl_s=None)  # the handed lease is the job's own
        assert await state_of(producer, job_id) is JobState.SUCCEEDED


async def test_a_queue_paused_after_a_worker_parked_hands_it_nothing(url: str) -> None:
    worker, producer = redis_broker(url), redis_broker(url)
    async with worker, producer:
        waiting = park(worker)
        await parked(worker)
        assert await producer.set_paused("queue:default", True)
        paused_id = await enqueue_one(producer)
        assert await state_of(producer, paused_id) is JobState.QUEUED  # not handed
        assert await asyncio.wait_for(waiting, 5) == []  # woken, and left to read the flag
        assert await producer.set_paused("queue:default", False)
        [lease] = await worker.wait_for_work(  # resumed: the job is there to reserve
            ["default"], LONG_S, worker_id="w1", lease_s=30, limit=10
        )
        assert lease.job_id == paused_id
        await worker.ack(lease, None, result_ttl_s=None)


async def test_a_lost_handoff_message_is_returned_by_the_next_reserve(url: str) -> None:
    worker, producer = redis_broker(url), redis_broker(url)
    async with worker, producer:
        # every message lost
        worker._handoff.received = lambda data: None  # type: ignore[method-assign]
        waiting = park(worker, timeout_s=0.5)
        await parked(worker)
        job_id = await enqueue_one(producer)
        assert await waiting == []
        [lease] = await worker.reserve(["default"], worker_id="w1", lease_s=30, limit=10)
        assert lease.job_id == job_id and lease.attempt == 1
        assert await worker.reserve(["default"], worker_id="w1", lease_s=30, limit=10) == []
        await worker.ack(lease, None, result_ttl_s=None)


async def test_a_cancelled_wait_gives_back_what_it_was_handed(url: str) -> None:
    worker, producer = redis_broker(url), redis_broker(url)
    async with worker, producer:
        # the wait never sees it
        worker._handoff.received = lambda data: None  # type: ignore[method-assign]
        waiting = park(worker)
        await parked(worker)
        job_id = await enqueue_one(producer)
        assert await state_of(producer, job_id) is JobState.RUNNING
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await state_of(producer, job_id) is JobState.QUEUED
        [lease] = await producer.reserve(["default"], worker_id="w2", lease_s=30, limit=1)
        assert (lease.job_id, lease.attempt) == (job_id, 1)  # released: attempt not counted


async def test_a_producer_that_does_not_hand_over_wakes_a_parked_worker(url: str) -> None:
    """An older producer: its job stays queued and its wake-up reaches the parked
    worker at once, which then reserves it."""
    worker, producer = redis_broker(url), redis_broker(url)
    async with worker, producer:
        waiting = park(worker)
        await parked(worker)
        envelope, payload = make_job(producer.clock)
        await producer._remember({"default"})
        [call] = producer._enqueuing.calls(
            [(envelope, payload)], {"default": [0]}, time.time(), None
        )
        name, keys, args = call
        at = list(keys).index(producer._x.q("default").parked)
        older = [*keys[:at], keys[at] + ":none", *keys[at + 1 :]]  # a `parked` nobody parks in
        await producer._x.run(name, older, args)
        assert await state_of(producer, envelope.id) is JobState.QUEUED
        assert await asyncio.wait_for(waiting, 5) == []  # woken, long before LONG_S
        [lease] = await worker.reserve(["default"], worker_id="w1", lease_s=30, limit=10)
        assert lease.job_id == envelope.id


async def test_with_no_parked_worker_the_enqueue_wakes_older_workers(url: str) -> None:
    """An older worker never parks: the job stays queued for its `reserve`, and the
    wake-up it listens to goes out."""
    import redis.asyncio

    async with redis_broker(url) as producer:
        listener = redis.asyncio.Redis.from_url(url.split("?")[0])
        pubsub = listener.pubsub()
        await pubsub.subscribe(producer._x.channel("default"))
        try:
            assert await pubsub.get_message(timeout=2) is not None  # subscribed
            job_id = await enqueue_one(producer)
            message = await pubsub.get_message(timeout=2)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await listener.aclose()
        assert message is not None and message["type"] == "message"
        assert await state_of(producer, job_id) is JobState.QUEUED


async def test_jobs_handed_to_a_worker_that_is_gone_run_elsewhere_after_its_lease(
    redis_url: str,
) -> None:
    app = Offload(redis_url)
    ran: list[int] = []

    @app.task(name="t")
    async def t() -> None:
        from offload import current_job

        ran.append(current_job().attempt)

    broker = app.broker
    assert isinstance(broker, RedisBroker)
    await broker.connect()
    client = await broker._redis()
    keys = broker._x.q("default")
    ghost = ["0123456789abcdef:", 10, 0.3, K.handoff_channel(broker.prefix, "ghost"), "ghost"]
    await client.zadd(keys.parked, {msgspec.msgpack.encode(ghost): time.time() + LONG_S})
    job = await t.enqueue_async()
    assert await job.state_async() is JobState.RUNNING  # handed to the ghost
    worker = Worker(app, poll_s=0.1)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(job.result_async(timeout=10), 15)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
    assert ran == [2]  # the ghost's lease lapsed: its attempt counted, as after a crash
    await broker.sweep()
    assert await client.exists(keys.parked, keys.handed) == 0  # nothing of the ghost left
    await app.aclose()


async def test_a_worker_of_one_queue_is_handed_its_jobs(redis_url: str) -> None:
    """End to end: an idle worker with a long poll gets each job from the enqueue."""
    app = Offload(redis_url)
    started: list[float] = []

    @app.task(name="t")
    async def t(at: float) -> None:
        started.append(time.monotonic() - at)

    worker = Worker(app, poll_s=LONG_S)
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    handed = 0
    received = broker._handoff.received

    def counted(data: bytes) -> None:
        nonlocal handed
        handed += 1
        received(data)

    broker._handoff.received = counted  # type: ignore[method-assign]
    running = asyncio.create_task(worker.run())
    try:
        for _ in range(10):
            await parked(broker)
            await t.enqueue_async(time.monotonic())
            n = len(started)
            deadline = time.monotonic() + 5
            while len(started) == n:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.002)
        worker.stop()
        await asyncio.wait_for(running, 10)
        client = await broker._redis()
        keys = broker._x.q("default")
        assert await client.exists(keys.parked, keys.handed) == 0  # nothing left behind
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
        await app.aclose()
    assert handed == 10
    assert max(started) < 1.0, started


async def test_idle_workers_take_turns(url: str) -> None:
    """A worker that was just handed a job parks again behind the others."""
    a, b, producer = redis_broker(url), redis_broker(url), redis_broker(url)
    async with a, b, producer:
        waits = {"a": park(a, worker_id="a")}
        await parked(a)
        waits["b"] = park(b, worker_id="b")
        await parked(a, 2)
        got: list[str] = []
        for _ in range(4):
            await enqueue_one(producer)
            done, _ = await asyncio.wait(waits.values(), timeout=5, return_when="FIRST_COMPLETED")
            [name] = [n for n, w in waits.items() if w in done]
            assert len(waits[name].result()) == 1
            got.append(name)
            waits[name] = park(a if name == "a" else b, worker_id=name)  # parks again
            await parked(a, 2)
        for wait in waits.values():
            wait.cancel()
        await asyncio.gather(*waits.values(), return_exceptions=True)
    assert got == ["a", "b", "a", "b"], got


async def test_a_worker_leaving_between_two_waits_gives_back_what_was_handed(url: str) -> None:
    """Its last wait ended (a timeout) with its ticket still parked: unregistering ends
    the ticket and releases a job handed to it meanwhile at once."""
    worker, producer = redis_broker(url), redis_broker(url)
    async with worker, producer:
        assert await park(worker, timeout_s=0.2) == []  # parked, then timed out
        job_id = await enqueue_one(producer)
        assert await state_of(producer, job_id) is JobState.RUNNING  # handed meanwhile
        await worker.unregister_worker("w1")
        assert await state_of(producer, job_id) is JobState.QUEUED
        client = await worker._redis()
        keys = worker._x.q("default")
        assert await client.exists(keys.parked, keys.handed) == 0


async def raw_record(broker: RedisBroker, job_id: str) -> dict[str, Any] | None:
    client = await broker._redis()
    raw = await client.hget(broker._x.q("default").record, job_id)
    assert raw is None or isinstance(raw, bytes)
    return None if raw is None else dict(msgspec.msgpack.decode(raw))


async def test_a_lent_job_waits_in_lent_and_reads_as_running(url: str, level: int) -> None:
    # Mutation: enqueue_one.lua never lending (the ARGV[8] == '2' branch skipped) ->
    # nothing in `lent` at level 2; expand_lent dropping the `handed` note -> the
    # lost-message test above returns nothing.
    worker, producer = redis_broker(url), redis_broker(url)
    async with worker, producer:
        client = await producer._redis()
        keys = producer._x.q("default")
        waiting = park(worker)
        await parked(worker)
        job_id = await enqueue_one(producer)
        lent = level == 2
        assert await client.llen(keys.lent) == (1 if lent else 0)
        assert (await raw_record(producer, job_id) is None) is lent  # not written yet
        assert await client.zcard(keys.parked) == 0  # the ticket is used
        [lease] = await asyncio.wait_for(waiting, 5)
        assert lease.job_id == job_id and lease.attempt == 1
        assert await state_of(producer, job_id) is JobState.RUNNING  # expanded to read
        assert await client.llen(keys.lent) == 0
        record = await raw_record(producer, job_id)
        assert record is not None
        assert (record["s"], record["a"], record["w"], record["t"]) == (
            "running",
            1,
            "w1",
            lease.token,
        )
        assert record["dl"] == lease.deadline
        assert await client.zscore(keys.running, job_id) == lease.deadline
        note = await client.hget(keys.handed, lease.token[:-1])
        assert isinstance(note, bytes) and job_id in note.decode()
        assert await worker.reserve(["default"], worker_id="w1", lease_s=30, limit=10) == []
        assert await client.hlen(keys.handed) == 0  # that reserve dropped the note
        await worker.ack(lease, None, result_ttl_s=None)
        assert await state_of(producer, job_id) is JobState.SUCCEEDED


async def test_a_lent_job_is_stored_as_a_handed_one(url: str, level: int) -> None:
    # Mutation: expand_lent writing another state, attempt, worker, sequence or
    # members than the full path -> the two jobs differ below.
    if level != 2:
        pytest.skip("compares the two ways: needs producers that lend")
    worker, producer = redis_broker(url), redis_broker(url)
    async with worker, producer:
        client = await producer._redis()
        keys = producer._x.q("default")
        ids = []
        for gate in (2, 1):  # lent, then handed by the full path
            producer._inbox._state = (gate, float("inf"))
            waiting = park(worker)
            await parked(worker)
            ids.append(await enqueue_one(producer))
            assert len(await asyncio.wait_for(waiting, 5)) == 1
        lent_id, handed_id = ids
        await producer._x.run("expand", keys, [])
        lent, handed = await raw_record(producer, lent_id), await raw_record(producer, handed_id)
        assert lent is not None and handed is not None
        assert lent.keys() == handed.keys()
        same = {k: v for k, v in lent.items() if k not in ("c", "d", "n", "st", "dl", "t", "q")}
        assert same == {k: handed[k] for k in same}
        assert lent["q"] + 1 == handed["q"]  # numbered in enqueue order
        assert lent["dl"] - lent["st"] == pytest.approx(handed["dl"] - handed["st"])
        for index in (keys.jobs, keys.created):
            members = [str(m, "ascii") for m in await client.zrange(index, 0, -1)]  # type: ignore[arg-type]
            assert [m[-len(lent_id) :] for m in members] == [lent_id, handed_id]
        for job_id in ids:
            assert await client.zscore(keys.running, job_id) is not None


async def test_a_job_expired_when_enqueued_is_not_lent(url: str) -> None:
    # Mutation: `_lean_level` ignoring `expires_at` -> the expired job is lent and runs.
    worker, producer = redis_broker(url), redis_broker(url)
    async with worker, producer:
        waiting = park(worker)
        await parked(worker)
        job_id = await enqueue_one(producer, expires_at=producer.clock.now() - 1)
        assert await state_of(producer, job_id) is JobState.QUEUED  # left to expire
        assert await asyncio.wait_for(waiting, 5) == []


async def test_a_live_worker_of_the_previous_level_keeps_producers_from_lending(
    url: str, level: int
) -> None:
    # Mutation: `InboxGate.learn` taking the highest level instead of the lowest ->
    # the job is lent to a worker whose scripts never write its record.
    worker, producer = redis_broker(url), redis_broker(url)
    async with worker, producer:
        now = worker.clock.now()
        older = {"id": "older", "extra": {INBOX_FLAG: 1}}
        await worker.register_worker(WorkerInfo("w1", "host", 1, ["default"], 1, now), 60)
        await worker._x.run(
            "worker_register",
            worker._worker_keys(),
            ["older", msgspec.json.encode(older), repr(now + 60)],
        )
        waiting = park(worker)
        await parked(worker)
        job_id = await enqueue_one(producer)
        client = await producer._redis()
        assert await client.llen(producer._x.q("default").lent) == 0
        assert await raw_record(producer, job_id) is not None  # handed the full way
        [lease] = await asyncio.wait_for(waiting, 5)
        assert lease.job_id == job_id
