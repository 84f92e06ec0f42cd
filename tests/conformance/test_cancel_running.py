"""Cancelling a running job: the flag the worker polls, and running → cancelled."""

from __future__ import annotations

import pytest

from offload.brokers.base import Broker
from offload.envelope import ErrorInfo, JobState
from offload.errors import LeaseLost

from .helpers import enqueue_one, reserve_one

CANCELLED = ErrorInfo("Cancelled", "cancelled while running")


async def test_cancel_requested_lists_only_flagged_running_jobs(broker: Broker) -> None:
    first = await enqueue_one(broker)
    second = await enqueue_one(broker)
    lease_a = await reserve_one(broker)
    lease_b = await reserve_one(broker)
    assert {lease_a.job_id, lease_b.job_id} == {first, second}
    assert await broker.cancel_requested([lease_a, lease_b]) == set()
    assert await broker.cancel(lease_b.job_id)
    assert await broker.cancel_requested([lease_a, lease_b]) == {lease_b.job_id}
    assert await broker.cancel_requested([]) == set()


async def test_cancel_running_finishes_the_job_as_cancelled(broker: Broker) -> None:
    await enqueue_one(broker)
    lease = await reserve_one(broker)
    await broker.cancel(lease.job_id)
    await broker.cancel_running(lease, error=CANCELLED)
    info = await broker.get_job(lease.job_id)
    assert info is not None
    assert info.state is JobState.CANCELLED
    assert info.error == CANCELLED
    assert info.finished_at is not None
    assert await broker.cancel_requested([lease]) == set()
    counts = await broker.counts(["default"])
    assert counts["default"].states.get(JobState.CANCELLED) == 1
    assert counts["default"].states.get(JobState.RUNNING, 0) == 0


async def test_cancel_running_with_a_stale_lease_raises_lease_lost(broker: Broker) -> None:
    await enqueue_one(broker)
    lease = await reserve_one(broker)
    await broker.ack(lease, None, result_ttl_s=None)
    with pytest.raises(LeaseLost):
        await broker.cancel_running(lease, error=CANCELLED)
