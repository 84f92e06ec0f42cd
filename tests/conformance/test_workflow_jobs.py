"""`Broker.workflow_jobs`: a workflow's jobs, across queues, in enqueue order."""

from __future__ import annotations

from offload.brokers.base import Broker
from offload.envelope import new_job_id

from .helpers import enqueue_one


async def test_workflow_jobs_lists_the_jobs_of_one_workflow(broker: Broker) -> None:
    workflow_id = new_job_id()
    first = await enqueue_one(broker, "a", workflow_id=workflow_id)
    await enqueue_one(broker, "other", workflow_id=new_job_id())
    await enqueue_one(broker, "plain")
    broker.clock.advance(1.0)  # type: ignore[attr-defined]
    second = await enqueue_one(broker, "b", workflow_id=workflow_id, queue="q2", parent_id=first)
    found = await broker.workflow_jobs(workflow_id)
    assert [info.id for info in found] == [first, second]
    assert [info.queue for info in found] == ["default", "q2"]
    envelope = found[1].envelope()
    assert envelope is not None and envelope.parent_id == first
    assert [i.id for i in await broker.workflow_jobs(workflow_id, limit=1)] == [first]


async def test_workflow_jobs_of_an_unknown_workflow_is_empty(broker: Broker) -> None:
    assert await broker.workflow_jobs(new_job_id()) == []
    assert await broker.workflow_jobs("not-an-id") == []
