"""The suite's fixtures, one per part of the contract it checks.

`delivery` is every full broker (`BROKER_NAMES`) and every broker that can only deliver
(`DELIVERY_ONLY_NAMES`, alone): the tests that take it need nothing but the `Delivery`
role (`offload.brokers.roles`), so a message-queue broker runs them before it has a
state store. `broker` is every full broker, and every delivery-only broker made whole
with a state store (`COMPOSED_NAMES`): the tests that take it need every role.

`delivery_only` and `composite` are `DeliveryOnly` (this package) over memory and
SQLite: they prove that the suite's delivery part needs no other role, and that a
`Composite` forwards every role to the part that plays it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from offload.brokers import from_url
from offload.brokers.base import Broker
from offload.brokers.composite import with_state_store
from offload.brokers.roles import Delivery
from offload.testing import FakeClock
from tests.conftest import BROKER_NAMES

from .delivery_only import DeliveryOnly

#: Brokers that can only deliver, run alone by the tests that take `delivery`.
DELIVERY_ONLY_NAMES = ["delivery_only"]
#: Delivery-only brokers with a state store, run by every test that takes `broker`.
COMPOSED_NAMES = ["composite"]


def _build(name: str, broker_url: Callable[[str], str], clock: FakeClock) -> Delivery:
    if name == "delivery_only":
        return DeliveryOnly(from_url("memory://", clock=clock))
    if name == "composite":
        store = from_url(broker_url("sqlite"), clock=clock)
        return with_state_store(DeliveryOnly(store), store)
    return from_url(broker_url(name), clock=clock)


@pytest.fixture(params=BROKER_NAMES + COMPOSED_NAMES)
async def broker(
    request: pytest.FixtureRequest, broker_url: Callable[[str], str], clock: FakeClock
) -> AsyncIterator[Broker]:
    """A connected whole broker of each kind, driven by the test's FakeClock."""
    b = _build(request.param, broker_url, clock)
    assert isinstance(b, Broker)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture(params=BROKER_NAMES + DELIVERY_ONLY_NAMES)
async def delivery(
    request: pytest.FixtureRequest, broker_url: Callable[[str], str], clock: FakeClock
) -> AsyncIterator[Delivery]:
    """A connected broker of each kind, as its `Delivery` role only."""
    d = _build(request.param, broker_url, clock)
    await d.connect()
    try:
        yield d
    finally:
        await d.close()
