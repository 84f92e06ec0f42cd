"""What `reserve.lua` and `ack.lua` write, pinned where they do less per job than the
plain transition helpers would: the `expiring` index is touched only for jobs that have
an expiry, and a reservation reads each queue's heads a batch at a time (issue 16,
items 2 and 3: the Redis server's time per job).
"""

from __future__ import annotations

from typing import Any

import redis

from offload.brokers import from_url
from offload.brokers.base import Settlement
from offload.codec import encode_value
from offload.envelope import JobState
from offload.testing import FakeClock
from tests.conformance.helpers import enqueue_one, state_of


def _client(url: str) -> tuple[Any, str]:
    return redis.Redis.from_url(url.split("?")[0]), url.split("prefix=")[1]


async def test_a_job_with_an_expiry_leaves_the_expiring_index_when_leased(
    redis_url: str,
) -> None:
    clock = FakeClock()
    client, prefix = _client(redis_url)
    expiring = f"{prefix}:{{default}}:expiring"
    async with from_url(redis_url, clock=clock) as broker:
        lasting = await enqueue_one(broker, expires_at=clock.now() + 60)
        plain = await enqueue_one(broker)
        await broker.counts()  # a plain enqueue may wait in the queue's inbox: expand it
        assert client.zrange(expiring, 0, -1) == [lasting.encode()]
        leases = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=10)
        assert [lease.job_id for lease in leases] == [lasting, plain]
        assert client.zcard(expiring) == 0
        acks = [Settlement.ack(lease, encode_value(1)) for lease in leases]
        assert await broker.settle_many(acks) == [True, True]
        # Past the expiry, the acked job is not expired by the sweep: it left the index.
        clock.advance(120)
        assert (await broker.sweep()).expired == 0
        assert await state_of(broker, lasting) is JobState.SUCCEEDED
    client.close()


async def test_a_reservation_past_unusable_heads_still_fills_its_limit_in_order(
    redis_url: str,
) -> None:
    """The heads read in one batch may all be corrupt (buried, not leased): the script
    reads the queue again, and still merges the queues by priority, then due time."""
    clock = FakeClock()
    client, prefix = _client(redis_url)
    async with from_url(redis_url, clock=clock) as broker:
        a = []
        for _ in range(4):
            a.append(await enqueue_one(broker, queue="a"))
            clock.advance(1)
        b_late = await enqueue_one(broker, queue="b")
        b_urgent = await enqueue_one(broker, queue="b", priority=5)
        await broker.counts()  # expand the inboxes before the records are spoiled
        for bad in a[:2]:
            client.hset(f"{prefix}:{{a}}:record", bad, b"junk\xff\x00")
        leases = await broker.reserve(["a", "b"], worker_id="w", lease_s=30, limit=3)
        assert [lease.job_id for lease in leases] == [b_urgent, a[2], a[3]]
        leases = await broker.reserve(["a", "b"], worker_id="w", lease_s=30, limit=3)
        assert [lease.job_id for lease in leases] == [b_late]
    client.close()


async def test_a_job_acked_twice_in_one_call_counts_once(redis_url: str) -> None:
    """ack.lua sends its moves in one write per key at its end: the second ack of the
    same lease in the call must still see the job as acked, not as running."""
    clock = FakeClock()
    async with from_url(redis_url, clock=clock) as broker:
        job = await enqueue_one(broker)
        [lease] = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=1)
        ack = Settlement.ack(lease, encode_value(1))
        assert await broker.settle_many([ack, ack]) == [True, False]
        assert await state_of(broker, job) is JobState.SUCCEEDED
        counts = await broker.counts()
        assert counts["default"].states.get(JobState.SUCCEEDED) == 1


async def test_a_job_listed_twice_in_ready_is_leased_once(redis_url: str) -> None:
    """A stale second member of `ready` for one job (which no version writes, but a
    crash of an older one could leave): reserve.lua holds its writes until the end of
    the loop, so the second member must not find the job still queued."""
    clock = FakeClock()
    client, prefix = _client(redis_url)
    ready = f"{prefix}:{{default}}:ready"
    async with from_url(redis_url, clock=clock) as broker:
        job = await enqueue_one(broker)
        await broker.counts()  # expand the inbox: `ready` holds the job
        [(member, score)] = client.zrange(ready, 0, -1, withscores=True)
        stale = b"%015d" % (int(member[:15]) + 1) + member[15:]
        client.zadd(ready, {stale: score})
        leases = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=5)
        assert [lease.job_id for lease in leases] == [job]
        assert client.zcard(ready) == 0
    client.close()
