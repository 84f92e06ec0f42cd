"""`sqs://…?state=sqlite:///…` end to end through `Offload` and a worker (moto's
server): results, keys, delays and cancels come from the state store while SQS
carries the copies; and what a state store changes in SQS's own queues."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from offload import JobState, Offload, Worker
from offload.brokers import from_url
from offload.brokers.composite import Composite
from offload.brokers.records import Lease
from offload.brokers.sqs import SQSBroker
from tests.conformance.helpers import make_job


@pytest.fixture
async def app(
    sqs_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Offload]:
    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    state = quote(f"sqlite:///{tmp_path / 'state.db'}", safe="")
    app = Offload(f"{sqs_url}&state={state}")
    try:
        yield app
    finally:
        await app.aclose()


async def test_a_worker_runs_jobs_whose_results_keys_and_delays_come_from_the_store(
    app: Offload,
) -> None:
    @app.task
    async def double(x: int) -> int:
        return 2 * x

    first = await double.options(key="k").enqueue_async(21)
    again = await double.options(key="k").enqueue_async(99)
    later = await double.options(delay=1.5).enqueue_async(5)
    doomed = await double.options(delay=60).enqueue_async(0)
    assert again.id == first.id  # the key is the store's
    assert await doomed.cancel_async()
    worker = Worker(app, concurrency=4, lease_s=10, poll_s=0.2)
    running = asyncio.create_task(worker.run())
    try:
        assert await first.result_async(timeout=30) == 42
        assert await later.result_async(timeout=30) == 10
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
    info = await first.info_async()
    assert (info.state, info.attempt) == (JobState.SUCCEEDED, 1)
    assert (await doomed.info_async()).state is JobState.CANCELLED


async def redrive_policy(broker: SQSBroker, queue: str) -> str | None:
    qs = await broker.sqs.topology.get(queue)
    answer = await broker.sqs.client.call(
        "get_queue_attributes", QueueUrl=qs.url, AttributeNames=["RedrivePolicy"]
    )
    policy = answer.get("Attributes", {}).get("RedrivePolicy")
    return None if policy is None else str(json.loads(policy)["maxReceiveCount"])


async def test_with_a_store_sqs_parks_no_message_itself_and_alone_it_does(
    app: Offload, sqs_url: str
) -> None:
    # With a store, a message SQS parked after `redrive` receives would leave the
    # store's job running for ever: the store buries such a job itself (WorkerLost).
    broker = await app.connected_broker()
    assert isinstance(broker, Composite) and isinstance(broker.delivery, SQSBroker)
    assert await redrive_policy(broker.delivery, "withstore") is None
    async with SQSBroker(sqs_url) as alone:
        assert await redrive_policy(alone, "alone") == "10"


async def test_a_copy_sqs_hands_to_two_processes_at_once_runs_in_one(
    sqs_url: str, tmp_path: Path
) -> None:
    # SQS delivers at least once: a copy may reach a second process while the first
    # runs it (moto does it under concurrent receives); made visible again here by
    # hand, as that duplicate would be. The store's claim alone would take the job back.
    state = f"sqlite:///{tmp_path / 'state.db'}"
    first, second = from_url(sqs_url, state_url=state), from_url(sqs_url, state_url=state)
    assert isinstance(first, Composite) and isinstance(first.delivery, SQSBroker)
    async with first, second:
        [created] = await first.enqueue([make_job(first.clock)])
        [lease] = await first.reserve(["default"], worker_id="a", lease_s=30, limit=1)
        [message] = first.delivery._held.values()
        await first.delivery.sqs.client.call(
            "change_message_visibility",
            QueueUrl=message.queue_url,
            ReceiptHandle=message.receipt,
            VisibilityTimeout=0,
        )
        assert await second.reserve(["default"], worker_id="b", lease_s=30, limit=1) == []
        assert await first.extend([lease], 30) == [True]  # still the first one's
        await first.ack(lease, None, result_ttl_s=None)
        info = await second.get_job(created.id)
        assert info is not None and (info.state, info.attempt) == (JobState.SUCCEEDED, 1)


async def test_a_fifo_queue_with_a_store_runs_its_jobs_in_enqueue_order(
    sqs_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store's copies go through a FIFO queue (group and deduplication ids set by
    # `publish`: SQS refuses a FIFO message without them), one at a time, in order.
    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    state = quote(f"sqlite:///{tmp_path / 'state.db'}", safe="")
    app = Offload(f"{sqs_url}&fifo=ordered&state={state}")
    ran: list[int] = []

    @app.task(queue="ordered")
    async def step(n: int) -> int:
        ran.append(n)
        return n

    jobs = [await step.enqueue_async(n) for n in range(12)]
    worker = Worker(app, queues=["ordered"], concurrency=1, lease_s=10, poll_s=0.2)
    running = asyncio.create_task(worker.run())
    try:
        assert [await job.result_async(timeout=30) for job in jobs] == list(range(12))
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
        await app.aclose()
    assert ran == list(range(12))


async def test_a_job_too_big_for_sqs_is_refused_before_the_store_records_any_of_its_batch(
    app: Offload,
) -> None:
    """The store used to record the batch first: the enqueue raised, yet every job of
    it stayed `queued` in the store, and each worker's `reserve` failed with the same
    SerializationError (a traceback) whenever `due` handed them out again, every 30 s,
    for ever."""
    from offload.errors import SerializationError

    @app.task(name="echo")
    def echo(text: str) -> str:
        return text

    small = echo.call("hi")
    big = echo.call("x" * 300_000)  # SQS takes 256 KiB
    with pytest.raises(SerializationError, match="over the queue's limit"):
        await echo.enqueue_many_async([small, big])
    broker = await app.connected_broker()
    assert (await broker.counts(["default"]))["default"].states.get(JobState.QUEUED, 0) == 0
    assert (await broker.list_jobs(limit=10)).items == []


async def test_a_stored_job_sqs_cannot_carry_is_buried_and_the_jobs_due_beside_it_run(
    sqs_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job the store holds but no SQS message can carry (here: `max_message_bytes`
    lowered while it waited; or one stored before enqueue checked the size) made
    every `reserve` that the store handed it to fail, with the jobs due beside it
    unsent, for ever. It is buried with the reason; the others are published."""
    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    state = quote(f"sqlite:///{tmp_path / 'state.db'}", safe="")
    before = from_url(f"{sqs_url}&state={state}")
    after = from_url(f"{sqs_url}&state={state}&max_message_bytes=1024")
    await before.connect()
    await after.connect()
    try:
        due = before.clock.now() + 1
        big, big_payload = make_job(before.clock, args=["x" * 2000], not_before=due)
        small, small_payload = make_job(before.clock, not_before=due)
        await before.enqueue([(big, big_payload), (small, small_payload)])
        await asyncio.sleep(1.2)
        leases: list[Lease] = []
        for _ in range(50):
            leases += await after.reserve(["default"], worker_id="w1", lease_s=30, limit=10)
            if leases:
                break
            await asyncio.sleep(0.1)
        assert [lease.job_id for lease in leases] == [small.id]
        dead = await after.get_job(big.id)
        assert dead is not None and dead.state is JobState.DEAD
        assert dead.error is not None and "over the queue's limit" in dead.error.message
    finally:
        await before.close()
        await after.close()
