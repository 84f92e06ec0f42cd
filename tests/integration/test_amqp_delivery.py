"""The RabbitMQ delivery layer against the real server: confirms, prefetch, leases that
end with the connection, priorities, delays through TTL buckets, dead letters."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiormq
import aiormq.abc
import pytest
from pamqp import commands as spec
from pamqp.header import ContentHeader

from offload.brokers import from_url
from offload.brokers.amqp import AmqpDelivery
from offload.brokers.amqp.delivery import ATTEMPT_HEADER, ERROR_HEADER, STAMP_HEADER
from offload.brokers.composite import Composite
from offload.brokers.records import Lease, Outgoing
from offload.brokers.roles import Settlement
from offload.brokers.stateless import Stateless
from offload.clock import SystemClock
from offload.codec import decode_error
from offload.envelope import Step, new_job_id
from offload.errors import ConfigurationError, LeaseLost
from tests.conformance.helpers import BOOM, make_job

MakeDelivery = Callable[..., Awaitable[AmqpDelivery]]
CLOCK = SystemClock()


@pytest.fixture
async def make_delivery(amqp_url: str) -> AsyncIterator[MakeDelivery]:
    """Connected delivery layers on this test's prefix (each its own connection, as
    separate worker processes have); closed after the test."""
    made: list[AmqpDelivery] = []

    async def make(**params: str) -> AmqpDelivery:
        url = amqp_url + "".join(f"&{k}={v}" for k, v in params.items())
        delivery = AmqpDelivery(url)
        await delivery.connect()
        made.append(delivery)
        return delivery

    yield make
    for delivery in made:
        await delivery.close()


async def take(
    delivery: AmqpDelivery,
    count: int,
    *,
    queues: tuple[str, ...] = ("default",),
    within: float = 10,
) -> list[Lease]:
    """Reserve until `count` leases came back (fails after `within` seconds)."""
    leases: list[Lease] = []
    deadline = time.monotonic() + within
    while len(leases) < count:
        assert time.monotonic() < deadline, f"only {len(leases)} of {count} jobs arrived"
        leases += await delivery.reserve(
            queues, worker_id="w", lease_s=30, limit=count - len(leases)
        )
        if len(leases) < count:
            await delivery.wait(queues, 0.2)
    return leases


async def nothing_within(delivery: AmqpDelivery, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await delivery.reserve(("default",), worker_id="w", lease_s=30, limit=10) == []
        await delivery.wait(("default",), 0.05)


def close_connections(prefix: str) -> int:
    """Close every RabbitMQ connection named after `prefix` (the test's own: offload
    names its connections `offload PREFIX pid N`), as a proxy or a broker restart would
    end them; returns how many."""
    import subprocess

    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    pids = [line.split("\t")[0] for line in listing.splitlines() if prefix in line]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "cut by the test"],
            capture_output=True, check=False,
        )  # fmt: skip
    return len(pids)


async def cut(delivery: AmqpDelivery, prefix: str) -> None:
    """Cut `delivery`'s connection and wait until it noticed."""
    assert await asyncio.to_thread(close_connections, prefix) >= 1
    deadline = time.monotonic() + 10
    while delivery.link.current is not None:
        assert time.monotonic() < deadline, "the cut was not noticed"
        await asyncio.sleep(0.05)


async def enqueue(delivery: AmqpDelivery, **fields: Any) -> str:
    envelope, payload = make_job(CLOCK, **fields)
    [result] = await delivery.enqueue([(envelope, payload)])
    assert result.created and result.id == envelope.id
    return envelope.id


async def test_enqueued_jobs_are_reserved_once_with_their_payload(
    make_delivery: MakeDelivery,
) -> None:
    delivery = await make_delivery()
    jobs = [make_job(CLOCK, args=[i]) for i in range(20)]
    await delivery.enqueue(jobs)
    leases = await take(delivery, 20)
    assert sorted(lease.job_id for lease in leases) == sorted(e.id for e, _ in jobs)
    assert {lease.payload for lease in leases} == {payload for _, payload in jobs}
    assert {lease.attempt for lease in leases} == {1}
    assert await delivery.settle_many([Settlement.ack(x, None) for x in leases]) == [True] * 20
    await nothing_within(delivery, 0.3)


