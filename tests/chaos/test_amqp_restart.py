"""RabbitMQ killed (SIGKILL of a node of the test's own) under a producer and a
consumer, and started again on the same data: every job whose enqueue returned is
delivered afterwards (publisher confirms mean durable), the leases held at the kill
end (`extend` says so) and those jobs come back with the crash counted, delayed jobs
waiting in their delay buckets still start on time, and both sides reconnect by
themselves (the sync producer's pooled pika connection too). Calls during the outage
raise `BrokerUnavailable`, nothing else."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.brokers.amqp import AmqpDelivery
from offload.brokers.records import Lease
from offload.brokers.roles import Settlement
from offload.clock import SystemClock
from offload.errors import BrokerUnavailable
from tests.chaos._report import record
from tests.conformance.helpers import make_job
from tests.rabbitmq_node import RabbitNode

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

CLOCK = SystemClock()
JOBS = 300


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RabbitNode]:
    rabbit = RabbitNode(tmp_path / "rabbit")
    rabbit.start()
    try:
        yield rabbit
    finally:
        rabbit.kill()


async def drain(delivery: AmqpDelivery, want: set[str], within: float) -> list[Lease]:
    """Reserve and ack until every job of `want` came back (or `within` seconds passed),
    riding out BrokerUnavailable."""
    got: list[Lease] = []
    deadline = time.monotonic() + within
    while not want <= {lease.job_id for lease in got} and time.monotonic() < deadline:
        try:
            leases = await delivery.reserve(("default",), worker_id="w", lease_s=30, limit=50)
            if leases:
                await delivery.settle_many([_ack(lease) for lease in leases])
                got += leases
            else:
                await delivery.wait(("default",), 0.2)
        except BrokerUnavailable:
            await asyncio.sleep(0.5)
    return got


def _ack(lease: Lease) -> Settlement:
    return Settlement.ack(lease, None)


async def test_a_killed_rabbitmq_loses_no_confirmed_job(node: RabbitNode) -> None:
    url = f"{node.url}?prefix=chaos"
    producer, consumer = AmqpDelivery(url), AmqpDelivery(url)
    try:
        # Given: confirmed jobs, some due in 3 s (in delay buckets), and 5 leased.
        now = CLOCK.now()
        ready = [make_job(CLOCK, args=[i]) for i in range(JOBS)]
        delayed = [make_job(CLOCK, args=[i], not_before=now + 3) for i in range(20)]
        await producer.enqueue(ready + delayed)
        # ... and some from sync code (the calling thread's pika connection).
        synced = [make_job(CLOCK, args=[i]) for i in range(20)]
        for job in synced:
            assert await asyncio.to_thread(producer.enqueue_blocking, [job]) is not None
        held: list[Lease] = []
        while len(held) < 5:
            held += await consumer.reserve(
                ("default",), worker_id="w", lease_s=30, limit=5 - len(held)
            )
            await consumer.wait(("default",), 0.2)
        # When: the node dies without a word, and a producer tries meanwhile.
        await asyncio.to_thread(node.kill)
        with pytest.raises(BrokerUnavailable):
            await producer.enqueue([make_job(CLOCK)])
        with pytest.raises(BrokerUnavailable):
            await asyncio.to_thread(producer.enqueue_blocking, [make_job(CLOCK)])
        assert await consumer.extend(held, 30) == [False] * 5
        with pytest.raises(BrokerUnavailable):
            await consumer.reserve(("default",), worker_id="w", lease_s=30, limit=1)
        started = time.monotonic()
        await asyncio.to_thread(node.start)
        # Then: both reconnect on their next call, and every confirmed job arrives.
        late = make_job(CLOCK)
        await producer.enqueue([late])
        late_sync = make_job(CLOCK)  # its pooled connection died with the node
        assert await asyncio.to_thread(producer.enqueue_blocking, [late_sync]) is not None
        expected = {e.id for e, _ in ready + delayed + synced} | {late[0].id, late_sync[0].id}
        running = {lease.job_id for lease in held}  # as a worker still running them
        got = await drain(consumer, expected - running, within=120)
        # The held jobs come back to this process, which still runs them: each is kept
        # for its lease (not leased again), so its run ends it through the new delivery.
        deadline = time.monotonic() + 30
        while not all(await consumer.extend(held, 30)) and time.monotonic() < deadline:
            more = await consumer.reserve(("default",), worker_id="w", lease_s=30, limit=50)
            if more:
                await consumer.settle_many([_ack(lease) for lease in more])
                got += more
            else:
                await consumer.wait(("default",), 0.2)
        ended = await consumer.settle_many([_ack(lease) for lease in held])
    finally:
        await producer.close()
        await consumer.close()
    ids = [lease.job_id for lease in got]
    assert not running & set(ids), "a job this process held was leased to it again"
    assert ended == [True] * 5, "the held jobs' leases did not take their new deliveries"
    missing = expected - set(ids) - running
    assert not missing, (
        f"{len(missing)} lost: {len(missing & {e.id for e, _ in ready})} ready, "
        f"{len(missing & {e.id for e, _ in delayed})} delayed, "
        f"{len(missing & {e.id for e, _ in synced})} sync, late: {late[0].id in missing}, "
        f"late sync: {late_sync[0].id in missing}; "
        f"held: {len(missing & {lease.job_id for lease in held})}"
    )
    record(
        "amqp (delivery)",
        "RabbitMQ SIGKILLed and restarted",
        jobs=len(expected),
        faults=1,
        lost=len(missing),
        overlapping=None,
        stuck=0,
        note=f"back {time.monotonic() - started:.0f} s after the restart began; "
        f"{len(ids) - len(set(ids))} redelivered twice",
    )
