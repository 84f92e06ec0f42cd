"""Flow control primitives: `take_rate` and `acquire_slot` / `release_slot`, on the
broker's (fake) clock."""

from __future__ import annotations

import asyncio

import pytest

from offload.brokers.base import Broker
from offload.testing import FakeClock

# -- take_rate ----------------------------------------------------------------------------


async def test_take_rate__burst_of_limit_then_one_per_interval(
    broker: Broker, clock: FakeClock
) -> None:
    # Given an idle key with 4 per 2 s: a burst of 4, then one every 0.5 s.
    taken = [await broker.take_rate("k", limit=4, per_s=2.0) for _ in range(4)]
    assert taken == [0.0, 0.0, 0.0, 0.0]

    wait = await broker.take_rate("k", limit=4, per_s=2.0)
    assert wait == pytest.approx(0.5, abs=1e-3)
    clock.advance(0.25)
    assert await broker.take_rate("k", limit=4, per_s=2.0) == pytest.approx(0.25, abs=1e-3)
    clock.advance(0.25)
    assert await broker.take_rate("k", limit=4, per_s=2.0) == 0.0
    assert await broker.take_rate("k", limit=4, per_s=2.0) == pytest.approx(0.5, abs=1e-3)


async def test_take_rate__refusal_takes_nothing(broker: Broker, clock: FakeClock) -> None:
    assert await broker.take_rate("k", limit=1, per_s=1.0) == 0.0
    for _ in range(5):  # asking again and again does not push the next token back
        assert await broker.take_rate("k", limit=1, per_s=1.0) == pytest.approx(1.0, abs=1e-3)
    clock.advance(1.0)
    assert await broker.take_rate("k", limit=1, per_s=1.0) == 0.0


async def test_take_rate__keys_are_independent(broker: Broker, clock: FakeClock) -> None:
    assert await broker.take_rate("a", limit=1, per_s=60.0) == 0.0
    assert await broker.take_rate("a", limit=1, per_s=60.0) > 0
    assert await broker.take_rate("b", limit=1, per_s=60.0) == 0.0
    assert await broker.take_rate("a{x}%", limit=1, per_s=60.0) == 0.0  # odd characters


async def test_take_rate__idle_key_refills_to_full_burst_only(
    broker: Broker, clock: FakeClock
) -> None:
    for _ in range(3):
        assert await broker.take_rate("k", limit=3, per_s=1.0) == 0.0
    clock.advance(3600)  # idle for long: the burst is still `limit`, not more
    for _ in range(3):
        assert await broker.take_rate("k", limit=3, per_s=1.0) == 0.0
    assert await broker.take_rate("k", limit=3, per_s=1.0) > 0
    await broker.sweep()  # forgetting idle keys changes nothing for a busy one
    assert await broker.take_rate("k", limit=3, per_s=1.0) > 0


async def test_take_rate__concurrent_takers_get_exactly_the_burst(
    broker: Broker, clock: FakeClock
) -> None:
    waits = await asyncio.gather(*(broker.take_rate("k", limit=5, per_s=1.0) for _ in range(20)))
    assert sum(1 for w in waits if w == 0.0) == 5


# -- acquire_slot / release_slot ------------------------------------------------------------


async def test_acquire_slot__at_most_limit_holders(broker: Broker, clock: FakeClock) -> None:
    assert await broker.acquire_slot("k", limit=2, holder="a", ttl_s=30)
    assert await broker.acquire_slot("k", limit=2, holder="b", ttl_s=30)
    assert not await broker.acquire_slot("k", limit=2, holder="c", ttl_s=30)
    assert await broker.acquire_slot("other", limit=2, holder="c", ttl_s=30)

    await broker.release_slot("k", "a")
    await broker.release_slot("k", "a")  # idempotent
    await broker.release_slot("k", "nobody")
    assert await broker.acquire_slot("k", limit=2, holder="c", ttl_s=30)
    assert not await broker.acquire_slot("k", limit=2, holder="a", ttl_s=30)


async def test_acquire_slot__holder_again_renews(broker: Broker, clock: FakeClock) -> None:
    assert await broker.acquire_slot("k", limit=1, holder="a", ttl_s=30)
    clock.advance(20)
    assert await broker.acquire_slot("k", limit=1, holder="a", ttl_s=30)  # renew to t+50
    clock.advance(20)  # past the first TTL, within the renewed one
    assert not await broker.acquire_slot("k", limit=1, holder="b", ttl_s=30)


async def test_acquire_slot__lapsed_holder_frees_its_slot(broker: Broker, clock: FakeClock) -> None:
    # Given a holder that crashed without releasing.
    assert await broker.acquire_slot("k", limit=1, holder="crashed", ttl_s=30)
    clock.advance(29)
    assert not await broker.acquire_slot("k", limit=1, holder="b", ttl_s=30)
    clock.advance(2)
    assert await broker.acquire_slot("k", limit=1, holder="b", ttl_s=30)
    await broker.sweep()
    assert not await broker.acquire_slot("k", limit=1, holder="c", ttl_s=30)


async def test_acquire_slot__concurrent_acquirers_get_exactly_limit(
    broker: Broker, clock: FakeClock
) -> None:
    got = await asyncio.gather(
        *(broker.acquire_slot("k", limit=3, holder=f"h{i}", ttl_s=30) for i in range(12))
    )
    assert sum(got) == 3


# -- defer ----------------------------------------------------------------------------------


# -- enqueue(max_depth=...) ---------------------------------------------------------------
