"""The delivery role (`offload.brokers.roles.Delivery`) on SQS, against moto's server:
each way a lease ends, leases held against other consumers, what needs a state store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from offload.brokers.records import Lease
from offload.brokers.roles import Settlement
from offload.brokers.sqs import SQSBroker
from offload.codec import decode_envelope, decode_error
from offload.errors import ConfigurationError, LeaseLost
from tests.conformance.helpers import BOOM, make_job

LEASE_S = 30.0


@pytest.fixture
async def broker(sqs_url: str) -> AsyncIterator[SQSBroker]:
    b = SQSBroker(sqs_url)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


async def enqueue(broker: SQSBroker, **fields: Any) -> str:
    envelope, payload = make_job(broker.clock, **fields)
    [result] = await broker.enqueue([(envelope, payload)])
    assert result.created and result.id == envelope.id
    return envelope.id


async def until_reserved(broker: SQSBroker, within: float = 30) -> Lease:
    """The next job reserved, polling (SQS's delays are whole seconds, and a loaded
    machine adds its own)."""
    deadline = broker.clock.now() + within
    while broker.clock.now() < deadline:
        got = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=1)
        if got:
            return got[0]
        await asyncio.sleep(0.3)
    raise AssertionError(f"nothing was reserved within {within} s")


async def test_a_job_is_reserved_whole_leased_and_hidden_from_other_workers(
    broker: SQSBroker, sqs_url: str
) -> None:
    job_id = await enqueue(broker, args=[1, "two"])
    now = broker.clock.now()
    [lease] = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=10)
    assert (lease.job_id, lease.queue, lease.attempt) == (job_id, "default", 1)
    assert decode_envelope(lease.payload).args == [1, "two"]
    assert now + LEASE_S - 1 <= lease.deadline <= broker.clock.now() + LEASE_S + 1
    async with SQSBroker(sqs_url) as other:
        assert await other.reserve(["default"], worker_id="w2", lease_s=LEASE_S, limit=10) == []
        assert await other.extend([lease], LEASE_S) == [False]  # not its lease
    assert await broker.extend([lease], LEASE_S) == [True]


async def test_ack_ends_the_job_and_a_second_settlement_of_the_lease_is_refused(
    broker: SQSBroker,
) -> None:
    await enqueue(broker)
    [lease] = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=1)
    await broker.ack(lease, b'"done"', result_ttl_s=None)
    with pytest.raises(LeaseLost):
        await broker.ack(lease, b'"done"', result_ttl_s=None)
    assert await broker.extend([lease], LEASE_S) == [False]
    await asyncio.sleep(0.1)
    assert await broker.reserve(["default"], worker_id="w1", lease_s=1, limit=1) == []


async def test_a_lease_within_a_second_of_its_deadline_is_not_settled_and_the_job_comes_back(
    broker: SQSBroker,
) -> None:
    # SQS hands the message out again at the deadline by itself, and a delete with the
    # old receipt "succeeds" without deleting it then: past it, no ack may count.
    assert broker.capabilities.lapsing_leases
    job_id = await enqueue(broker)
    [lease] = await broker.reserve(["default"], worker_id="w1", lease_s=2, limit=1)
    await asyncio.sleep(1.2)
    with pytest.raises(LeaseLost):
        await broker.ack(lease, b'"done"', result_ttl_s=None)
    assert await broker.extend([lease], LEASE_S) == [False]
    again = await until_reserved(broker)
    assert (again.job_id, again.attempt) == (job_id, 2)


async def test_a_copy_sqs_hands_out_again_while_its_lease_is_held_here_is_not_leased_twice(
    broker: SQSBroker,
) -> None:
    # SQS delivers at least once: a message may reach a second receive while the first
    # still holds it (moto does it under concurrent receives, about once per 500).
    # Made visible again here by hand, as that duplicate would be.
    job_id = await enqueue(broker)
    [lease] = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=1)
    [message] = broker._held.values()
    await broker.sqs.client.call(
        "change_message_visibility",
        QueueUrl=message.queue_url,
        ReceiptHandle=message.receipt,
        VisibilityTimeout=0,
    )
    assert await broker.reserve(["default"], worker_id="w2", lease_s=LEASE_S, limit=1) == []
    await broker.ack(lease, None, result_ttl_s=None)  # the first lease still settles
    assert lease.job_id == job_id


async def test_a_new_message_of_a_held_job_is_leased_at_once_without_a_store(
    broker: SQSBroker,
) -> None:
    # A retry due now sends the job's next message before deleting the one held here:
    # another task of this worker may receive it in between. It is another copy (not
    # SQS delivering one message twice), so it runs now, not after the old lease.
    await enqueue(broker)
    [lease] = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=1)
    [message] = broker._held.values()
    await broker.sqs.send([message.outgoing(attempt=1, due=None)])
    [again] = await broker.reserve(["default"], worker_id="w2", lease_s=LEASE_S, limit=1)
    assert (again.job_id, again.attempt) == (lease.job_id, 2)


async def test_retry_brings_the_job_back_at_its_time_with_the_attempt_counted(
    broker: SQSBroker,
) -> None:
    job_id = await enqueue(broker)
    [lease] = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=1)
    at = broker.clock.now() + 4
    await broker.retry(lease, at=at, error=BOOM)
    assert await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=1) == []
    again = await until_reserved(broker)
    assert broker.clock.now() >= at
    assert (again.job_id, again.attempt) == (job_id, 2)


async def test_defer_brings_the_job_back_without_counting_the_attempt(broker: SQSBroker) -> None:
    job_id = await enqueue(broker)
    [lease] = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=1)
    at = broker.clock.now() + 1.2
    await broker.defer(lease, at=at)
    again = await until_reserved(broker)
    assert broker.clock.now() >= at
    assert (again.job_id, again.attempt) == (job_id, 1)


async def test_release_gives_unstarted_jobs_back_at_once_uncounted(broker: SQSBroker) -> None:
    ids = {await enqueue(broker) for _ in range(3)}
    leases = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=3)
    await broker.release(leases)
    again = await broker.reserve(["default"], worker_id="w2", lease_s=LEASE_S, limit=3)
    assert {lease.job_id for lease in again} == ids
    assert {lease.attempt for lease in again} == {1}


async def test_bury_parks_the_job_in_the_dead_letter_queue_with_the_reason(
    broker: SQSBroker,
) -> None:
    job_id = await enqueue(broker)
    [lease] = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=1)
    await broker.bury(lease, error=BOOM)
    [dead] = await broker.sqs.dead("default")
    assert dead.job_id == job_id
    assert decode_error(dead.error) == BOOM
    assert await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=1) == []


async def test_one_settle_many_call_ends_leases_every_way_each_on_its_own(
    broker: SQSBroker,
) -> None:
    for _ in range(5):
        await enqueue(broker)
    leases = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=5)
    assert len(leases) == 5
    at = broker.clock.now() + 60
    a, b, c, d, e = leases
    await broker.ack(e, None, result_ttl_s=None)  # settled already: refused below
    held = await broker.settle_many(
        [
            Settlement.ack(a, b"1"),
            Settlement.retry(b, at=at, error=BOOM),
            Settlement.bury(c, error=BOOM),
            Settlement.cancel(d, error=BOOM),
            Settlement.ack(e, b"1"),
        ]
    )
    assert held == [True, True, True, True, False]
    assert [m.job_id for m in await broker.sqs.dead("default")] == [c.job_id]
    depth = await broker.sqs.depth("default")
    assert depth["delayed"] == 1  # the retry, due in a minute


async def test_a_lease_that_lapsed_is_not_extended_and_the_job_runs_again_elsewhere(
    broker: SQSBroker, sqs_url: str
) -> None:
    job_id = await enqueue(broker)
    [lease] = await broker.reserve(["default"], worker_id="w1", lease_s=1, limit=1)
    await asyncio.sleep(1.5)
    assert await broker.extend([lease], LEASE_S) == [False]
    async with SQSBroker(sqs_url) as other:
        [again] = await other.reserve(["default"], worker_id="w2", lease_s=LEASE_S, limit=1)
    assert (again.job_id, again.attempt) == (job_id, 2)


async def test_keys_and_bounded_queues_need_a_state_store_and_say_which_setting(
    broker: SQSBroker,
) -> None:
    keyed = make_job(broker.clock, key="once")
    with pytest.raises(ConfigurationError, match=r"idempotency key.*state= in the sqs:// URL"):
        await broker.enqueue([make_job(broker.clock), keyed])
    with pytest.raises(ConfigurationError, match=r"max_depth.*state= in the sqs:// URL"):
        await broker.enqueue([make_job(broker.clock)], max_depth=10)
    assert await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=10) == []


async def test_a_job_received_after_it_expired_is_dropped_unrun_and_logged(
    broker: SQSBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a store nothing records the expiry, so the log line is an operator's
    only trace of a job that never ran (RabbitMQ alone logs it too); it was silent."""
    caplog.set_level(logging.INFO, logger="offload.brokers.sqs")
    gone = await enqueue(broker, expires_at=broker.clock.now() + 0.5)
    live = await enqueue(broker)
    await asyncio.sleep(1.0)
    leases = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=10)
    assert [lease.job_id for lease in leases] == [live]
    assert broker.expired == 1
    assert f"job {gone} expired before it ran" in caplog.text


