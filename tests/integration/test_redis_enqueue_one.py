"""The lean one-job enqueue on Redis (issue 16): `enqueue_one.lua`, and the sync
producer's direct connection (`brokers/redis/_blocking.py`).

`enqueue_one.lua` must write exactly what `enqueue.lua` writes for a call of one job,
so that workers and inspectors of every version read its jobs alike (a rolling
upgrade): the parity tests run both scripts on the same job (but its id and key) and
compare every key of the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis

from offload import Offload
from offload.brokers import from_url
from offload.brokers.records import EnqueueResult
from offload.brokers.redis import RedisBroker
from offload.brokers.redis._executor import SCRIPTS
from offload.envelope import JobState, new_job_id
from offload.errors import QueueFull
from tests.conformance.helpers import make_job
from tests.redis_cluster import RedisProcess


@pytest.fixture(params=["redis", "redis_cluster"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def own_redis_url(own_redis: RedisProcess) -> str:
    """On a server of this test's own: a test that kills every client's connection and
    flushes the scripts must not do so to tests running beside it (pytest -n)."""
    return f"redis://127.0.0.1:{own_redis.port}/0?prefix=t"


def redis_broker(url: str) -> RedisBroker:
    broker = from_url(url)
    assert isinstance(broker, RedisBroker)
    return broker


async def snapshot(broker: RedisBroker, job_id: str, key: str | None) -> dict[str, Any]:
    """Everything the queue's keys hold about one job, with its id, key and enqueue
    sequence replaced by placeholders (the only things two jobs of one call differ in)."""
    client: Any = await broker._redis()  # (a single Redis or a cluster: the same calls)
    q = broker._x.q("default")
    out: dict[str, Any] = {}
    seq = None
    raw = await client.hget(q.record, job_id)
    if raw is not None:
        record = msgspec.msgpack.decode(raw)
        seq = record.pop("q")
        if "k" in record:
            record["k"] = "KEY"
        if "t" in record:
            record["t"] = record["t"].replace(job_id, "ID")
        out["record"] = record
    out["payload"] = await client.hget(q.payload, job_id) is not None
    if key is not None:
        out["keys"] = (await client.hget(q.keys, key)) == job_id.encode()
    for name in ("ready", "scheduled", "running", "expiring", "jobs", "created"):
        for member, score in await client.zrange(getattr(q, name), 0, -1, withscores=True):
            text = member.decode()
            if job_id in text:
                head = text[: text.index(job_id)]
                if seq is not None and head.endswith(f"{seq:012d}"):
                    head = head[:-12] + "SEQ"
                out[name] = (score, head + "ID")
    return out


def fields_of(args: Any) -> dict[str, Any]:
    """The job's fields in `enqueue_one.lua`'s ARGV."""
    value = args[6]
    assert isinstance(value, bytes)
    fields: dict[str, Any] = msgspec.msgpack.decode(value)
    return fields


def enqueue_args(broker: RedisBroker, job: Any, now: float) -> list[Any]:
    """The ARGV of `enqueue.lua` for `job` alone."""
    now_text = repr(now)
    head = [now_text, broker._x.channel("default"), ""]
    return head + broker._enqueuing.job_args(job, now, now_text)


OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "priority": {"priority": 5},
    "key": {"key": True},
    "delayed": {"not_before": 3600.0},
    "expiring": {"expires_at": 3600.0},
    "expired already": {"expires_at": -1.0},
    "delayed and expiring": {"not_before": 60.0, "expires_at": 3600.0},
    "max attempts": {"max_attempts": 7},
}


@pytest.mark.parametrize("case", OPTIONS)
async def test_enqueue_one_writes_what_enqueue_writes_for_one_job(url: str, case: str) -> None:
    async with redis_broker(url) as broker:
        now = broker.clock.now()
        options = dict(OPTIONS[case])
        snapshots = []
        for script, key in (("enqueue", "key-a"), ("enqueue_one", "key-b")):
            fields = {
                name: now + value if name in ("not_before", "expires_at") else value
                for name, value in options.items()
                if name != "key"
            }
            if options.get("key"):
                fields["key"] = key
            job = make_job(broker.clock, created_at=now, **fields)
            _, keys, args = broker._enqueuing.one_call(job, now, None)
            if script == "enqueue":
                keys, args = broker._x.q("default"), enqueue_args(broker, job, now)
            await broker._remember({"default"})
            reply = await broker._x.run(script, keys, args)
            assert [x.decode() if isinstance(x, bytes) else x for x in reply] == [job[0].id, 1]
            snapshots.append(await snapshot(broker, job[0].id, fields.get("key")))
        assert snapshots[0] == snapshots[1]
        assert snapshots[1]["payload"] and "record" in snapshots[1]


async def test_enqueue_one_marks_a_workflow_job_as_enqueue_does(url: str) -> None:
    async with redis_broker(url) as broker:
        now = broker.clock.now()
        flags = []
        for script in ("enqueue", "enqueue_one"):
            job = make_job(broker.clock, created_at=now)
            _, keys, args = broker._enqueuing.one_call(job, now, None)
            if script == "enqueue":  # the envelope has `then` or `chord`
                args = [*enqueue_args(broker, job, now)[:-1], "1"]
            else:
                fields = fields_of(args)
                args = [*args[:6], msgspec.msgpack.encode({**fields, "o": 1}), ""]
            await broker._x.run(
                script, keys if script == "enqueue_one" else broker._x.q("default"), args
            )
            client: Any = await broker._redis()
            record = msgspec.msgpack.decode(
                await client.hget(broker._x.q("default").record, job[0].id)
            )
            flags.append(record.get("o"))
        assert flags == [1, 1]


async def test_enqueue_one_answers_duplicates_and_full_queues_as_enqueue_does(url: str) -> None:
    async with redis_broker(url) as broker:
        now = broker.clock.now()
        first = make_job(broker.clock, key="k")
        [created] = await broker.enqueue([first])
        same_key = make_job(broker.clock, key="k")
        assert await broker.enqueue([same_key]) == [EnqueueResult(created.id, False)]
        assert await broker.enqueue([first]) == [EnqueueResult(created.id, False)]  # same id
        with pytest.raises(QueueFull):
            await broker.enqueue([make_job(broker.clock)], max_depth=1)
        call = broker._enqueuing.one_call(make_job(broker.clock), now, 1)
        assert await broker._x.run(*call) == [-1, 1]
        assert (await broker.counts(["default"]))["default"].states[JobState.QUEUED] == 1


def queued(app: Offload, job_ids: list[str]) -> int:
    """How many jobs `ready` holds, after checking that each of `job_ids` is queued."""
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    q = broker._x.q("default")
    with redis.Redis.from_url(broker.options.redis_url) as client:
        client.eval(SCRIPTS.sources["expand"], len(q), *q)  # the inbox's jobs, expanded
        for job_id in job_ids:
            record = msgspec.msgpack.decode(client.hget(q.record, job_id))
            assert record["s"] == "queued"
        return int(client.zcard(q.ready))


def sync_app(url: str) -> tuple[Offload, Any]:
    app = Offload(url)

    @app.task(name="t")
    def t(n: int) -> None:
        pass

    t.enqueue(0)  # records the queue: later calls take the sync path
    return app, t


def test_sync_enqueues_survive_a_killed_connection_and_a_script_flush(
    own_redis_url: str,
) -> None:
    """The direct connection fails over to the ordinary path, which reconnects and
    loads the scripts again; the job is stored once."""
    app, t = sync_app(own_redis_url)
    admin = redis.Redis.from_url(own_redis_url.split("?")[0])
    try:
        t.enqueue(1)
        admin.client_kill_filter(_type="normal", skipme=True)  # every client's connection
        job = t.enqueue(2)
        admin.script_flush()
        job2 = t.enqueue(3)
        assert t.enqueue(4).id != job2.id
        assert queued(app, [job.id, job2.id]) == 5
    finally:
        admin.close()
        app.close()


def test_sync_enqueues_from_many_threads_are_all_stored(redis_url: str) -> None:
    """Threads that find the direct connection busy take the pooled path."""
    app, t = sync_app(redis_url)
    ids: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        for i in range(50):
            job = t.enqueue(i)
            with lock:
                ids.append(job.id)

    threads = [threading.Thread(target=run) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(ids)) == 400
        assert queued(app, ids) == 401
    finally:
        app.close()


def test_a_script_error_on_the_direct_connection_is_a_broker_error_and_leaves_it_usable(
    redis_url: str,
) -> None:
    from offload.errors import BrokerError

    app, t = sync_app(redis_url)
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    try:
        now = time.time()
        call = broker._enqueuing.one_call(make_job(broker.clock, id=new_job_id()), now, None)
        name, keys, args = call
        fields = msgspec.msgpack.encode({**fields_of(args), "p": "high"})
        bad = (name, keys, [*args[:6], fields, ""])  # a priority that is not a number
        with pytest.raises(BrokerError):
            broker._blocking.run_one(bad)
        assert broker._blocking._direct is not None  # kept: the reply was read whole
        assert t.enqueue(5).id
    finally:
        app.close()


async def test_async_enqueues_survive_a_killed_connection_and_a_script_flush(
    own_redis_url: str,
) -> None:
    """`enqueue_async`'s direct connection fails over to the pooled client too."""
    async with redis_broker(own_redis_url) as broker:
        admin = redis.Redis.from_url(broker.options.redis_url)
        try:
            await broker.enqueue([make_job(broker.clock)])
            assert broker._x._direct_conn is not None  # the call took the direct connection
            admin.client_kill_filter(_type="normal", skipme=True)
            [first] = await broker.enqueue([make_job(broker.clock)])
            admin.script_flush()
            [second] = await broker.enqueue([make_job(broker.clock)])
            assert first.created and second.created
            counts = await broker.counts(["default"])
            assert counts["default"].states[JobState.QUEUED] == 3
        finally:
            admin.close()


async def test_a_cancelled_async_enqueue_leaves_the_next_ones_their_own_replies(
    redis_url: str,
) -> None:
    """A call cancelled at any point (before sending, while its reply is on the way)
    must not leave a reply for the next call on the direct connection to read as its
    own."""
    async with redis_broker(redis_url) as broker:
        await broker.enqueue([make_job(broker.clock)])
        for turns in range(40):
            task = asyncio.ensure_future(broker.enqueue([make_job(broker.clock)]))
            for _ in range(turns % 8):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            job = make_job(broker.clock)
            [result] = await broker.enqueue([job])
            assert result.id == job[0].id and result.created


async def test_concurrent_async_enqueues_are_all_stored(redis_url: str) -> None:
    """Calls that find the direct connection busy take the pooled client."""
    async with redis_broker(redis_url) as broker:
        jobs = [make_job(broker.clock) for _ in range(200)]
        results = await asyncio.gather(*(broker.enqueue([job]) for job in jobs))
        assert [r.id for [r] in results] == [job[0].id for job in jobs]
        counts = await broker.counts(["default"])
        assert counts["default"].states[JobState.QUEUED] == 200
