"""`connect` and `close` are idempotent."""

from __future__ import annotations

from offload.brokers.base import Broker, Capabilities
from offload.envelope import JobState

from .helpers import enqueue_one, state_of


async def test_connect_again_is_idempotent_and_keeps_jobs(broker: Broker) -> None:
    job_id = await enqueue_one(broker)

    await broker.connect()

    assert await state_of(broker, job_id) is JobState.QUEUED
    assert (await broker.counts())["default"].states[JobState.QUEUED] == 1


async def test_close_twice_is_idempotent(broker: Broker) -> None:
    await broker.close()
    await broker.close()  # and the fixture closes it a third time


async def test_capabilities_are_declared(broker: Broker) -> None:
    assert isinstance(type(broker).capabilities, Capabilities)
