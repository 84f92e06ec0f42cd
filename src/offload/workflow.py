"""Workflows: `chain`, `group` and `chord`, built from `task.call(...)`.

Every step is a job of its own (visible, retried, replayable); nothing polls.

- A chain enqueues its first step; the steps after it travel in the envelope's
  `then`. When a step succeeds, the worker enqueues the next one (its result
  prepended to the next step's positional arguments) *before* it acks, under the
  key `chain:{job_id}:next`, so a crash in between can neither lose nor double it.
  A dead step stops the chain; `offload dlq replay` of that step continues it.
- A group enqueues all its members in one broker round trip.
- A chord is a group whose members each carry the callback (`Envelope.chord`). When
  a member is terminal (succeeded or dead), the worker records its outcome with
  `Broker.join` before it acks or buries; the call that completes the group (and any
  later one) gets every outcome back, and the worker enqueues the callback under the
  key `chord:{group_id}:callback`, so it runs exactly once. The callback's first
  argument is the list of member results in member order; a dead member's entry is
  None.

Every job of a workflow carries `workflow_id` (the id of the workflow's first job,
or of the group) and `parent_id` (the job that enqueued it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from offload.errors import ConfigurationError, JobNotFound, ResultTimeout
from offload.handle import Job
from offload.job import TERMINAL_STATES, ChordRef, Envelope, JobState, Step, new_job_id
from offload.task import Call, Overrides

if TYPE_CHECKING:
    from offload.app import Offload
    from offload.task import Task

__all__ = ["Chain", "Chord", "Group", "Workflow", "chain", "chord", "group"]

#: While a workflow's last job is not enqueued yet, look again after this (seconds).
_NOT_YET_S = 0.05


class Workflow:
    """The producer's handle on an enqueued workflow.

    Attributes:
        id: the workflow id, shared by every job of it (`offload show ID`).
        jobs: a handle per step (chain: every step, including those not enqueued
            yet; group: every member; chord: every member, then the callback).
        last: the job whose result is the workflow's (chain: the last step; chord:
            the callback; group: None, read `results`).
    """

    __slots__ = ("_chain", "id", "jobs", "last")

    def __init__(
        self, workflow_id: str, jobs: list[Job], last: Job | None, *, chain: bool = False
    ) -> None:
        self.id = workflow_id
        self.jobs = jobs
        self.last = last
        self._chain = chain

    def __repr__(self) -> str:
        return f"<Workflow {self.id} jobs={len(self.jobs)}>"

    async def result_async(self, timeout: float | None = None) -> Any:
        """The result of `last` (a group: the list of its members' results), waiting
        for it to be enqueued too.

        Raises:
            JobFailed / JobCancelled / JobExpired: `last` (or, in a chain, a step
                before it, which stops the chain) did not succeed.
            ResultTimeout: no result after `timeout` seconds.
        """
        if self.last is None:
            return [await job.result_async(timeout) for job in self.jobs]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return await self.last.result_async(remaining)
            except JobNotFound:
                if self._chain:
                    await self._raise_for_stopped_step()
                if deadline is not None and time.monotonic() >= deadline:
                    message = f"step {self.last.id} never enqueued"
                    raise ResultTimeout(self.last.id, message) from None
                await asyncio.sleep(_NOT_YET_S)

    async def _raise_for_stopped_step(self) -> None:
        for job in self.jobs[:-1]:
            try:
                state = await job.state_async()
            except JobNotFound:
                return
            if state in TERMINAL_STATES and state is not JobState.SUCCEEDED:
                await job.result_async(0)  # raises the step's outcome

    async def cancel_async(self) -> int:
        """Cancel every step that has not run: waiting jobs are cancelled, running
        ones flagged (a flagged chain step never continues its chain, even if it
        succeeds). Steps are visited twice, so a step enqueued during the first pass
        is caught by the second. Returns how many jobs were cancelled or flagged."""
        done: set[str] = set()
        for _ in range(2):
            for job in self.jobs:
                if job.id not in done and await job.cancel_async():
                    done.add(job.id)
        return len(done)

    def cancel(self) -> int:
        jobs = self.jobs or ([self.last] if self.last else [])
        return jobs[0]._app.portal.run(self.cancel_async()) if jobs else 0

    def result(self, timeout: float | None = None) -> Any:
        jobs = self.jobs or ([self.last] if self.last else [])
        if not jobs:
            return []
        return jobs[0]._app.portal.run(self.result_async(timeout))


class Chain:
    """Steps run one after the other; each result is the next step's first argument."""

    def __init__(self, calls: Sequence[Call]) -> None:
        if not calls:
            raise ConfigurationError("a chain needs at least one step")
        self.calls = list(calls)
        for index, call in enumerate(self.calls):
            _check(call, chained=index > 0)

    def enqueue(self) -> Workflow:
        app = _task(self.calls[0])._app
        return app.portal.run(self.enqueue_async())

    async def enqueue_async(self) -> Workflow:
        first, *rest = self.calls
        app = _task(first)._app
        steps = [to_step(call) for call in rest]
        envelope = _envelope(first, app.clock.now(), then=steps or None)
        envelope = msgspec.structs.replace(envelope, workflow_id=envelope.id)
        [job] = await app._enqueue_envelopes([envelope])
        jobs = [job, *(Job(app, step.id) for step in steps)]
        return Workflow(envelope.id, jobs, jobs[-1], chain=True)


class Group:
    """Members run in parallel; enqueued in one broker round trip."""

    def __init__(self, calls: Iterable[Call]) -> None:
        self.calls = list(calls)
        for call in self.calls:
            _check(call, chained=False)

    def enqueue(self) -> Workflow:
        if not self.calls:
            return Workflow(new_job_id(), [], None)
        return _task(self.calls[0])._app.portal.run(self.enqueue_async())

    async def enqueue_async(self) -> Workflow:
        group_id = new_job_id()
        if not self.calls:
            return Workflow(group_id, [], None)
        app = _task(self.calls[0])._app
        now = app.clock.now()
        envelopes = [
            _envelope(call, now, workflow_id=group_id, parent_id=group_id) for call in self.calls
        ]
        return Workflow(group_id, await app._enqueue_envelopes(envelopes), None)


class Chord:
    """A group and a callback that runs once every member is terminal."""

    def __init__(self, members: Group, callback: Call) -> None:
        if not members.calls:
            raise ConfigurationError("a chord needs at least one member")
        _check(callback, chained=True)
        self.group = members
        self.callback = callback

    def enqueue(self) -> Workflow:
        app = _task(self.callback)._app
        return app.portal.run(self.enqueue_async())

    async def enqueue_async(self) -> Workflow:
        group_id = new_job_id()
        app = _task(self.callback)._app
        now = app.clock.now()
        callback = to_step(self.callback)
        total = len(self.group.calls)
        envelopes = [
            _envelope(
                call,
                now,
                workflow_id=group_id,
                parent_id=group_id,
                chord=ChordRef(group_id, index, total, callback),
            )
            for index, call in enumerate(self.group.calls)
        ]
        jobs = await app._enqueue_envelopes(envelopes)
        last = Job(app, callback.id)
        return Workflow(group_id, [*jobs, last], last)


def chain(*calls: Call) -> Chain:
    """`chain(a.call(x), b.call(), c.call(y))`: run a(x), then b(<a's result>), then
    c(<b's result>, y). `.enqueue()` returns a `Workflow`."""
    return Chain(calls)


def group(calls: Iterable[Call]) -> Group:
    """`group(send.call(u) for u in users)`: fan out in one round trip."""
    return Group(calls)


def chord(members: Group | Iterable[Call], callback: Call) -> Chord:
    """`chord(group(...), report.call())`: fan out, then run `report(results)` once
    every member has succeeded or died (a dead member's result is None)."""
    return Chord(members if isinstance(members, Group) else Group(members), callback)


# -- building blocks, shared with the worker -------------------------------------------


def to_step(call: Call) -> Step:
    """A step to enqueue later, its id, queue and priority fixed now."""
    task = _task(call)
    return Step(
        id=new_job_id(),
        task=task.name,
        args=list(call.args),
        kwargs=call.kwargs,
        queue=task.defaults.queue,
        priority=task.defaults.priority,
    )


def step_envelope(
    app: Offload, step: Step, value: Any, *, parent: Envelope, key: str, **fields: Any
) -> Envelope:
    """The job of `step`, with `value` as its first argument, enqueued by `parent`."""
    known = app.tasks.get(step.task)
    return Envelope(
        id=step.id,
        task=step.task,
        args=[value, *step.args],
        kwargs=step.kwargs,
        queue=step.queue,
        priority=step.priority,
        max_attempts=known.defaults.max_attempts if known is not None else None,
        key=key,
        parent_id=parent.id,
        workflow_id=parent.workflow_id,
        created_at=app.clock.now(),
        **fields,
    )


def _task(call: Call) -> Task[Any, Any]:
    if call.task is None:
        raise ConfigurationError("workflow steps are made with task.call(...)")
    return call.task


def _check(call: Call, *, chained: bool) -> None:
    """A step's arguments must bind; a chained step's first one comes later."""
    args = (None, *call.args) if chained else call.args
    _task(call).check_arguments(args, call.kwargs)


def _envelope(call: Call, now: float, **fields: Any) -> Envelope:
    task = _task(call)
    envelope = task._app._envelope(task.name, call, task.defaults, Overrides(), now)
    return msgspec.structs.replace(envelope, **fields)
