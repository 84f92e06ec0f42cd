"""`Broker.join`: the chord primitive, atomic and idempotent under redelivery."""

from __future__ import annotations

import asyncio

from offload.brokers.base import Broker
from offload.envelope import new_job_id


async def test_join_returns_outcomes_in_index_order_once_complete(broker: Broker) -> None:
    group_id = new_job_id()
    members = [new_job_id() for _ in range(3)]
    assert await broker.join(group_id, members[2], index=2, total=3, outcome=b'"c"') is None
    assert await broker.join(group_id, members[0], index=0, total=3, outcome=b"null") is None
    done = await broker.join(group_id, members[1], index=1, total=3, outcome=b"1")
    assert done == [b"null", b"1", b'"c"']


async def test_join_counts_a_member_once_and_keeps_its_first_outcome(broker: Broker) -> None:
    group_id = new_job_id()
    first, second = new_job_id(), new_job_id()
    assert await broker.join(group_id, first, index=0, total=2, outcome=b"1") is None
    assert await broker.join(group_id, first, index=0, total=2, outcome=b"9") is None
    assert await broker.join(group_id, second, index=1, total=2, outcome=b"2") == [b"1", b"2"]
    # A redelivered member after completion sees the group complete again (the worker
    # then re-enqueues the callback under its fixed key, a no-op).
    assert await broker.join(group_id, first, index=0, total=2, outcome=b"7") == [b"1", b"2"]


async def test_join_groups_are_independent(broker: Broker) -> None:
    a, b = new_job_id(), new_job_id()
    assert await broker.join(a, new_job_id(), index=0, total=2, outcome=b"1") is None
    assert await broker.join(b, new_job_id(), index=0, total=1, outcome=b"2") == [b"2"]


async def test_concurrent_joins_complete_the_group_exactly_once(broker: Broker) -> None:
    group_id = new_job_id()
    total = 40
    replies = await asyncio.gather(
        *(
            broker.join(group_id, f"m{i}", index=i, total=total, outcome=str(i).encode())
            for i in range(total)
        )
    )
    complete = [r for r in replies if r is not None]
    assert len(complete) == 1
    assert complete[0] == [str(i).encode() for i in range(total)]
