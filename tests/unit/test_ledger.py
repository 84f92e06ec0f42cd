"""A delivery-only broker with a state store (`Composite` over a `Ledger`): the store
learns of every job the delivery carries, decides which delivered copy runs, and never
runs or loses one itself.

The delivery is `DeliveryOnly` over one memory broker and the store is another broker
(memory, SQLite), so nothing is shared between them but what `Composite` passes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest

from offload.brokers import from_url
from offload.brokers.base import Broker, Lease, Settlement
from offload.brokers.composite import Composite, with_state_store
from offload.brokers.records import Outgoing
from offload.brokers.roles import PUBLISH_GRACE_S, Ledger
from offload.codec import encode_value
from offload.envelope import JobState
from offload.errors import BrokerUnavailable
from offload.testing import FakeClock
from tests.conformance.delivery_only import SEP, DeliveryOnly
from tests.conformance.helpers import BOOM, LEASE_S, enqueue_one, make_job, reserve_one


class Flaky(DeliveryOnly):
    """A delivery whose next `fail` publishes raise, as a broker going away would."""

    fail = 0

    async def publish(self, jobs: Sequence[Outgoing]) -> None:
        if self.fail:
            self.fail -= 1
            raise BrokerUnavailable("the queue is away")
        await super().publish(jobs)


@pytest.fixture(params=["memory", "sqlite"])
async def parts(
    request: pytest.FixtureRequest, broker_url: Callable[[str], str], clock: FakeClock
) -> AsyncIterator[tuple[Composite, Flaky, Broker]]:
    """The composite, its delivery and its state store, connected."""
    store = from_url(broker_url(request.param), clock=clock)
    delivery = Flaky(from_url("memory://", clock=clock))
    broker = with_state_store(delivery, store)
    assert isinstance(broker, Composite)
    await broker.connect()
    try:
        yield broker, delivery, store
    finally:
        await broker.close()


async def test_the_store_records_the_job_but_never_hands_it_out_itself(
    parts: tuple[Composite, Flaky, Broker],
) -> None:
    broker, delivery, store = parts
    job_id = await enqueue_one(broker, key="k1")
    info = await store.get_job(job_id)
    assert info is not None and info.state is JobState.QUEUED and info.key == "k1"
    assert await store.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=5) == []
    lease = await reserve_one(broker)
    assert (await store.get_job(job_id)).state is JobState.RUNNING  # type: ignore[union-attr]
    await broker.ack(lease, encode_value(42), result_ttl_s=None)
    done = await store.get_job(job_id)
    assert done is not None and done.state is JobState.SUCCEEDED and done.result is not None
    # the delivery's copy is gone too
    assert await delivery.inner.reserve(["default"], worker_id="x", lease_s=1, limit=5) == []


async def test_a_duplicate_key_is_not_published(parts: tuple[Composite, Flaky, Broker]) -> None:
    broker, delivery, _ = parts
    first, second = make_job(broker.clock, key="once"), make_job(broker.clock, key="once")
    results = await broker.enqueue([first, second])
    assert [r.created for r in results] == [True, False]
    copies = await delivery.inner.reserve(["default"], worker_id="x", lease_s=1, limit=5)
    assert [lease.job_id.partition(SEP)[0] for lease in copies] == [first[0].id]


async def test_a_failed_publish_keeps_the_job_and_publishes_it_after_the_grace(
    parts: tuple[Composite, Flaky, Broker], clock: FakeClock
) -> None:
    broker, delivery, store = parts
    delivery.fail = 1
    job_id = await enqueue_one(broker)  # durable in the store: the call succeeds
    assert (await store.get_job(job_id)).state is JobState.QUEUED  # type: ignore[union-attr]
    assert await broker.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=5) == []
    clock.advance(PUBLISH_GRACE_S + 1)
    lease = await reserve_one(broker)
    assert (lease.job_id, lease.attempt) == (job_id, 1)
    assert await broker.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=5) == []


async def test_a_confirmed_copy_is_not_published_again(
    parts: tuple[Composite, Flaky, Broker], clock: FakeClock
) -> None:
    broker, delivery, _ = parts
    await enqueue_one(broker)
    clock.advance(PUBLISH_GRACE_S + 1)
    await broker.reserve(["other"], worker_id="w", lease_s=LEASE_S, limit=5)  # runs `due`
    copies = await delivery.inner.reserve(["default"], worker_id="x", lease_s=1, limit=5)
    assert len(copies) == 1


async def test_a_stale_copy_is_dropped_unrun(
    parts: tuple[Composite, Flaky, Broker], clock: FakeClock
) -> None:
    broker, delivery, store = parts
    assert isinstance(store, Ledger)
    job_id = await enqueue_one(broker)
    [stale] = await delivery.inner.reserve(["default"], worker_id="x", lease_s=1, limit=1)
    await delivery.inner.release([stale])
    # the copy's stamp is no longer the job's: as after a publish the store made again
    [lease] = await store.claim(
        [replace(stale, job_id=job_id, stamp="0" * 16)], worker_id="w", lease_s=LEASE_S
    )
    assert lease is None
    real = await reserve_one(broker)
    assert real.job_id == job_id
    [again] = await store.claim(
        [replace(stale, job_id=job_id, stamp="0" * 16)], worker_id="w", lease_s=LEASE_S
    )
    assert again is None


async def test_a_copy_delivered_again_takes_the_job_back_with_the_attempt_counted(
    parts: tuple[Composite, Flaky, Broker], clock: FakeClock
) -> None:
    broker, _, store = parts
    job_id = await enqueue_one(broker)
    first = await reserve_one(broker, lease_s=5)
    clock.advance(6)  # the delivery's lease lapses: it hands the same copy out again
    # the store never takes a ledger job's lease back itself
    assert await store.reserve(["default"], worker_id="s", lease_s=LEASE_S, limit=5) == []
    assert (await store.get_job(job_id)).state is JobState.RUNNING  # type: ignore[union-attr]
    second = await reserve_one(broker, worker_id="w2")
    assert (second.job_id, second.attempt) == (job_id, 2)
    assert await broker.settle_many([_ack(first)]) == [False]
    assert await broker.extend([first], LEASE_S) == [False]
    assert await broker.settle_many([_ack(second)]) == [True]
    info = await store.get_job(job_id)
    assert info is not None and info.state is JobState.SUCCEEDED and info.attempt == 2


async def test_a_retry_waits_in_the_store_and_a_new_copy_runs_when_due(
    parts: tuple[Composite, Flaky, Broker], clock: FakeClock
) -> None:
    broker, delivery, store = parts
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)
    await broker.retry(lease, at=clock.now() + 60, error=BOOM)
    assert (await store.get_job(job_id)).state is JobState.SCHEDULED  # type: ignore[union-attr]
    assert await delivery.inner.reserve(["default"], worker_id="x", lease_s=1, limit=5) == []
    assert await broker.next_due(["default"]) == pytest.approx(clock.now() + 60)
    clock.advance(61)
    again = await reserve_one(broker)
    assert (again.job_id, again.attempt) == (job_id, 2)


async def test_a_cancelled_jobs_copy_is_dropped_unrun(
    parts: tuple[Composite, Flaky, Broker],
) -> None:
    broker, delivery, _ = parts
    job_id = await enqueue_one(broker)
    assert await broker.cancel(job_id)
    assert await broker.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=5) == []
    assert await delivery.inner.reserve(["default"], worker_id="x", lease_s=1, limit=5) == []


async def test_a_replayed_dead_letter_is_published_again(
    parts: tuple[Composite, Flaky, Broker],
) -> None:
    broker, _, _ = parts
    job_id = await enqueue_one(broker)
    await broker.bury(await reserve_one(broker), error=BOOM)
    assert await broker.replay_dead(job_ids=[job_id]) == 1
    again = await reserve_one(broker)
    assert (again.job_id, again.attempt) == (job_id, 1)


async def test_release_gives_the_job_back_to_both(
    parts: tuple[Composite, Flaky, Broker],
) -> None:
    broker, _, store = parts
    job_id = await enqueue_one(broker)
    await broker.release([await reserve_one(broker)])
    assert (await store.get_job(job_id)).state is JobState.QUEUED  # type: ignore[union-attr]
    again = await reserve_one(broker)
    assert (again.job_id, again.attempt) == (job_id, 1)


def _ack(lease: Lease) -> Settlement:
    return Settlement.ack(lease, None)


async def test_a_claim_gives_the_stores_payload_and_decides_copies_in_order(
    parts: tuple[Composite, Flaky, Broker],
) -> None:
    """A copy may travel without its body (RabbitMQ's do): the lease carries the payload
    the store holds. In one batch, a stale copy is refused and the same copy twice is
    claimed twice, the second taking the job back, as one claim after the other."""
    broker, delivery, store = parts
    assert isinstance(store, Ledger)
    envelope, payload = make_job(broker.clock)
    await broker.enqueue([(envelope, payload)])
    [copy] = await delivery.inner.reserve(["default"], worker_id="x", lease_s=60, limit=1)
    job_id, stamp = copy.job_id.split(SEP)
    bare = replace(copy, job_id=job_id, stamp=stamp, payload=b"")
    stale = replace(bare, stamp="0" * 16)
    first, refused, second = await store.claim([bare, stale, bare], worker_id="w", lease_s=LEASE_S)
    assert refused is None
    assert first is not None and second is not None
    assert (first.payload, second.payload) == (payload, payload)
    assert (first.attempt, second.attempt) == (1, 2)
    assert await store.settle_many([_ack(first), _ack(second)]) == [False, True]
    info = await store.get_job(job_id)
    assert info is not None and info.state is JobState.SUCCEEDED and info.attempt == 2
    counts = (await store.counts(["default"]))["default"].states
    assert counts.get(JobState.SUCCEEDED) == 1 and not counts.get(JobState.RUNNING)


async def test_a_reservation_claims_and_publishes_what_is_due_in_one_store_call(
    parts: tuple[Composite, Flaky, Broker], clock: FakeClock
) -> None:
    """When the due poll comes with deliveries to claim, one `claim_due` does both: the
    copy runs, and the retry that came due is published (it runs next)."""
    broker, _, store = parts
    assert isinstance(store, Ledger)
    retried = await enqueue_one(broker)
    await broker.retry(await reserve_one(broker), at=clock.now() + 10, error=BOOM)
    waiting = await enqueue_one(broker)
    clock.advance(11)  # the retry is due, and the due poll too
    calls: list[str] = []  # the composite's calls (not the store's own, within them)
    claim_due, due = store.claim_due, store.due

    async def counted_claim_due(*args: Any, **kwargs: Any) -> Any:
        calls.append("claim_due")
        depth = len(calls)
        try:
            return await claim_due(*args, **kwargs)
        finally:
            del calls[depth:]

    async def counted_due(*args: Any, **kwargs: Any) -> Any:
        calls.append("due")
        return await due(*args, **kwargs)

    store.claim_due, store.due = counted_claim_due, counted_due  # type: ignore[method-assign]
    [first] = await broker.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=1)
    assert first.job_id == waiting
    assert calls == ["claim_due"]
    [second] = await broker.reserve(["default"], worker_id="w", lease_s=LEASE_S, limit=1)
    assert (second.job_id, second.attempt) == (retried, 2)
