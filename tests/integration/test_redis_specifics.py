"""What the conformance suite cannot see of the Redis broker: key reaping, the eviction
policy warning, typed errors and recovery when Redis goes away, wake-up latency, the
per-queue scope of idempotency keys, sync producers beside a worker in one process, and
what job ends cost (published only when waited on; outbox entries leave no keys).

Servers that a test stops or misconfigures are throwaway ones on free ports (`own_redis`); the
shared server only ever sees keys under the test's own prefix.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from offload import Offload
from offload.brokers import from_url
from offload.brokers.base import Broker, Settlement
from offload.brokers.records import FINISHED_KEEP_S
from offload.brokers.redis import RedisBroker
from offload.brokers.redis import keys as K
from offload.codec import encode_value
from offload.envelope import JobState, Step, new_job_id
from offload.errors import BrokerUnavailable, ConfigurationError
from offload.testing import FakeClock
from offload.worker import Worker
from tests.conformance.helpers import enqueue_one, make_job
from tests.redis_cluster import RedisProcess, free_port


def test_a_throwaway_server_never_takes_another_server_for_its_own(
    own_redis: RedisProcess, tmp_path: Path
) -> None:
    """A port found free can be taken before our server binds it (parallel test runs):
    the server answering there must not pass for ours, whose process already exited."""
    with pytest.raises(RuntimeError, match="did not start"):
        RedisProcess(tmp_path, own_redis.port).start(timeout=5)


def our_keys(url: str, prefix: str) -> list[str]:
    import redis

    with redis.Redis.from_url(url.split("?")[0]) as client:
        return sorted(key.decode() for key in client.scan_iter(match=f"{prefix}:*", count=1000))


async def run_to_success(broker: Broker, clock: FakeClock, n: int, ttl_s: float) -> None:
    """Enqueue `n` keyed jobs, reserve and ack them all, in bulk."""
    for start in range(0, n, 1000):
        jobs = [make_job(clock, key=f"k{i}") for i in range(start, min(n, start + 1000))]
        await broker.enqueue(jobs)
    while leases := await broker.reserve(["default"], worker_id="w", lease_s=60, limit=1000):
        acks = [Settlement.ack(lease, encode_value(1), result_ttl_s=ttl_s) for lease in leases]
        assert all(await broker.settle_many(acks))


async def assert_reaped(url: str, n: int) -> None:
    """`n` jobs run and reaped: only the documented keys of an empty queue remain."""
    clock = FakeClock()
    broker = from_url(url, clock=clock)
    prefix = url.split("prefix=")[1]
    async with broker:
        await run_to_success(broker, clock, n, ttl_s=10)
        assert len(our_keys(url, prefix)) > 3
        clock.advance(11)
        report = await broker.sweep()
    assert report.purged == n
    # The per-minute end counts stay for their window (FINISHED_KEEP_S), then go too.
    kept = [f"{prefix}:{{%global}}:queues", f"{prefix}:{{default}}:seq"]
    assert our_keys(url, prefix) == sorted([*kept, f"{prefix}:{{default}}:finished"])
    clock.advance(FINISHED_KEEP_S + 60)
    async with broker:
        await broker.sweep()
    assert our_keys(url, prefix) == kept


async def test_only_documented_keys_remain_after_results_expire(redis_url: str) -> None:
    await assert_reaped(redis_url, 2_000)


@pytest.mark.slow
async def test_only_documented_keys_remain_after_100k_results_expire(redis_url: str) -> None:
    await assert_reaped(redis_url, 100_000)


async def test_eviction_policy_that_may_drop_jobs_is_warned_about(
    tmp_path: Path, redis_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisProcess(tmp_path, None, "--maxmemory-policy", "allkeys-lru").start()
    try:
        with caplog.at_level(logging.WARNING, logger="offload.brokers.redis"):
            async with from_url(f"redis://127.0.0.1:{server.port}"):
                pass
    finally:
        server.stop()
    assert "maxmemory-policy allkeys-lru" in caplog.text


async def test_noeviction_policy_is_not_warned_about(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="offload.brokers.redis"):
        async with from_url(redis_url):
            pass
    assert "maxmemory-policy" not in caplog.text


@pytest.mark.parametrize("options", ["", "?cluster=true"], ids=["single", "cluster"])
async def test_closed_port_gives_broker_unavailable(options: str) -> None:
    broker = from_url(f"redis://127.0.0.1:{free_port()}{options}")
    with pytest.raises(BrokerUnavailable):
        await broker.connect()
    with pytest.raises(BrokerUnavailable):
        await enqueue_one(broker)


async def test_producer_gets_broker_unavailable_while_redis_is_down_then_recovers(
    own_redis: RedisProcess,
) -> None:
    async with from_url(f"redis://127.0.0.1:{own_redis.port}") as broker:
        await enqueue_one(broker)
        own_redis.stop()
        with pytest.raises(BrokerUnavailable):
            await enqueue_one(broker)
        own_redis.start()  # empty again: no persistence, and no scripts loaded
        await enqueue_one(broker)
        assert len(await broker.reserve(["default"], worker_id="w", lease_s=5, limit=5)) == 1


async def test_worker_resumes_by_itself_after_redis_restarts(own_redis: RedisProcess) -> None:
    app = Offload(f"redis://127.0.0.1:{own_redis.port}")
    done: list[int] = []

    @app.task(name="record")
    async def record(n: int) -> None:
        done.append(n)

    worker = Worker(app, poll_s=0.5)
    running = asyncio.create_task(worker.run())
    try:
        await record.enqueue_async(1)
        await wait_for(lambda: done == [1])
        own_redis.stop()
        await asyncio.sleep(0.5)  # the worker's reserve fails meanwhile, and it backs off
        own_redis.start()
        producer = from_url(app.url)
        async with producer:
            await enqueue_one(producer, "record", args=[2])
        await wait_for(lambda: done == [1, 2], timeout_s=10)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
        await app.aclose()


async def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_idle_wait_wakes_within_milliseconds_of_an_enqueue_elsewhere(
    redis_url: str,
) -> None:
    waiter, producer = from_url(redis_url), from_url(redis_url)
    latencies: list[float] = []
    async with waiter, producer:
        await waiter.wait(["default"], 0.01)  # subscribed from here on
        for _ in range(30):
            waiting = asyncio.create_task(waiter.wait(["default"], 2.0))
            await asyncio.sleep(0.005)
            start = time.perf_counter()
            await enqueue_one(producer)
            await waiting
            latencies.append(time.perf_counter() - start)
            # as a worker does: the next job wakes it only once this one is reserved
            await waiter.reserve(["default"], worker_id="w", lease_s=30, limit=10)
    # Each includes the enqueue's own round trip: typically well under a millisecond on
    # a quiet machine, several under a CPU hog. The bounds stay far from both that and
    # the 2 s timeout a missed push would cost, so only a lost or slow push fails.
    assert max(latencies) < 1.0, latencies
    assert statistics.median(latencies) < 0.1, latencies


async def test_idempotency_keys_are_scoped_to_their_queue(redis_url: str) -> None:
    async with from_url(redis_url) as broker:
        a = await enqueue_one(broker, queue="a", key="k")
        b = await enqueue_one(broker, queue="b", key="k")  # a separate job
        env, payload = make_job(broker.clock, queue="a", key="k")
        [again] = await broker.enqueue([(env, payload)])
        found = await broker.find("k")
    assert a != b
    assert (again.id, again.created) == (a, False)
    assert found is not None and found.id in (a, b)


def test_every_script_documents_its_keys_and_argv() -> None:
    scripts = files("offload.brokers.redis") / "scripts"
    for script in scripts.iterdir():
        if script.name.endswith(".lua") and not script.name.startswith("_"):
            header = script.read_text(encoding="utf-8").split("\nlocal", 1)[0]
            assert "-- KEYS:" in header and "-- ARGV:" in header, script.name


def test_queue_names_cannot_break_out_of_their_hash_tag() -> None:
    broker = RedisBroker("redis://localhost?prefix=p")
    tags = {broker._x.q(name).ready.split("}")[0] for name in ("a}b", "a{b", "%", "", "a")}
    assert len(tags) == 5
    assert all(tag.count("{") == 1 for tag in tags)


async def test_sync_enqueue_while_a_worker_runs_in_the_same_process(redis_url: str) -> None:
    app = Offload(redis_url)
    done = asyncio.Event()

    @app.task(name="ping")
    async def ping() -> None:
        done.set()

    worker = Worker(app)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.1)
        job = await asyncio.to_thread(ping.enqueue)  # through the portal's own loop
        await asyncio.wait_for(done.wait(), 5)
        assert (await asyncio.to_thread(job.state)).value in ("running", "succeeded")
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
        await app.aclose()
        await asyncio.to_thread(app.close)


async def test_ends_are_published_only_for_jobs_someone_waits_on(redis_url: str) -> None:
    import redis.asyncio

    prefix = redis_url.split("prefix=")[1]
    listener = redis.asyncio.Redis.from_url(redis_url.split("?")[0])
    pubsub = listener.pubsub()
    await pubsub.subscribe(K.ended_channel(prefix))
    assert await pubsub.get_message(timeout=2) is not None  # subscribed
    try:
        async with from_url(redis_url) as broker:
            plain, watched = await enqueue_one(broker), await enqueue_one(broker)
            waiting = asyncio.create_task(broker.wait_finished(watched, 10))
            await asyncio.sleep(0.2)  # registered in the queue's waiters
            leases = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=2)
            assert {lease.job_id for lease in leases} == {plain, watched}
            assert all(await broker.settle_many([Settlement.ack(lease, None) for lease in leases]))
            await asyncio.wait_for(waiting, 2)
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        assert message is not None and message["data"] == watched.encode()
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await listener.aclose()


async def test_outbox_entries_leave_no_keys(redis_url: str) -> None:
    clock = FakeClock()
    prefix = redis_url.split("prefix=")[1]
    async with from_url(redis_url, clock=clock) as broker:
        flow = await enqueue_one(broker, then=[Step(id=new_job_id(), task="next")])
        plain = await enqueue_one(broker, expires_at=clock.now() + 1)
        waited = await enqueue_one(broker, not_before=clock.now() + 3600)
        await broker.wait_finished(waited, 0.05)  # times out, stays registered
        assert f"{prefix}:{{default}}:waiters" in our_keys(redis_url, prefix)
        assert await broker.cancel(flow)
        clock.advance(2)
        assert (await broker.sweep()).expired == 1
        assert [entry.job_id for entry in await broker.outbox()] == [flow, plain]
        assert await broker.cancel(waited)
        clock.advance(broker.retention_s + 1)
        assert (await broker.sweep()).purged == 3
    assert our_keys(redis_url, prefix) == [
        f"{prefix}:{{%global}}:queues",
        f"{prefix}:{{default}}:seq",
    ]


def test_sync_enqueue_runs_on_the_calling_thread_after_the_first(redis_url: str) -> None:
    # The first enqueue to a queue records it (portal path); later ones skip the portal.
    from offload import QueueFull

    app = Offload(redis_url, max_queue_depth=3)

    @app.task(name="ping")
    def ping(n: int) -> int:
        return n

    hops = 0
    run = app.portal.run

    def counted(coro: Any) -> Any:
        nonlocal hops
        hops += 1
        return run(coro)

    app.portal.run = counted  # type: ignore[method-assign]
    try:
        first = ping.enqueue(1)
        assert hops == 1
        second = ping.options(key="k").enqueue(2)
        again = ping.options(key="k").enqueue(3)  # the key holds, on the fast path too
        assert hops == 1
        assert (again.id, again.created) == (second.id, False)
        with pytest.raises(QueueFull):  # and so does the depth limit
            ping.enqueue_many([(4,), (5,)])
        assert hops == 1
        info = first.info()  # inspection still goes through the portal
        assert info.queue == "default" and info.state.value == "queued"

        async def queues() -> list[str]:
            return await (await app.connected_broker()).queues()

        assert app.portal.run(queues()) == ["default"]
    finally:
        app.portal.run = run  # type: ignore[method-assign]
        app.close()


def test_sync_fast_path_survives_a_redis_restart(own_redis: RedisProcess) -> None:
    app = Offload(f"redis://127.0.0.1:{own_redis.port}")

    @app.task(name="ping")
    def ping() -> None: ...

    try:
        ping.enqueue()
        ping.enqueue()  # fast path
        own_redis.stop()
        with pytest.raises(BrokerUnavailable):
            ping.enqueue()
        own_redis.start()  # empty: the scripts are gone (NOSCRIPT, then reloaded)
        job = ping.enqueue()

        async def reserve() -> list[str]:
            async with from_url(f"redis://127.0.0.1:{own_redis.port}") as broker:
                leases = await broker.reserve(["default"], worker_id="w", lease_s=5, limit=5)
                return [lease.job_id for lease in leases]

        assert app.portal.run(reserve()) == [job.id]
    finally:
        app.close()


async def test_a_bulk_enqueue_past_the_scripts_chunk_size_is_whole(redis_url: str) -> None:
    # enqueue.lua writes in chunks of 4,000 arguments (Lua's unpack limit): 5,000 jobs
    # with keys cross it for every structure, and a repeated key still resolves.
    clock = FakeClock()
    async with from_url(redis_url, clock=clock) as broker:
        jobs = [make_job(clock, key=f"k{i}", expires_at=clock.now() + 60) for i in range(5000)]
        jobs += [make_job(clock, key="k4321")]
        results = await broker.enqueue(jobs)
        assert sum(r.created for r in results) == 5000
        assert results[-1].id == jobs[4321][0].id and not results[-1].created
        assert (await broker.counts())["default"].states[JobState.QUEUED] == 5000
        leases = await broker.reserve(["default"], worker_id="w", lease_s=60, limit=5000)
        assert [lease.job_id for lease in leases] == [env.id for env, _ in jobs[:5000]]


async def test_a_burst_of_concurrent_calls_beyond_a_hundred_succeeds(redis_url: str) -> None:
    """A burst of async calls (a web app's requests, a gather): redis-py 8's default
    pool refuses the 101st concurrent one."""
    app = Offload(redis_url)
    try:
        jobs = await asyncio.gather(*(app.enqueue_async("t", i) for i in range(400)))
        infos = await asyncio.gather(*(job.info_async() for job in jobs))
        assert len({info.id for info in infos}) == 400
    finally:
        await app.aclose()


def test_a_bad_pool_max_is_a_configuration_error(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="pool_max"):
        from_url(f"{redis_url}&pool_max=0")


async def range_listing(broker: RedisBroker, since: float, until: float) -> tuple[list[str], int]:
    """The ids `list_jobs` lists for a time range, and how many scripts it ran."""
    calls = 0
    run = broker._x.run

    async def counted(name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        nonlocal calls
        calls += name == "list_jobs"
        return await run(name, keys, args)

    broker._x.run = counted  # type: ignore[method-assign]
    try:
        page = await broker.list_jobs(queue="default", since=since, until=until, limit=10)
    finally:
        broker._x.run = run  # type: ignore[method-assign]
    return [info.id for info in page.items], calls


async def test_a_time_range_deep_in_the_queue_is_one_seek_of_the_creation_index(
    redis_url: str,
) -> None:
    # Given three jobs created long ago, then more newer jobs than one walk reads,
    clock = FakeClock()
    async with from_url(redis_url, clock=clock) as broker:
        assert isinstance(broker, RedisBroker)
        old = [make_job(clock, created_at=1000.0 + i) for i in range(3)]
        await broker.enqueue(old)
        await broker.enqueue([make_job(clock, created_at=5000.0) for _ in range(4500)])

        # the range is read in one script call, from the `created` index,
        listed, calls = await range_listing(broker, 1000.0, 1001.0)
        assert listed == [old[1][0].id, old[0][0].id]
        assert calls == 1

        # and where that index misses jobs (stored before it existed), the listing
        # walks every job instead: the same answer, in budget-sized steps.
        await broker._x.commands([("DEL", broker._x.q("default").created)])
        listed, calls = await range_listing(broker, 1000.0, 1001.0)
        assert listed == [old[1][0].id, old[0][0].id]
        assert calls == 3


def test_the_scripts_name_a_queues_keys_in_the_order_python_passes_them() -> None:
    # `_lib.lua` indexes KEYS by its FIELDS list; `keys.QueueKeys` builds them: one
    # field added to one side only shifts every key after it.
    import re
    from pathlib import Path

    import offload.brokers.redis as package
    from offload.brokers.redis.keys import QueueKeys

    lib = (Path(package.__file__).parent / "scripts" / "_lib.lua").read_text()
    found = re.search(r"local FIELDS = \{(.*?)\}", lib, re.S)
    assert found is not None
    assert tuple(re.findall(r"'(\w+)'", found.group(1))) == QueueKeys._fields
