"""Workflows: `chain`, `group` and `chord`, nested freely, built from `task.call(...)`.

Every step is a job of its own (visible, retried, replayable); nothing polls.

A workflow compiles to *stages* (`offload.envelope.Step`): a task call, or a group whose
branches are chains of stages. The producer enqueues the first stage; the stages after
a job travel in its envelope's `then`, and a group member's place in its group (and
what follows the group) in its `chord` (`ChordRef`). When a job ends, the worker starts
what follows *before* it settles the job, under fixed ids and keys, so a crash in
between can neither lose nor double it (`offload.workflow_engine`):

- a success starts the next stage with the job's result as its first argument (each
  branch of a group gets it);
- the end of a group's branch is recorded with `Broker.join`; the call that completes
  the group starts the stage after it with the list of the branches' results in
  branch order (a failed branch's entry is None, and `current_job().failures` says who
  failed and why), under the key `chord:{group_id}:callback`;
- failure policy: a dead step keeps the rest of its chain waiting in the dead-letter
  queue (`offload dlq replay` continues it with the right data) and counts as a failed
  branch for its group at once. A cancelled or expired step stops its chain: the
  steps after it are recorded as `cancelled` jobs, so nobody waits on them. A group
  with `stop=True` (`chord(..., on_failure="stop")`) whose member failed, or any group
  with a cancelled member, cancels what follows it the same way; otherwise the stage
  after the group runs with the failures.

Every job of a workflow carries `workflow_id` (the id of the workflow's first job, or of
its first group) and `parent_id` (the job, or the group, that started it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from offload.envelope import JobState, Step, new_job_id
from offload.errors import ConfigurationError, JobFailed, JobNotFound, ResultTimeout
from offload.job import Job, wait_deadline
from offload.options import Call, Overrides
from offload.task import Task
from offload.workflow_engine import WorkflowEngine

if TYPE_CHECKING:
    from offload.producer import Producer

__all__ = ["Chain", "Chord", "Group", "Workflow", "chain", "chord", "group"]

#: While a step the workflow waits for is not enqueued yet, look again after this (s).
_NOT_YET_S = 0.05
#: Cancels in flight at once in `Workflow.cancel`: enough to outpace the workers taking
#: a big group's members, few enough not to crowd the broker's connection pool.
CANCEL_CONCURRENCY = 32

OnFailure = Literal["continue", "stop"]


class Workflow:
    """The producer's handle on an enqueued workflow.

    Attributes:
        id: the workflow id, shared by every job of it (`offload show ID`).
        jobs: a handle per task step, in workflow order, including those not enqueued
            yet (every id is fixed at enqueue).
        last: the job whose result is the workflow's when the workflow ends with a
            task step (a chain, a chord's callback); None when it ends with a group.
    """

    __slots__ = ("_producer", "_stages", "id", "jobs", "last")

    def __init__(self, producer: Producer | None, workflow_id: str, stages: list[Step]) -> None:
        self._producer = producer  # None only for an empty group: nothing to wait for
        self._stages = stages
        self.id = workflow_id
        p = producer
        self.jobs = [Job(p, step.id) for step in _task_steps(stages)] if p else []
        final = stages[-1] if stages and p else None
        self.last = Job(p, final.id) if p and final and final.branches is None else None

    def __repr__(self) -> str:
        return f"<Workflow {self.id} jobs={len(self.jobs)}>"

    async def result_async(self, timeout: float | None = None) -> Any:
        """The workflow's result: its last stage's (a group's is the list of its
        branches' results), waiting for every step it needs to be enqueued and run.

        Raises:
            JobFailed / JobCancelled / JobExpired: a step the result depends on did not
                succeed (in a chain, the step that stopped it).
            ResultTimeout: no result after `timeout` seconds.
        """
        deadline = wait_deadline(timeout)
        if not self._stages:
            return []
        return await self._result_of(self._stages, deadline)

    @property
    def _live_producer(self) -> Producer:
        assert self._producer is not None  # a workflow with stages always has one
        return self._producer

    async def _result_of(self, stages: list[Step], deadline: float | None) -> Any:
        final = stages[-1]
        if final.branches is not None:
            return [await self._result_of(branch, deadline) for branch in final.branches]
        job = Job(self._live_producer, final.id)
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return await job.result_async(remaining)
            except JobNotFound:
                await self._raise_if_blocked(stages, len(stages) - 1)
                if deadline is not None and time.monotonic() >= deadline:
                    raise ResultTimeout(job.id, f"step {job.id} never enqueued") from None
                await asyncio.sleep(_NOT_YET_S)

    async def _raise_if_blocked(self, stages: list[Step], index: int) -> None:
        """Raise the outcome of the dead step that keeps stage `index` from starting:
        the nearest task step before it in its chain that exists (a group before it
        always ends, so it never blocks)."""
        for stage in reversed(stages[:index]):
            if stage.branches is not None:
                return
            try:
                info = await Job(self._live_producer, stage.id).info_async()
            except JobNotFound:
                continue
            if info.state is JobState.DEAD:
                raise JobFailed(stage.id, info.error)
            return

    async def cancel_async(self) -> int:
        """Cancel every step that has not run: waiting jobs are cancelled (and what
        follows them is recorded cancelled), running ones flagged (a flagged step never
        starts what follows it, even if it succeeds). Steps are visited twice, so a
        step enqueued during the first pass is caught by the second. Returns how many
        jobs were cancelled or flagged."""
        if self._producer is None:
            return 0
        done: set[str] = set()
        for _ in range(2):
            done |= await cancel_jobs(self._producer, [j.id for j in self.jobs if j.id not in done])
        return len(done)

    def cancel(self) -> int:
        return 0 if self._producer is None else self._producer.portal.run(self.cancel_async())

    def result(self, timeout: float | None = None) -> Any:
        if self._producer is None:
            return []
        return self._producer.portal.run(self.result_async(timeout))


async def cancel_jobs(producer: Producer, job_ids: Sequence[str]) -> set[str]:
    """`Job.cancel` for many jobs (`Workflow.cancel`, `offload cancel --workflow`):
    the ids of those cancelled or flagged.

    Every job is taken first, concurrently, and only then are the follow-ups of the
    waiting ones recorded (a group's join, one at a time per group). Done one job at a
    time, a big group's cancel moved through it in the order the workers take it and
    at about their pace (PostgreSQL: 1,361 waiting members, 974 of them ran), so it
    mostly met members already running and flagged them, and they ran to success."""
    broker = await producer.connected_broker()
    engine = WorkflowEngine(producer, broker)
    gate = asyncio.Semaphore(CANCEL_CONCURRENCY)
    taken: set[str] = set()

    async def take(job_id: str) -> None:
        async with gate:
            if await broker.cancel(job_id):
                taken.add(job_id)

    async def follow_up(job_id: str) -> None:
        async with gate:
            await engine.cancelled(job_id)

    await asyncio.gather(*(take(job_id) for job_id in dict.fromkeys(job_ids)))
    await asyncio.gather(*(follow_up(job_id) for job_id in taken))
    return taken


class _Flow:
    """What `chain`, `group` and `chord` share: compiling and enqueueing."""

    def stages(self, *, first: bool) -> list[Step]:
        raise NotImplementedError

    def _producer(self) -> Producer:
        raise NotImplementedError

    def enqueue(self) -> Workflow:
        return self._producer().portal.run(self.enqueue_async())

    async def enqueue_async(self) -> Workflow:
        """Enqueue the first stage (a group's members in one broker round trip)."""
        producer = self._producer()
        stages = self.stages(first=True)
        if not stages:
            return Workflow(producer, new_job_id(), [])
        engine = WorkflowEngine(producer, producer.broker)  # builds only: no broker call
        envelopes = engine.start_envelopes(stages, None, origin=None, key=None, chord=None)
        workflow_id = stages[0].id
        envelopes = [msgspec.structs.replace(e, workflow_id=workflow_id) for e in envelopes]
        if stages[0].branches is not None:
            envelopes = [msgspec.structs.replace(e, parent_id=workflow_id) for e in envelopes]
        await producer.enqueue_envelopes_async(envelopes)
        return Workflow(producer, workflow_id, stages)


class Chain(_Flow):
    """Stages run one after the other; each result is the next stage's first argument
    (a group's result is the list of its branches' results)."""

    def __init__(self, items: Sequence[Call | _Flow]) -> None:
        if not items:
            raise ConfigurationError("a chain needs at least one step")
        self.items = list(items)
        self.stages(first=not _is_partial(self.items[0]))  # arguments checked now

    def stages(self, *, first: bool) -> list[Step]:
        out: list[Step] = []
        for index, item in enumerate(self.items):
            out.extend(_stages_of(item, first=first and index == 0))
        return out

    def _producer(self) -> Producer:
        return _producer_of(self.items[0])


class Group(_Flow):
    """Members run in parallel; at the start of a workflow they are enqueued in one
    broker round trip. Members may be calls, chains, groups or chords."""

    def __init__(
        self, members: Iterable[Call | _Flow], *, on_failure: OnFailure = "continue"
    ) -> None:
        if on_failure not in ("continue", "stop"):
            raise ConfigurationError(f"on_failure must be 'continue' or 'stop', not {on_failure!r}")
        self.members = list(members)
        self.on_failure = on_failure

    def stages(self, *, first: bool) -> list[Step]:
        if not self.members:
            if first:
                return []
            raise ConfigurationError("a group inside a workflow needs at least one member")
        branches = [_stages_of(member, first=first) for member in self.members]
        return [Step(id=new_job_id(), branches=branches, stop=self.on_failure == "stop")]

    def _producer(self) -> Producer:
        if not self.members:
            raise ConfigurationError("an empty group has nothing to run")
        return _producer_of(self.members[0])

    def enqueue(self) -> Workflow:
        """Enqueue every member; an empty group (fan-out to nobody) enqueues nothing
        and its workflow's result is []."""
        return Workflow(None, new_job_id(), []) if not self.members else super().enqueue()

    async def enqueue_async(self) -> Workflow:
        if not self.members:
            return Workflow(None, new_job_id(), [])
        return await super().enqueue_async()


class Chord(_Flow):
    """A group and a callback that runs once every member has ended, with the list of
    their results (`chain(group, callback)`, with its own failure policy)."""

    def __init__(self, members: Group, callback: Call | _Flow) -> None:
        if not members.members:
            raise ConfigurationError("a chord needs at least one member")
        self.group = members
        self.callback = callback
        _stages_of(callback, first=False)

    def stages(self, *, first: bool) -> list[Step]:
        return [*self.group.stages(first=first), *_stages_of(self.callback, first=False)]

    def _producer(self) -> Producer:
        return _producer_of(self.callback)


def chain(*items: Call | Chain | Group | Chord) -> Chain:
    """`chain(a.call(x), b.partial(), c.partial(y))`: run a(x), then b(<a's result>),
    then c(<b's result>, y). Items may be groups and chords too (a group gets the
    previous result in each member; the next item gets the list of the group's
    results). `.enqueue()` returns a `Workflow`."""
    return Chain(items)


def group(
    members: Iterable[Call | Chain | Group | Chord], *, on_failure: OnFailure = "continue"
) -> Group:
    """`group(send.call(u) for u in users)`: fan out. Members may be chains, groups or
    chords. `on_failure` decides what a failed member does to what follows the group
    in a workflow: "continue" runs it with None for the failed member (and
    `current_job().failures`), "stop" cancels it."""
    return Group(members, on_failure=on_failure)


def chord(
    members: Group | Iterable[Call | Chain | Group | Chord],
    callback: Call | Chain | Group | Chord,
    *,
    on_failure: OnFailure | None = None,
) -> Chord:
    """`chord(group(...), report.partial())`: fan out, then run `report(results)` once
    every member has ended. `on_failure` (default: the group's, "continue"): "continue"
    gives a failed member's result as None and its details in
    `current_job().failures`; "stop" cancels the callback when a member fails."""
    if not isinstance(members, Group):
        members = Group(members, on_failure=on_failure or "continue")
    elif on_failure is not None and on_failure != members.on_failure:
        members = Group(members.members, on_failure=on_failure)
    return Chord(members, callback)


def _stages_of(item: Call | _Flow, *, first: bool) -> list[Step]:
    if isinstance(item, _Flow):
        return item.stages(first=first)
    task = _task(item)
    if first and item.partial:
        raise ConfigurationError(
            f"{task.name}.partial(...) needs a stage before it to give its first argument;"
            " start a workflow with task.call(...)"
        )
    args = item.args if first else (None, *item.args)  # a later step's first one comes later
    task.check_arguments(args, item.kwargs)
    o = item.overrides or Overrides()
    if o.at is not None or o.expires_at is not None or o.key is not None:
        raise ConfigurationError(
            f"workflow step {task.name}: at=, key= and a datetime expires= do not apply to"
            " a step (it starts when the stage before it ends; its key is the workflow's);"
            " use delay= and expires= in seconds"
        )
    defaults = task.defaults
    return [
        Step(
            id=new_job_id(),
            task=task.name,
            args=list(item.args),
            kwargs=item.kwargs,
            queue=o.queue or defaults.queue,
            priority=defaults.priority if o.priority is None else o.priority,
            max_attempts=o.max_attempts,
            backoff=o.backoff,
            timeout_s=o.timeout_s,
            delay_s=o.delay_s,
            expires_s=o.expires_s,
        )
    ]


def _is_partial(item: Call | _Flow) -> bool:
    """Whether `item` starts with a step that expects the stage before it."""
    if isinstance(item, Chain):
        return _is_partial(item.items[0])
    if isinstance(item, Group):
        return bool(item.members) and all(_is_partial(m) for m in item.members)
    if isinstance(item, Chord):
        return _is_partial(item.group)
    return isinstance(item, Call) and item.partial


def _task_steps(stages: list[Step]) -> list[Step]:
    out: list[Step] = []
    for stage in stages:
        if stage.branches is None:
            out.append(stage)
        else:
            for branch in stage.branches:
                out += _task_steps(branch)
    return out


def _producer_of(item: Call | _Flow) -> Producer:
    return item._producer() if isinstance(item, _Flow) else _task(item).producer


def _task(call: Call) -> Task[Any, Any]:
    if not isinstance(call, Call) or not isinstance(call.task, Task):
        # Not a Call at all (a string, a task itself, a job) used to raise a bare
        # AttributeError ("'str' object has no attribute 'task'").
        raise ConfigurationError(
            "workflow steps are made with task.call(...) or task.partial(...), or are a "
            f"chain, group or chord; got {call!r:.80}"
        )
    return call.task
