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
contract (results, cancels, keys, inspection) and not just delivery. `amqp_sqlite` and
`amqp_postgres` are RabbitMQ with those state stores (`Pushed`: reservations wait a
moment for pushed deliveries); the tests that cannot apply to RabbitMQ are
`AMQP_NOT_APPLICABLE`, run as strict expected failures.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from urllib.parse import quote

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
AMQP_NAMES = ["amqp_sqlite", "amqp_postgres"]
#: SQS (`sqs://`, moto's server) with a state store: `sqs_<store>` (`sqs_fake_time.py`).
SQS_NAMES = ["sqs_sqlite", "sqs_postgres"]
#: Delivery-only brokers with a state store, run by every test that takes `broker`.
COMPOSED_NAMES = ["composite", "composite_memory", *AMQP_NAMES, *SQS_NAMES]
#: Why a lease never lapses on RabbitMQ.
_CONNECTION_LEASE = (
    "RabbitMQ: a lease is the unacknowledged delivery and ends with its connection "
    "(the copy is then delivered again), not at a deadline: a FakeClock cannot lapse it"
)
#: The tests that do not apply to RabbitMQ (run, and must fail: strict xfail), and why.
#: The README's RabbitMQ section lists them.
AMQP_NOT_APPLICABLE: dict[str, str] = {
    "test_lease_expiry_redelivers_job": _CONNECTION_LEASE,
    "test_stale_token_finish_raises_lease_lost": _CONNECTION_LEASE,
    "test_release_ignores_stale_leases": _CONNECTION_LEASE,
    "test_defer_with_stale_lease_raises_lease_lost": _CONNECTION_LEASE,
    "test_settle_many_settles_each_lease_on_its_own": _CONNECTION_LEASE,
    "test_settle_many_tells_a_stale_lease_from_the_current_one_of_the_same_job": (
        _CONNECTION_LEASE
    ),
    "test_history_shows_failures_the_lost_attempt_and_the_success": _CONNECTION_LEASE,
    "test_concurrent_reserves_lease_each_job_exactly_once": (
        "RabbitMQ: one consumer holds at most `prefetch` unacknowledged jobs (default "
        "twice the largest reserve limit, at least 16): reserving 500 without settling "
        "any gets the first 16"
    ),
    "test_list_jobs_finds_a_few_dead_or_running_jobs_among_thousands": (
        "RabbitMQ: priority orders the jobs not yet pushed to a worker; a job of higher "
        "priority enqueued after a worker prefetched its window runs after that window"
    ),
}


#: Why SQS cannot keep a lease past its deadline.
_LAPSING_LEASE = (
    "SQS: the visibility timeout lapses by itself (capabilities.lapsing_leases), so a "
    "lease past its deadline is never extended or settled, even if nobody took the job"
)
#: The tests that do not apply to SQS (strict xfail), and why; the README's SQS
#: section lists them.
SQS_NOT_APPLICABLE: dict[str, str] = {
    "test_extend_after_lapse_keeps_a_lease_nobody_took_back": _LAPSING_LEASE,
    "test_list_jobs_finds_a_few_dead_or_running_jobs_among_thousands": (
        "SQS has no priorities: a job of higher priority enqueued after a backlog was "
        "sent is received after it"
    ),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of `AMQP_NOT_APPLICABLE` / `SQS_NOT_APPLICABLE` strict xfail on
    RabbitMQ / SQS."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = "" if callspec is None else str(callspec.params.get("broker"))
        if name in AMQP_NAMES:
            table = AMQP_NOT_APPLICABLE
        elif name in SQS_NAMES:
            table = SQS_NOT_APPLICABLE
        else:
            continue
        reason = table.get(getattr(item, "originalname", item.name))
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


#: How long `Pushed.reserve` waits for deliveries still on their way, in seconds.
PUSH_GRACE_S = 0.3
#: The longest `Pushed.reserve` waits while deliveries keep arriving, in seconds.
PUSH_MAX_S = 5.0


class Pushed(Composite):
    """RabbitMQ with its state store, for the suite: `reserve` waits up to
    `PUSH_GRACE_S` for the jobs it lacks.

    RabbitMQ pushes messages to a consumer: a job whose publish was confirmed is not
    yet in the worker's hands (a worker waits for it with `wait`; the suite's tests
    reserve at once, as a database broker allows). So a reservation here waits for
    pushes still on their way, and a short pause after each lets a burst arrive
    whole, so that priorities sort among all of it. While deliveries keep coming the
    grace starts again (up to `PUSH_MAX_S` in all): on a loaded machine a burst of 33
    took longer than one grace to arrive.
    """

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        leases: list[Lease] = []
        start = time.monotonic()
        deadline = start + PUSH_GRACE_S
        while True:
            got = await super().reserve(
                queues, worker_id=worker_id, lease_s=lease_s, limit=limit - len(leases)
            )
            leases += got
            now = time.monotonic()
            if got:
                deadline = min(max(deadline, now + PUSH_GRACE_S), start + PUSH_MAX_S)
            if len(leases) >= limit or now >= deadline:
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


async def _delete_topology(url: str, queues: Sequence[str]) -> None:
    """Delete the AMQP queues of these offload queues and the prefix's exchanges."""
    import aiormq

    from offload.brokers.amqp.settings import parse_url
    from offload.brokers.amqp.topology import Names

    settings = parse_url(url)
    names = Names(settings.prefix)
    connection = await aiormq.connect(settings.connect_url)
    try:
        channel = await connection.channel()
        for queue in {*queues, *AMQP_TEST_QUEUES}:
            await channel.queue_delete(names.work(queue))
            await channel.queue_delete(names.dead(queue))
        await channel.exchange_delete(names.delay_exchange)
        await channel.exchange_delete(names.work_exchange)
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
        # `amqp_server`, not the async `amqp_url`: this runs on the test's loop already.
        server = request.getfixturevalue("amqp_server")
        state = broker_url(name.removeprefix("amqp_"))
        prefix = f"offload-test-{uuid.uuid4().hex[:12]}"
        url = f"{server}?prefix={prefix}&state={quote(state, safe='')}"
        return _amqp(url, from_url(state, clock=clock), clock)
    if name in SQS_NAMES:
        from .sqs_fake_time import FakeTimeSQS

        state = broker_url(name.removeprefix("sqs_"))
        url = f"{request.getfixturevalue('sqs_url')}&state={quote(state, safe='')}"
        return with_state_store(FakeTimeSQS(url, clock=clock), from_url(state, clock=clock))
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
        queues = await b.queues() if isinstance(b, Pushed) else None
        await b.close()
        if queues is not None:
            await _delete_topology(b.url, queues)


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
