"""`Broker.set_progress`: the last report of a job, read back by `get_job`."""

from __future__ import annotations

from offload.brokers.base import Broker
from offload.codec import encode_value
from offload.envelope import JobState

from .helpers import enqueue_one, reserve_one


async def test_progress_is_read_back_by_get_job_and_replaced(broker: Broker) -> None:
    job_id = await enqueue_one(broker)
    info = await broker.get_job(job_id)
    assert info is not None and info.progress is None
    await reserve_one(broker)
    await broker.set_progress(job_id, encode_value({"done": 1, "of": 4}))
    info = await broker.get_job(job_id)
    assert info is not None and info.progress == {"done": 1, "of": 4}
    await broker.set_progress(job_id, encode_value(75))
    info = await broker.get_job(job_id)
    assert info is not None
    assert info.progress == 75
    assert info.state is JobState.RUNNING


async def test_progress_of_another_job_is_not_mixed_in(broker: Broker) -> None:
    first = await enqueue_one(broker)
    second = await enqueue_one(broker)
    await broker.set_progress(first, encode_value("half"))
    info = await broker.get_job(second)
    assert info is not None and info.progress is None