async def test_wait_returns_when_a_job_arrives_and_reserve_hands_it_out(
    broker: SQSBroker, sqs_url: str
) -> None:
    await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=1)  # queue made
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = asyncio.create_task(broker.wait(["default"], 15))
    await asyncio.sleep(0.5)
    async with SQSBroker(sqs_url) as producer:
        job_id = await enqueue(producer)
    await waiting
    assert loop.time() - started < 8
    [lease] = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=1)
    assert lease.job_id == job_id


async def test_a_job_id_sent_twice_in_one_call_is_one_message(broker: SQSBroker) -> None:
    envelope, payload = make_job(broker.clock)
    results = await broker.enqueue([(envelope, payload), (envelope, payload)])
    assert [r.id for r in results] == [envelope.id, envelope.id]
    leases = await broker.reserve(["default"], worker_id="w1", lease_s=LEASE_S, limit=10)
    assert [lease.job_id for lease in leases] == [envelope.id]


async def test_without_a_state_store_sqs_answers_what_it_knows_and_refuses_the_rest_naming_state(
    sqs_url: str,
) -> None:
    from offload.brokers import from_url
    from offload.brokers.records import WorkerInfo
    from offload.brokers.roles import Broker
    from offload.envelope import JobState

    async with from_url(sqs_url) as whole:
        assert isinstance(whole, Broker)
        envelope, payload = make_job(whole.clock)
        await whole.enqueue([(envelope, payload), make_job(whole.clock)])
        [lease, other] = await whole.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=2)
        await whole.bury(lease, error=BOOM)
        # what the worker calls on every broker works
        await whole.register_worker(
            WorkerInfo(
                id="w", hostname="h", pid=1, queues=["default"], concurrency=1, started_at=0.0
            ),
            30,
        )
        assert await whole.cancel_requested([other]) == set()
        assert await whole.outbox() == []
        assert await whole.paused() == {}
        await whole.record_attempt(envelope.id, lease.token, b"{}", keep=10)
        await whole.sweep()
        # inspection from SQS's own (approximate) counts, and the dead-letter queue
        assert await whole.queues() == ["default"]
        stats = (await whole.counts())["default"].states
        assert (stats[JobState.RUNNING], stats[JobState.DEAD]) == (1, 1)
        assert await whole.replay_dead() == 1
        # what needs a state store says which setting gives one
        refusals = [
            whole.get_job(envelope.id),
            whole.find("k"),
            whole.cancel(envelope.id),
            whole.set_progress(envelope.id, b"1"),
            whole.take_rate("r", limit=1, per_s=1),
            whole.compare_and_set("schedule:x", None, "1", ttl_s=60),
            whole.join("g", "m", index=0, total=2, outcome=b"1"),
            whole.workers(),
            whole.set_paused("queue:default", True),
            whole.attempt_records(envelope.id),
        ]
        for call in refusals:
            with pytest.raises(ConfigurationError, match=r"needs a state store.*state= in the"):
                await call
