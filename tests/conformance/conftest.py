"""The suite's fixtures, one per part of the contract it checks.

`delivery` is every full broker (`BROKER_NAMES`) and every broker that can only deliver
(`DELIVERY_ONLY_NAMES`, alone): the tests that take it need nothing but the `Delivery`
role (`offload.brokers.roles`), so a message-queue broker runs them before it has a
state store. `broker` is every full broker, and every delivery-only broker made whole
with a state store (`COMPOSED_NAMES`): the tests that take it need every role.

`delivery_only` is `DeliveryOnly` (this package) over memory: it proves that the
suite's delivery part needs no other role. `composite` and `composite_memory` are a
`Composite` of `DeliveryOnly` over one broker (memory) and a state store that is
another (SQLite, memory): the store learns of every job only through its `Ledger`
role, so they prove that a delivery-only broker with a state store keeps the whole
contract (results, cancels, keys, inspection) and not just delivery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from offload.brokers import from_url
from offload.brokers.base import Broker, Lease
from offload.brokers.composite import Composite, with_state_store
from offload.brokers.roles import Delivery, Ledger
from offload.testing import FakeClock
from tests.conftest import AMQP_TEST_QUEUES, BROKER_NAMES

from .delivery_only import DeliveryOnly

#: Brokers that can only deliver, run alone by the tests that take `delivery`.
DELIVERY_ONLY_NAMES = ["delivery_only"]
#: RabbitMQ (`amqp://`) with a state store: `amqp_<store>`.
AMQP_NAMES = ["amqp_sqlite", "amqp_memory"]
#: SQS (`sqs://`, moto's server) with a state store: `sqs_<store>` (`sqs_fake_time.py`).
SQS_NAMES = ["sqs_sqlite", "sqs_memory"]
#: Delivery-only brokers with a state store, run by every test that takes `broker`.
COMPOSED_NAMES = ["composite", "composite_memory", *AMQP_NAMES, *SQS_NAMES]
#: How long `Pushed.reserve` waits for deliveries still on their way, in seconds.
PUSH_GRACE_S = 0.3


class Pushed(Composite):
    """RabbitMQ with its state store, for the suite: `reserve` waits up to
    `PUSH_GRACE_S` for the jobs it lacks.

    RabbitMQ pushes messages to a consumer: a job whose publish was confirmed is not
    yet in the worker's hands (a worker waits for it with `wait`; the suite's tests
    reserve at once, as a database broker allows). So a reservation here waits for
    pushes still on their way, and a short pause after each lets a burst arrive
    whole, so that priorities sort among all of it.
    """

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        leases: list[Lease] = []
        deadline = time.monotonic() + PUSH_GRACE_S
        while True:
            leases += await super().reserve(
                queues, worker_id=worker_id, lease_s=lease_s, limit=limit - len(leases)
            )
            if len(leases) >= limit or time.monotonic() >= deadline:
                return leases
            await self.delivery.wait(queues, 0.05)
            await asyncio.sleep(0.02)


def _amqp(url: str, store: Broker, clock: FakeClock) -> Broker:
    """RabbitMQ's delivery at `url` with `store`, as `from_url` would make it (but
    `Pushed`)."""
    from offload.brokers.amqp import AmqpDelivery

    delivery = AmqpDelivery(url, clock=clock)
    assert isinstance(store, Ledger)
    delivery.attach_state(store)
    return Pushed(delivery, flow=store, inspection=store, fleet=store, signals=store, ledger=store)


async def _delete_queues(url: str, queues: Sequence[str]) -> None:
    """Delete the AMQP queues of these offload queues (those `amqp_url` does not
    know of: its teardown deletes the prefix's exchanges and `AMQP_TEST_QUEUES`)."""
    import aiormq

    from offload.brokers.amqp.settings import parse_url
    from offload.brokers.amqp.topology import Names

    settings = parse_url(url)
    names = Names(settings.prefix)
    connection = await aiormq.connect(settings.connect_url)
    try:
        channel = await connection.channel()
        for queue in set(queues) - set(AMQP_TEST_QUEUES):
            await channel.queue_delete(names.work(queue))
            await channel.queue_delete(names.dead(queue))
    finally:
        await connection.close()


def _build(
    request: pytest.FixtureRequest, broker_url: Callable[[str], str], clock: FakeClock
) -> Delivery:
    name: str = request.param
    if name == "delivery_only":
        return DeliveryOnly(from_url("memory://", clock=clock))
    if name in ("composite", "composite_memory"):
        store = from_url(broker_url("sqlite" if name == "composite" else "memory"), clock=clock)
        return with_state_store(DeliveryOnly(from_url("memory://", clock=clock)), store)
    if name in AMQP_NAMES:
        store = from_url(broker_url(name.removeprefix("amqp_")), clock=clock)
        return _amqp(str(request.getfixturevalue("amqp_url")), store, clock)
    if name in SQS_NAMES:
        from .sqs_fake_time import FakeTimeSQS

        store = from_url(broker_url(name.removeprefix("sqs_")), clock=clock)
        return with_state_store(FakeTimeSQS(request.getfixturevalue("sqs_url"), clock=clock), store)
    return from_url(broker_url(name), clock=clock)


@pytest.fixture(params=BROKER_NAMES + COMPOSED_NAMES)
async def broker(
    request: pytest.FixtureRequest, broker_url: Callable[[str], str], clock: FakeClock
) -> AsyncIterator[Broker]:
    """A connected whole broker of each kind, driven by the test's FakeClock."""
    b = _build(request, broker_url, clock)
    assert isinstance(b, Broker)
    await b.connect()
    try:
        yield b
    finally:
        queues = await b.queues() if isinstance(b, Pushed) else []
        await b.close()
        if queues:
            await _delete_queues(b.url, queues)


@pytest.fixture(params=BROKER_NAMES + DELIVERY_ONLY_NAMES)
async def delivery(
    request: pytest.FixtureRequest, broker_url: Callable[[str], str], clock: FakeClock
) -> AsyncIterator[Delivery]:
    """A connected broker of each kind, as its `Delivery` role only."""
    d = _build(request, broker_url, clock)
    await d.connect()
    try:
        yield d
    finally:
        await d.close()