async def test_higher_priority_is_reserved_first_fifo_within_a_priority(
    make_delivery: MakeDelivery,
) -> None:
    producer = await make_delivery()
    order = [("low1", -3), ("high", 4), ("mid1", 0), ("low2", -3), ("mid2", 0)]
    ids = {name: await enqueue(producer, priority=p) for name, p in order}
    consumer = await make_delivery()
    leases = await take(consumer, 5)
    names = {v: k for k, v in ids.items()}
    assert [names[lease.job_id] for lease in leases] == ["high", "mid1", "mid2", "low1", "low2"]


#: A worker that holds one job and never settles it, until it is killed.
HOLDER = """
import asyncio, sys
from offload.brokers import from_url
from offload.brokers.amqp import AmqpDelivery
from offload.brokers.composite import Composite

async def main():
    delivery = AmqpDelivery(sys.argv[1])
    while not (leases := await delivery.reserve(("default",), worker_id="x", lease_s=30, limit=1)):
        await delivery.wait(("default",), 0.2)
    print(leases[0].job_id, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_consumers_job_goes_to_another_with_the_attempt_counted(
    make_delivery: MakeDelivery, amqp_url: str
) -> None:
    producer = await make_delivery()
    job_id = await enqueue(producer)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, amqp_url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        assert line.decode().strip() == job_id
        other = await make_delivery()
        await nothing_within(other, 0.5)  # held by the living worker: nobody else gets it
        holder.kill()  # kill -9: no goodbye to RabbitMQ
        [again] = await take(other, 1)
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()
    assert (again.job_id, again.attempt) == (job_id, 2)


async def test_a_lease_ends_with_its_connection(make_delivery: MakeDelivery) -> None:
    delivery = await make_delivery()
    await enqueue(delivery)
    [lease] = await take(delivery, 1)
    session = delivery.link.current
    assert session is not None
    await session.connection.close()
    assert await delivery.extend([lease], 30) == [False]
    assert await delivery.settle_many([Settlement.ack(lease, None)]) == [False]
    with pytest.raises(LeaseLost):
        await delivery.bury(lease, error=BOOM)
    # RabbitMQ requeued the job; delivered to this process again (which reconnects on
    # its next call), it is acknowledged unrun: its run ended here (the ack above)
    await nothing_within(delivery, 1.0)
    other = await make_delivery()
    await nothing_within(other, 0.5)  # and nobody else gets it either: it was acked


async def test_extend_holds_while_the_delivery_is_held_and_ack_ends_it(
    make_delivery: MakeDelivery,
) -> None:
    delivery = await make_delivery()
    await enqueue(delivery)
    [lease] = await take(delivery, 1)
    other = await make_delivery()
    await nothing_within(other, 0.3)  # held: nobody else gets it
    assert await delivery.extend([lease], 30) == [True]
    assert await delivery.settle_many([Settlement.ack(lease, None)]) == [True]
    assert await delivery.extend([lease], 30) == [False]
    with pytest.raises(LeaseLost):
        await delivery.retry(lease, at=CLOCK.now(), error=BOOM)


async def test_a_retry_waits_in_a_delay_bucket_and_counts_the_attempt(
    make_delivery: MakeDelivery,
) -> None:
    delivery = await make_delivery()
    job_id = await enqueue(delivery)
    [lease] = await take(delivery, 1)
    due = CLOCK.now() + 0.6
    await delivery.retry(lease, at=due, error=BOOM)
    [again] = await take(delivery, 1)
    assert CLOCK.now() >= due - 0.002
    assert (again.job_id, again.attempt) == (job_id, 2)


async def test_a_delayed_job_hops_through_buckets_and_starts_on_time(
    make_delivery: MakeDelivery,
) -> None:
    delivery = await make_delivery()
    due = CLOCK.now() + 0.9  # buckets of 512, 256 and 128 ms, the rest held
    job_id = await enqueue(delivery, not_before=due)
    await nothing_within(delivery, 0.5)
    [lease] = await take(delivery, 1)
    assert CLOCK.now() >= due - 0.002
    assert CLOCK.now() < due + 1.0
    assert (lease.job_id, lease.attempt) == (job_id, 1)


async def test_defer_and_release_do_not_count_the_attempt(make_delivery: MakeDelivery) -> None:
    delivery = await make_delivery()
    await enqueue(delivery)
    [lease] = await take(delivery, 1)
    await delivery.defer(lease, at=CLOCK.now() + 0.2)
    [deferred] = await take(delivery, 1)
    assert deferred.attempt == 1
    await delivery.release([deferred])
    await delivery.close()  # as a stopping worker does; what it had prefetched goes back too
    other = await make_delivery()
    [released] = await take(other, 1)
    assert released.attempt == 1


async def test_bury_moves_the_job_to_the_dead_letter_queue_with_its_reason(
    make_delivery: MakeDelivery, amqp_url: str
) -> None:
    delivery = await make_delivery()
    job_id = await enqueue(delivery)
    [lease] = await take(delivery, 1)
    await delivery.bury(lease, error=BOOM)
    await nothing_within(delivery, 0.3)
    connection = await aiormq.connect(amqp_url.partition("?")[0])
    try:
        channel = await connection.channel()
        message = await channel.basic_get(delivery.names.dead("default"), no_ack=True)
    finally:
        await connection.close()
    headers = message.header.properties.headers or {}
    assert message.header.properties.message_id == job_id
    assert message.body == lease.payload
    assert decode_error(headers[ERROR_HEADER]) == BOOM  # type: ignore[arg-type]
    assert headers[ATTEMPT_HEADER] == 1


async def test_prefetch_bounds_the_jobs_a_consumer_holds(make_delivery: MakeDelivery) -> None:
    producer = await make_delivery()
    await producer.enqueue([make_job(CLOCK) for _ in range(6)])
    greedy = await make_delivery(prefetch="2")
    first = await take(greedy, 2)
    await asyncio.sleep(0.3)
    assert await greedy.reserve(("default",), worker_id="w", lease_s=30, limit=10) == []
    other = await make_delivery(prefetch="10")
    assert len(await take(other, 4)) == 4
    assert await greedy.settle_many([Settlement.ack(x, None) for x in first]) == [True, True]


async def test_a_job_past_its_expiry_is_not_run(make_delivery: MakeDelivery) -> None:
    delivery = await make_delivery()
    await enqueue(delivery, expires_at=CLOCK.now() + 0.1)
    live = await enqueue(delivery, expires_at=CLOCK.now() + 60)
    await asyncio.sleep(0.3)
    [lease] = await take(delivery, 1)
    assert lease.job_id == live
    assert delivery.expired == 1


async def test_each_worker_reserves_only_its_queues(make_delivery: MakeDelivery) -> None:
    delivery = await make_delivery()
    in_q1 = await enqueue(delivery, queue="q1")
    in_q2 = await enqueue(delivery, queue="q2")
    [first] = await take(delivery, 1, queues=("q2",))
    assert (first.job_id, first.queue) == (in_q2, "q2")
    [second] = await take(delivery, 1, queues=("q1", "q2"))
    assert (second.job_id, second.queue) == (in_q1, "q1")


async def test_one_settle_many_call_ends_leases_in_every_way(
    make_delivery: MakeDelivery,
) -> None:
    delivery = await make_delivery()
    ids = [await enqueue(delivery, args=[i]) for i in range(5)]
    leases = {lease.job_id: lease for lease in await take(delivery, 5)}
    now = CLOCK.now()
    acked, retried, buried, deferred, cancelled = (leases[i] for i in ids)
    stale = Lease(acked.job_id, "0.0", "default", 1, now, b"")
    done = await delivery.settle_many(
        [
            Settlement.ack(acked, b"1"),
            Settlement.retry(retried, at=now, error=BOOM),
            Settlement.bury(buried, error=BOOM),
            Settlement.defer(deferred, at=now),
            Settlement.cancel(cancelled, error=BOOM),
            Settlement.ack(stale, None),
        ]
    )
    assert done == [True, True, True, True, True, False]
    again = {lease.job_id: lease.attempt for lease in await take(delivery, 2)}
    assert again == {retried.job_id: 2, deferred.job_id: 1}
    await nothing_within(delivery, 0.3)


async def test_without_a_store_amqp_stands_alone_and_refuses_what_needs_one_before_sending(
    make_delivery: MakeDelivery, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    whole = from_url(amqp_url.replace("guest:guest", "guest:s3cret"))
    assert isinstance(whole, Composite) and isinstance(whole.inspection, Stateless)
    assert "s3cret" not in repr(whole)
    delivery = await make_delivery()
    keyed = make_job(CLOCK, key="k")
    step = make_job(CLOCK, then=[Step(id=new_job_id(), task="next")])
    for jobs, max_depth, what in (
        ([keyed], None, "the idempotency key"),
        ([step], None, "a workflow"),
        ([make_job(CLOCK)], 10, "max_depth"),
    ):
        with pytest.raises(ConfigurationError, match=f"{what}.*needs a state store on amqp://"):
            await delivery.enqueue([make_job(CLOCK), *jobs], max_depth=max_depth)
    await nothing_within(delivery, 0.3)  # nothing of a refused call was sent


async def test_a_job_nearing_the_consumer_timeout_is_warned_about_once(
    make_delivery: MakeDelivery, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = await make_delivery(consumer_timeout="10")
    await enqueue(delivery)
    [lease] = await take(delivery, 1)
    assert await delivery.extend([lease], 2) == [True]
    assert "consumer_timeout" not in caplog.text
    assert await delivery.extend([lease], 9) == [True]  # the next heartbeat may be too late
    assert await delivery.extend([lease], 9) == [True]
    warnings = [r for r in caplog.records if "consumer_timeout" in r.getMessage()]
    assert len(warnings) == 1
    assert lease.job_id in warnings[0].getMessage()


async def test_a_state_stores_copy_carries_its_stamp_and_no_headers_or_body(
    make_delivery: MakeDelivery, amqp_url: str
) -> None:
    """The stamp travels as the `correlation_id`, so a copy has no header table for
    every consumer to decode, and no body (the store's claim gives the payload); a copy
    stamped by an earlier version (an `offload-stamp` header, still in a queue at an
    upgrade) is read too."""
    delivery = await make_delivery()
    envelope, payload = make_job(CLOCK)
    await delivery.publish([Outgoing(envelope.id, "default", 0, payload, "s-new")])
    await delivery.link.publish(
        payload,
        routing_key=delivery.names.work("default"),
        properties=spec.Basic.Properties(
            message_id=envelope.id, headers={ATTEMPT_HEADER: 0, STAMP_HEADER: "s-old"}
        ),
    )
    leases = await take(delivery, 2)
    assert [lease.stamp for lease in leases] == ["s-new", "s-old"]
    await delivery.release(leases)  # published again: the stamps kept, no headers
    await delivery.close()
    connection = await aiormq.connect(amqp_url.partition("?")[0])
    try:
        channel = await connection.channel()
        copies = [
            await channel.basic_get(delivery.names.work("default"), no_ack=True) for _ in "ab"
        ]
    finally:
        await connection.close()
    properties = {str(copy.header.properties.correlation_id): copy for copy in copies}
    assert sorted(properties) == ["s-new", "s-old"]
    assert [copy.header.properties.headers for copy in copies] == [None, None]
    assert properties["s-new"].body == b""  # the store gives the payload at the claim


async def test_a_new_jobs_message_has_no_header_table_and_runs_as_attempt_one(
    make_delivery: MakeDelivery, amqp_url: str
) -> None:
    """A job due now, without expiry, is published with no headers (attempt 0 is what an
    absent header reads as): one table fewer for every consumer and for RabbitMQ."""
    producer = await make_delivery()
    looked_at = await enqueue(producer)
    connection = await aiormq.connect(amqp_url.partition("?")[0])
    try:
        channel = await connection.channel()
        message = await channel.basic_get(producer.names.work("default"), no_ack=True)
    finally:
        await connection.close()
    assert message.header.properties.message_id == looked_at
    assert message.header.properties.headers is None
    job_id = await enqueue(producer)
    [lease] = await take(await make_delivery(), 1)
    assert (lease.job_id, lease.attempt) == (job_id, 1)


async def test_an_idle_consumers_wait_for_work_returns_the_job_that_woke_it(
    make_delivery: MakeDelivery,
) -> None:
    """RabbitMQ pushes the job to the waiting consumer, so `wait_for_work` leases it in
    the same call, instead of returning empty for the worker's next turn to take it."""
    consumer, producer = await make_delivery(), await make_delivery()

    def wait_for_work(timeout_s: float) -> Awaitable[list[Lease]]:
        return consumer.wait_for_work(
            ("default",), timeout_s, worker_id="w", lease_s=30.0, limit=10
        )

    assert await wait_for_work(0.05) == []  # consuming now
    waiting = asyncio.ensure_future(wait_for_work(10.0))
    await asyncio.sleep(0.1)
    job_id = await enqueue(producer)
    leases = await asyncio.wait_for(waiting, 5)
    assert [lease.job_id for lease in leases] == [job_id]
    assert await consumer.settle_many([Settlement.ack(leases[0], None)]) == [True]


async def test_an_idle_consumer_is_handed_the_job_by_its_callback_without_a_reserve(
    make_delivery: MakeDelivery,
) -> None:
    """An idle `wait_for_work` is the taker: the consumer callback leases the job it
    received and hands it over, so no `reserve` runs between the delivery and the
    worker (one loop turn instead of a wake-up, a task and a reserve)."""
    consumer, producer = await make_delivery(), await make_delivery()
    assert (
        await consumer.wait_for_work(("default",), 0.05, worker_id="w", lease_s=30.0, limit=10)
        == []
    )  # consuming now
    reserves: list[int] = []
    reserve = consumer.reserve

    async def counted(queues: Sequence[str], **kwargs: Any) -> list[Lease]:
        leases = await reserve(queues, **kwargs)
        reserves.append(len(leases))
        return leases

    consumer.reserve = counted  # type: ignore[method-assign]
    waiting = asyncio.ensure_future(
        consumer.wait_for_work(("default",), 10.0, worker_id="w", lease_s=30.0, limit=10)
    )
    await asyncio.sleep(0.1)
    job_id = await enqueue(producer)
    leases = await asyncio.wait_for(waiting, 5)
    assert [lease.job_id for lease in leases] == [job_id]
    assert reserves == [0]  # the one before the wait, none after it
    assert await consumer.settle_many([Settlement.ack(leases[0], None)]) == [True]


async def test_the_consumer_callback_hands_a_job_over_in_the_readers_own_loop_turn(
    make_delivery: MakeDelivery,
) -> None:
    """aiormq runs what the callback returns as a task, a loop turn later: the callback
    must hand the job to the waiting worker when called, not in that task."""
    consumer = await make_delivery()
    await consumer.wait_for_work(("default",), 0.05, worker_id="w", lease_s=30.0, limit=10)
    waiting = asyncio.ensure_future(
        consumer.wait_for_work(("default",), 10.0, worker_id="w", lease_s=30.0, limit=10)
    )
    await asyncio.sleep(0.1)
    session = consumer.link.current
    assert session is not None
    message = aiormq.abc.DeliveredMessage(
        delivery=spec.Basic.Deliver(consumer_tag="t", delivery_tag=10_000, routing_key="r"),
        header=ContentHeader(properties=spec.Basic.Properties(message_id="job-1")),
        body=b"{}",
        channel=session.consumer,
    )
    receive = consumer._receiver("default", session.generation)
    returned = receive(message)
    assert consumer._taker is None and len(consumer._held) == 1  # leased and handed
    await returned
    [lease] = await waiting
    assert lease.job_id == "job-1"


async def test_an_idle_consumer_woken_by_a_job_to_check_first_reserves_it(
    make_delivery: MakeDelivery,
) -> None:
    """A delivery that needs a look before it runs (here: an expiry header) is not
    handed over from the callback: it wakes the taker, whose `reserve` checks it."""
    consumer, producer = await make_delivery(), await make_delivery()
    await consumer.wait_for_work(("default",), 0.05, worker_id="w", lease_s=30.0, limit=10)
    waiting = asyncio.ensure_future(
        consumer.wait_for_work(("default",), 10.0, worker_id="w", lease_s=30.0, limit=10)
    )
    await asyncio.sleep(0.1)
    live = await enqueue(producer, expires_at=CLOCK.now() + 60)
    leases = await asyncio.wait_for(waiting, 5)
    assert [lease.job_id for lease in leases] == [live]
    waiting = asyncio.ensure_future(
        consumer.wait_for_work(("default",), 0.5, worker_id="w", lease_s=30.0, limit=10)
    )
    await asyncio.sleep(0.1)
    await enqueue(producer, expires_at=CLOCK.now() - 1)  # expired: acked, not run
    assert await asyncio.wait_for(waiting, 5) == []
    assert consumer.expired == 1


async def test_acks_settled_one_by_one_go_out_together_in_one_frame(
    make_delivery: MakeDelivery,
) -> None:
    """Jobs settled in separate calls within the linger share a `multiple` ack frame
    (`_acks.py`), and every one of them is acknowledged: none comes back once the
    connection is gone."""
    delivery = await make_delivery()
    await delivery.enqueue([make_job(CLOCK, args=[i]) for i in range(20)])
    leases = await take(delivery, 20)
    session = delivery.link.current
    assert session is not None
    sent: list[tuple[int, bool]] = []
    basic_ack = session.consumer.basic_ack

    async def counted(tag: int, multiple: bool = False, wait: bool = True) -> None:
        sent.append((tag, multiple))
        await basic_ack(tag, multiple=multiple, wait=wait)

    session.consumer.basic_ack = counted  # type: ignore[method-assign,assignment]
    for lease in leases:
        assert await delivery.settle_many([Settlement.ack(lease, None)]) == [True]
    await asyncio.sleep(0.1)
    assert len(sent) == 1 and sent[0][1]
    await asyncio.sleep(0.1)  # the frame reaches RabbitMQ before the connection ends
    await session.connection.close()
    await nothing_within(await make_delivery(), 0.3)


async def test_close_sends_the_acks_still_waiting(make_delivery: MakeDelivery) -> None:
    delivery = await make_delivery()
    await enqueue(delivery)
    [lease] = await take(delivery, 1)
    assert await delivery.settle_many([Settlement.ack(lease, None)]) == [True]
    await delivery.close()  # at once: the ack still waits for others
    await nothing_within(await make_delivery(), 0.3)


async def test_an_unknown_vhost_is_a_configuration_error_naming_it(amqp_server: str) -> None:
    """RabbitMQ answers the open of a vhost that does not exist with Connection.Close;
    the worker and the CLI showed aiormq's traceback ("Expected one of
    ['Connection.OpenOk']"), not what is wrong."""
    url = amqp_server.rstrip("/") + "/no-such-vhost-here"
    delivery = AmqpDelivery(url)
    try:
        with pytest.raises(ConfigurationError, match="vhost 'no-such-vhost-here'"):
            await delivery.connect()
    finally:
        await delivery.close()


async def test_a_connection_the_server_closes_is_one_warning_without_a_traceback(
    make_delivery: MakeDelivery, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """README (Guarantees, broker outages): a cut connection is one line. aiormq logged
    an ERROR and a WARNING with its reader's traceback beside offload's own warning."""
    import logging

    prefix = amqp_url.partition("prefix=")[2]
    delivery = await make_delivery()
    with caplog.at_level(logging.INFO):
        assert await asyncio.to_thread(close_connections, prefix) == 1
        deadline = time.monotonic() + 10
        while "RabbitMQ connection lost" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        await delivery.link.session()  # the next call reconnects
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in loud] == ["offload.brokers.amqp"], caplog.text
    assert "Traceback" not in caplog.text


async def test_a_job_delivered_again_while_this_process_runs_it_is_kept_not_leased_twice(
    make_delivery: MakeDelivery, amqp_url: str
) -> None:
    """The connection a job was leased on ends while the job runs here: RabbitMQ
    requeues it and delivers it to this process again. That delivery is taken by the
    running lease (extending it says held, its ack acknowledges the new delivery),
    not leased a second time. A lease the worker released (it dropped the job before
    starting it) takes nothing: that job is leased again."""
    prefix = amqp_url.partition("prefix=")[2]
    delivery = await make_delivery()
    running_id = await enqueue(delivery)
    dropped_id = await enqueue(delivery)
    running, dropped = sorted(await take(delivery, 2), key=lambda x: x.job_id != running_id)
    assert (running.job_id, dropped.job_id) == (running_id, dropped_id)
    await cut(delivery, prefix)
    assert await delivery.extend([running, dropped], 30) == [False, False]
    await delivery.release([dropped])  # the worker's: it will not run that one
    [again] = await take(delivery, 1)  # reconnects; both jobs come back
    assert again.job_id == dropped_id and again.attempt == 2  # a crash, counted
    await nothing_within(delivery, 0.5)  # the running job is not leased twice
    assert await delivery.extend([running], 30) == [True]
    ok = await delivery.settle_many([Settlement.ack(running, None), Settlement.ack(again, None)])
    assert ok == [True, True]
    await nothing_within(delivery, 0.5)


async def test_a_job_that_ended_here_after_its_connection_was_cut_is_not_run_again_here(
    make_delivery: MakeDelivery, amqp_url: str
) -> None:
    """The job's run ends after its connection was cut and before RabbitMQ delivered it
    again: its ack never reached RabbitMQ (the settlement says so: False), which
    requeues it. Delivered to this process again, it is acknowledged unrun; a retry's
    copy of another job (a new attempt) still runs."""
    prefix = amqp_url.partition("prefix=")[2]
    delivery = await make_delivery()
    done_id = await enqueue(delivery)
    retried_id = await enqueue(delivery)
    done, retried = sorted(await take(delivery, 2), key=lambda x: x.job_id != done_id)
    # the retried job's first attempt ends before the cut: its copy (attempt 2) waits
    # in a delay bucket until after the cut (rabbitmqctl takes a second or two)
    retry = Settlement.retry(retried, at=CLOCK.now() + 6, error=BOOM)
    [ok] = await delivery.settle_many([retry])
    assert ok
    await cut(delivery, prefix)
    # the job ends now, on the dead session: its ack cannot be sent
    assert await delivery.settle_many([Settlement.ack(done, None)]) == [False]
    [again] = await take(delivery, 1)  # reconnects; the done job comes back too
    assert (again.job_id, again.attempt) == (retried_id, 2)
    await nothing_within(delivery, 1.0)  # the done job is acknowledged, not leased
    assert await delivery.settle_many([Settlement.ack(again, None)]) == [True]
    await nothing_within(delivery, 0.3)


async def test_jobs_prefetched_but_never_leased_come_back_after_a_cut_uncounted(
    make_delivery: MakeDelivery, amqp_url: str
) -> None:
    """RabbitMQ pushes jobs ahead (the prefetch); a cut connection requeues them all and
    marks them redelivered. Those this process never leased never ran: they come back
    with their attempt uncounted (counted, a job at its last attempt, e.g. every job
    of a `max_attempts=1` task, was buried unrun). The one it leased may have run: its
    crash is counted."""
    prefix = amqp_url.partition("prefix=")[2]
    delivery = await make_delivery()
    ids = [await enqueue(delivery) for _ in range(3)]
    [leased] = await take(delivery, 1)
    deadline = time.monotonic() + 10
    while len(delivery._ready) < 2:  # the other two are pushed here, unleased
        assert time.monotonic() < deadline, "the prefetch never arrived"
        await delivery.wait(("default",), 0.1)
    await cut(delivery, prefix)
    await delivery.release([leased])  # the worker's, for a lease it gives up unrun
    back = {lease.job_id: lease.attempt for lease in await take(delivery, 3)}
    assert back == {i: 2 if i == leased.job_id else 1 for i in ids}


async def test_jobs_due_in_the_same_millisecond_are_held_until_due_and_all_run(
    make_delivery: MakeDelivery,
) -> None:
    """A batch delayed alike (`enqueue_many` with one `delay`) comes back from its last
    delay bucket due in the same millisecond; the consumer holds each until it is due.
    Held as (due, delivery), two of them were compared themselves: a TypeError in every
    `reserve` from then on, and the batch stuck."""
    delivery = await make_delivery()
    due = CLOCK.now() + 0.5
    jobs = [make_job(CLOCK, args=[i], not_before=due) for i in range(5)]
    await delivery.enqueue(jobs)
    leases = await take(delivery, 5)
    assert sorted(lease.job_id for lease in leases) == sorted(e.id for e, _ in jobs)
