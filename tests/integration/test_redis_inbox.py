"""The queue inbox of the Redis broker (issue 16): a plain one-call enqueue stores its
payload and one inbox entry (`scripts/enqueue_one.lua`), and every script of the queue
expands the inbox into the full state first (`scripts/_inbox.lua`), so the job is
reserved, found, counted, cancelled and purged like any other. The producer uses the
inbox only while every live worker says it drains inboxes (`_inbox.py`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis

from offload import Offload
from offload.brokers import from_url
from offload.brokers.records import EnqueueResult, WorkerInfo
from offload.brokers.redis import RedisBroker
from offload.brokers.redis._inbox import INBOX_FLAG, INBOX_LEVEL, REFRESH_S, RETRY_S, InboxGate
from offload.envelope import JobState
from offload.errors import BrokerUnavailable, QueueFull
from offload.testing import FakeClock
from tests.conformance.helpers import BOOM, LEASE_S, make_job, reserve_one
from tests.integration.test_redis_enqueue_one import fields_of, snapshot


@pytest.fixture(params=["redis", "redis_cluster"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.getfixturevalue(f"{request.param}_url")


def redis_broker(url: str, clock: FakeClock | None = None) -> RedisBroker:
    broker = from_url(url, clock=clock) if clock is not None else from_url(url)
    assert isinstance(broker, RedisBroker)
    return broker


async def raw_state(broker: RedisBroker, job_id: str) -> tuple[int, bool, bool]:
    """(inbox length, payload stored, record stored) of the default queue, read with
    plain commands (which expand nothing)."""
    client: Any = await broker._redis()
    q = broker._x.q("default")
    return (
        int(await client.llen(q.inbox)),
        await client.hexists(q.payload, job_id),
        await client.hexists(q.record, job_id),
    )


async def enqueue(broker: RedisBroker, **fields: Any) -> str:
    job = make_job(broker.clock, **fields)
    [result] = await broker.enqueue([job])
    assert result == EnqueueResult(job[0].id, True)
    return job[0].id


async def test_a_plain_enqueue_goes_to_the_inbox_and_is_reserved_and_acked(url: str) -> None:
    # Mutation: `enqueue_one.lua`'s lean branch removed -> the record is written at
    # once (first assert); `expand_inbox` left out of `queue_at` -> nothing to reserve.
    async with redis_broker(url) as broker:
        job_id = await enqueue(broker)
        assert await raw_state(broker, job_id) == (1, True, False)
        lease = await reserve_one(broker)
        assert lease.job_id == job_id and lease.attempt == 1
        await broker.ack(lease, b"1", result_ttl_s=60)
        info = await broker.get_job(job_id)
        assert info is not None and info.state == JobState.SUCCEEDED
        assert (await raw_state(broker, job_id))[0] == 0


async def test_only_the_push_onto_an_empty_inbox_wakes_the_queue(url: str) -> None:
    # Mutation: enqueue_one.lua publishing on every push again -> 3 wake-ups; not on
    # the first either -> none, and an idle worker would sleep until its poll.
    import redis.asyncio

    async with redis_broker(url) as broker:
        listener = redis.asyncio.Redis.from_url(url.split("?")[0])
        pubsub = listener.pubsub()
        try:
            await pubsub.subscribe(broker._x.channel("default"))
            assert await pubsub.get_message(timeout=2) is not None  # subscribed
            ids = [await enqueue(broker) for _ in range(3)]
            assert (await raw_state(broker, ids[0]))[0] == 3  # all three in the inbox
            wakes = 0
            while await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3):
                wakes += 1
            assert wakes == 1
            # the one reservation it leads to takes all three
            leases = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=10)
            assert sorted(lease.job_id for lease in leases) == sorted(ids)
            await enqueue(broker)  # the inbox is empty again: this push wakes
            assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await listener.aclose()


async def test_an_inbox_job_is_found_by_id_with_its_full_state_at_once(url: str) -> None:
    # Mutation: the expand step of `Inspector._fetch` removed -> get_job is None;
    # `locate` by record again -> cancel finds nothing (next test).
    async with redis_broker(url) as broker:
        now = broker.clock.now()
        job_id = await enqueue(broker, priority=3, max_attempts=4, expires_at=now + 60)
        assert (await raw_state(broker, job_id))[2] is False
        info = await broker.get_job(job_id)
        assert info is not None
        assert (info.state, info.priority, info.attempt, info.max_attempts) == (
            JobState.QUEUED,
            3,
            0,
            4,
        )
        assert info.expires_at == pytest.approx(now + 60)
        assert info.payload and info.task == "t"


async def test_an_expanded_inbox_job_is_stored_as_enqueue_stores_it(url: str) -> None:
    # Mutation: any field of the expansion changed (e.g. `r.a = 1`, or `expiring` not
    # written) -> the snapshots differ.
    async with redis_broker(url) as broker:
        now = broker.clock.now()
        snapshots = []
        for inbox in (False, True):
            job = make_job(broker.clock, created_at=now, priority=2, expires_at=now + 60)
            _, keys, args = broker._enqueuing.one_call(job, now, None, inbox)
            await broker._remember({"default"})
            await broker._x.run("enqueue_one", keys, args)
            assert (await raw_state(broker, job[0].id))[2] is not inbox
            await broker._x.run("expand", broker._x.q("default"), [])
            snapshots.append(await snapshot(broker, job[0].id, None))
        assert snapshots[0] == snapshots[1]
        assert snapshots[1]["record"]["s"] == "queued"


async def test_inbox_jobs_are_counted_listed_cancelled_and_purged(url: str) -> None:
    # Mutation: `expand_inbox` left out of `queue_at` -> counts 0, list empty, cancel
    # False.
    clock = FakeClock()
    async with redis_broker(url, clock) as broker:
        first, second = await enqueue(broker), await enqueue(broker)
        counts = await broker.counts(["default"])
        assert counts["default"].states[JobState.QUEUED] == 2
        page = await broker.list_jobs(queue="default")
        assert {info.id for info in page.items} == {first, second}
        third = await enqueue(broker)
        assert await broker.cancel(third)
        info = await broker.get_job(third)
        assert info is not None and info.state == JobState.CANCELLED
        clock.advance(broker.retention_s + 1)
        assert (await broker.sweep()).purged == 1
        assert await broker.get_job(third) is None
        fourth = await enqueue(broker)
        leases = await broker.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=10)
        assert [lease.job_id for lease in leases] == [first, second, fourth]
        for lease in leases:
            await broker.bury(lease, error=BOOM)
        assert await broker.purge_dead("default") == 3


async def test_inbox_and_full_path_jobs_keep_their_enqueue_order(url: str) -> None:
    """Within one millisecond (a fake clock), order comes from the queue's sequence:
    a job that takes the full path must drain the inbox before taking its number."""
    # Mutation: the `expand_inbox` call on enqueue_one.lua's full path removed -> the
    # keyed job is numbered before the inbox job enqueued first, and reserved first.
    clock = FakeClock()
    async with redis_broker(url, clock) as broker:
        ids = [
            await enqueue(broker),  # inbox
            await enqueue(broker, key="k"),  # full path (enqueue_one.lua)
            await enqueue(broker),  # inbox
        ]
        bulk = [make_job(clock), make_job(clock)]
        await broker.enqueue(bulk)  # enqueue.lua
        ids += [job[0].id for job in bulk]
        ids.append(await enqueue(broker))  # inbox
        order = [(await reserve_one(broker)).job_id for _ in ids]
        assert order == ids


async def test_keyed_delayed_and_depth_limited_jobs_take_the_full_path(url: str) -> None:
    # Mutation: the `key == ''` test of the lean branch removed -> the keyed job goes to
    # the inbox (its record missing at once) and a duplicate key is stored twice; the
    # inbox not drained before the depth check -> the third job passes max_depth=2.
    async with redis_broker(url) as broker:
        keyed = await enqueue(broker, key="once")
        assert await raw_state(broker, keyed) == (0, True, True)
        again = make_job(broker.clock, key="once")
        assert await broker.enqueue([again]) == [EnqueueResult(keyed, False)]
        delayed = await enqueue(broker, not_before=broker.clock.now() + 3600)
        assert await raw_state(broker, delayed) == (0, True, True)
        info = await broker.get_job(delayed)
        assert info is not None and info.state == JobState.SCHEDULED
        plain = await enqueue(broker)
        assert await raw_state(broker, plain) == (1, True, False)
        with pytest.raises(QueueFull):  # keyed + plain are queued: 2 of 2
            await broker.enqueue([make_job(broker.clock)], max_depth=2)
        assert (await raw_state(broker, plain))[0] == 0  # the depth check drained it


async def test_a_full_inbox_sends_the_next_job_the_full_way(url: str) -> None:
    # Mutation: INBOX_MAX raised above 10,000 -> the job goes to the inbox.
    async with redis_broker(url) as broker:
        await broker.connect()
        client: Any = await broker._redis()
        q = broker._x.q("default")
        await client.rpush(q.inbox, *[b"not an entry"] * 9_999)
        first = await enqueue(broker)
        assert await raw_state(broker, first) == (10_000, True, False)
        second = await enqueue(broker)
        # The full path drained the inbox (dropping the entries that are not ours).
        assert await raw_state(broker, second) == (0, True, True)
        states = (await broker.counts(["default"]))["default"].states
        assert states[JobState.QUEUED] == 2


async def test_a_worker_parked_after_a_burst_is_handed_the_next_job(url: str) -> None:
    """Only a push onto an empty inbox looks for a parked worker: a worker parks in a
    reserve, which drains the inbox first, so the next push finds it empty again."""
    # Mutation: the plain case never looking for a parked worker (`n > 1 or` made
    # `n >= 1 or`) -> the job goes to the inbox, not to the parked worker.
    async with redis_broker(url) as worker, redis_broker(url) as producer:
        burst = [await enqueue(producer) for _ in range(3)]
        leases = await worker.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=10)
        assert [lease.job_id for lease in leases] == burst
        waiting = asyncio.create_task(
            worker.wait_for_work(["default"], 5.0, worker_id="w", lease_s=LEASE_S, limit=1)
        )
        for _ in range(100):  # until the worker's ticket is in `parked`
            client: Any = await producer._redis()
            if await client.exists(producer._x.q("default").parked):
                break
            await asyncio.sleep(0.02)
        job = make_job(producer.clock)
        call = producer._enqueuing.one_call(job, producer.clock.now(), None, True)
        reply = await producer._x.run(*call)
        assert isinstance(reply, list)  # the full way (the plain case answers 1 alone)
        handed = job[0].id
        [lease] = await waiting
        assert lease.job_id == handed
        info = await producer.get_job(handed)
        assert info is not None and info.state == JobState.RUNNING


def _old_worker(worker_id: str, now: float) -> WorkerInfo:
    return WorkerInfo(worker_id, "host", 1, ["default"], 1, now, last_seen=now)


async def test_a_live_older_worker_keeps_producers_off_the_inbox(url: str) -> None:
    # Mutation: `InboxGate.learn` always True -> the job goes to the inbox although a
    # worker without the flag is live.
    async with redis_broker(url) as admin:
        now = admin.clock.now()
        info = msgspec.json.encode(_old_worker("old", now))  # an older version's record
        await admin._x.run("worker_register", admin._worker_keys(), ["old", info, repr(now + 60)])
        async with redis_broker(url) as producer:
            job_id = await enqueue(producer)
            assert await raw_state(producer, job_id) == (0, True, True)
        await admin.unregister_worker("old")
        await admin.register_worker(_old_worker("new", now), ttl_s=60)  # this version
        [raw] = await admin._x.run("workers", admin._worker_keys(), [repr(now)])
        assert msgspec.json.decode(raw)["extra"][INBOX_FLAG] == INBOX_LEVEL
        async with redis_broker(url) as producer:
            job_id = await enqueue(producer)
            assert await raw_state(producer, job_id) == (1, True, False)


async def test_a_failed_registry_read_sends_jobs_the_full_way(url: str) -> None:
    # Mutation: `_inbox_allowed` answering True when the read fails -> the job goes to
    # the inbox although no one knows which workers are live.
    async with redis_broker(url) as broker:
        run = broker._x.run

        async def failing(name: str, keys: Any, args: Any) -> Any:
            if name == "workers":
                raise BrokerUnavailable("the registry read fails (a test)")
            return await run(name, keys, args)

        broker._x.run = failing  # type: ignore[method-assign]
        job_id = await enqueue(broker)
        assert await raw_state(broker, job_id) == (0, True, True)
        broker._x.run = run  # type: ignore[method-assign]
        assert await broker._inbox_allowed() == 0  # closed for RETRY_S still


def test_the_sync_producer_follows_the_gate_too(redis_url: str) -> None:
    # Mutation: `_inbox_allowed_blocking` returning True -> the job of the sync call
    # goes to the inbox while an older worker is live.
    app = Offload(redis_url)

    @app.task(name="t")
    def t(n: int) -> None:
        pass

    broker = app.broker
    assert isinstance(broker, RedisBroker)
    try:
        t.enqueue(0)  # records the queue: later calls take the sync path
        job = t.enqueue(1)
        q = broker._x.q("default")
        with redis.Redis.from_url(broker.options.redis_url) as client:
            assert client.llen(q.inbox) >= 1 and not client.hexists(q.record, job.id)
            now = broker.clock.now()
            info = msgspec.json.encode(_old_worker("old", now))
            workers, seen = broker._worker_keys()
            client.hset(workers, "old", info)
            client.zadd(seen, {"old": now + 60})
            for used in (broker, app.producer._portal_broker):  # either may send
                if isinstance(used, RedisBroker):
                    used._inbox.reset()
            job = t.enqueue(2)
            assert client.llen(q.inbox) == 0 and client.hexists(q.record, job.id)
    finally:
        app.close()


def test_the_sync_producer_answers_a_resent_job_as_a_duplicate(redis_url: str) -> None:
    # Mutation: the sync path's reading of the plain case's 0/1 reply as always
    # created -> the second answer says created.
    broker = redis_broker(redis_url)
    job = make_job(broker.clock)
    try:
        broker._known = {"default"}  # the queue recorded: the sync path takes the call
        assert broker.enqueue_blocking([job]) == [EnqueueResult(job[0].id, True)]
        assert broker.enqueue_blocking([job]) == [EnqueueResult(job[0].id, False)]
        with redis.Redis.from_url(broker.options.redis_url) as client:
            assert client.llen(broker._x.q("default").inbox) == 1
    finally:
        broker._blocking.close()


def test_the_gate_rereads_the_registry_after_its_interval_and_closes_on_failure() -> None:
    # Mutation: REFRESH_S ignored (`cached` always None, or never expiring) -> the
    # cached answers below change; the lowest level not taken -> the level-1 worker's
    # producers would lend it jobs it cannot ack.
    t = [0.0]
    gate = InboxGate(lambda: t[0])
    assert gate.cached() is None
    assert gate.learn([]) == INBOX_LEVEL  # no live worker: all of it
    t[0] = REFRESH_S - 0.01
    assert gate.cached() == INBOX_LEVEL
    t[0] = REFRESH_S + 0.01
    assert gate.cached() is None
    old = msgspec.json.encode(_old_worker("old", 0.0))
    level_1 = msgspec.json.encode({"extra": {INBOX_FLAG: 1}})
    new = msgspec.json.encode({"extra": {INBOX_FLAG: INBOX_LEVEL}})
    assert gate.learn([new, old]) == 0
    assert gate.learn([new, b"not json"]) == 0
    assert gate.learn([new, msgspec.json.encode({"extra": {INBOX_FLAG: "2"}})]) == 0
    assert gate.learn([new, level_1]) == 1  # the inbox, but no lending
    assert gate.learn([new]) == INBOX_LEVEL
    assert gate.failed() == 0
    t[0] += RETRY_S - 0.01
    assert gate.cached() == 0
    t[0] += 0.02
    assert gate.cached() is None


async def test_a_call_with_bad_fields_writes_nothing(url: str) -> None:
    # Mutation: the full path's assert moved after the HSETNX -> a payload without a
    # record is left behind (a job that is never found).
    async with redis_broker(url) as broker:
        job = make_job(broker.clock)
        name, keys, args = broker._enqueuing.one_call(job, broker.clock.now(), None, False)
        fields = msgspec.msgpack.encode({**fields_of(args), "p": "high"})
        await broker._remember({"default"})
        with pytest.raises(Exception, match="fields must be"):
            await broker._x.run(name, keys, [*args[:6], fields, ""])
        assert await raw_state(broker, job[0].id) == (0, False, False)


PRODUCER = """
import os, sys
from offload.brokers import from_url
from tests.conformance.helpers import make_job
import asyncio

async def main():
    broker = from_url(sys.argv[1])
    await broker.connect()
    job = make_job(broker.clock)
    [result] = await broker.enqueue([job])
    print(result.id, flush=True)
    os._exit(0)  # killed: no close, nothing flushed or expanded by this process

asyncio.run(main())
"""


async def test_a_producer_killed_after_a_lean_enqueue_loses_nothing(url: str) -> None:
    # Mutation: enqueue_one.lua's lean branch without the LPUSH -> the job is never
    # reserved.
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER, url],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.getcwd(),
        timeout=60,
    )
    job_id = done.stdout.strip()
    async with redis_broker(url) as broker:
        assert (await raw_state(broker, job_id))[:2] == (1, True)
        lease = await reserve_one(broker)
        assert lease.job_id == job_id
