"""`compare_and_set`: the registers that let scheduler replicas agree through the broker."""

from __future__ import annotations

import asyncio

from offload.brokers.base import Broker
from offload.testing import FakeClock

TTL = 60.0


async def test_a_register_moves_only_from_the_value_it_is_expected_to_hold(
    broker: Broker,
) -> None:
    cas = broker.compare_and_set
    assert await cas("r", None, "a", ttl_s=TTL) == "a"  # unset: set
    assert await cas("r", None, "b", ttl_s=TTL) == "a"  # not unset: left alone
    assert await cas("r", "x", "b", ttl_s=TTL) == "a"  # not "x": left alone
    assert await cas("r", "a", "b", ttl_s=TTL) == "b"  # "a": set
    assert await cas("r", "a", "b", ttl_s=TTL) == "b"  # already "b": still "b"
    assert await cas("other", "b", "c", ttl_s=TTL) is None  # names are apart


async def test_a_register_lapses_after_its_ttl_unless_renewed(
    broker: Broker, clock: FakeClock
) -> None:
    cas = broker.compare_and_set
    await cas("r", None, "a", ttl_s=TTL)
    clock.advance(TTL - 1)
    assert await cas("r", "a", "a", ttl_s=TTL) == "a"  # renewed for another TTL
    clock.advance(TTL - 1)
    assert await cas("r", None, "z", ttl_s=TTL) == "a"  # still held
    clock.advance(2)
    assert await cas("r", "a", "b", ttl_s=TTL) is None  # lapsed: reads as unset
    assert await cas("r", None, "b", ttl_s=TTL) == "b"
    clock.advance(TTL + 1)
    await broker.sweep()  # forgets lapsed registers; unset either way
    assert await cas("r", "b", "c", ttl_s=TTL) is None


async def test_of_racing_calls_that_expect_one_value_exactly_one_sets_it(
    broker: Broker,
) -> None:
    await broker.compare_and_set("r", None, "start", ttl_s=TTL)
    moves = [broker.compare_and_set("r", "start", f"v{i}", ttl_s=TTL) for i in range(12)]
    held = await asyncio.gather(*moves)
    assert len(set(held)) == 1 and held[0] in {f"v{i}" for i in range(12)}
