"""The workflow engine: what follows a job's end (`offload.workflow` declares it).

One `WorkflowEngine` serves every caller: the worker runs `follow_up` *before* it
settles a job and `drain_outbox` for the jobs that ended inside the broker (cancelled
while waiting, expired: `Broker.outbox`); `Job.cancel` runs `cancelled` for the job it
just cancelled; the producer's `Workflow` builds its first jobs with `start_envelopes`.
It depends on a producer (to build each job like any enqueue), a connected broker and
a clock, not on the app.

What follows an end: the next stage (a success's result is its first argument), a
group member's end recorded with `Broker.join` (the call that completes the group
starts what follows it), and a final failure's stop: the stages that will never run
are recorded as `cancelled` jobs, so nobody waits on them: each is enqueued far in the
future and cancelled at once, and its own follow-ups carry the stop further (a crash
in between leaves it scheduled, and the rerun cancels it).

Everything here is idempotent, so a crash in between only repeats it: every job it
starts has an id fixed by the producer and a deterministic key, and `Broker.join`
records a branch once (its first end wins).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from offload.codec import decode_envelope, decode_value, encode_envelope, encode_value
from offload.envelope import ChordRef, Envelope, Failure, JobState, Step
from offload.errors import BrokerUnavailable
from offload.options import Call, Overrides

if TYPE_CHECKING:
    from offload.brokers.base import Broker, Ended, Lease
    from offload.clock import Clock
    from offload.envelope import ErrorInfo
    from offload.producer import Producer

__all__ = ["WorkflowEngine"]

logger = logging.getLogger("offload.worker")

#: The keys of a branch's outcome recorded by `Broker.join`.
_OUTCOMES = {"ok", "failed"}
#: Stages that will never run are enqueued this far ahead, then cancelled (seconds).
_NEVER_S = 100 * 365 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class _End:
    """How a job (or a branch, or a group) ended, as its followers see it."""

    ok: bool
    value: Any = None
    failure: Failure | None = None
    final: bool = True  # False: dead, and a replay may still continue it
    failures: list[Failure] = field(default_factory=list)


class WorkflowEngine:
    """Starts what the end of a workflow's job asks for.

    Args:
        producer: builds the jobs it starts (a task's defaults under a step's options);
            its hooks hear of each job this engine clears from the outbox.
        broker: a connected broker; every job it starts, joins and cancels goes here.
        clock: time source (default: the producer's).
        clears_outbox: whether it clears the outbox entries of the stages it stops (a
            worker's engine does). A producer's (`Job.cancel`) leaves them, and the
            entry of the job it cancelled, to the workers: a worker clears each and
            reports it to its hooks (`Hook.on_ended`), so the metrics count every such
            end once, in the workers, after running the (idempotent) follow-ups again.
    """

    def __init__(
        self,
        producer: Producer,
        broker: Broker,
        clock: Clock | None = None,
        *,
        clears_outbox: bool = False,
    ) -> None:
        self.producer = producer
        self.broker = broker
        self.clock = clock or producer.clock
        self.clears_outbox = clears_outbox

    async def follow_up(
        self,
        lease: Lease,
        action: str,
        envelope: Envelope | None,
        *,
        result: bytes | None = None,
        error: ErrorInfo | None = None,
    ) -> None:
        """Start what a finished job's workflow asks for (`action` is `ack`, `bury` or
        `cancel`; a `retry` is not an end). A job flagged by a cancel that still
        succeeded counts as cancelled: it starts nothing after it."""
        if envelope is None or action == "retry" or not envelope.has_follow_ups:
            return
        if action == "ack" and not await self.broker.cancel_requested([lease]):
            end = _End(ok=True, value=None if result is None else decode_value(result))
        elif action == "bury":
            end = _failed(envelope, JobState.DEAD, error, final=False)
        else:
            end = _failed(envelope, JobState.CANCELLED, error, final=True)
        await self._after(envelope, envelope.then or [], envelope.chord, end, _next_key(envelope))

    async def settle_ended(self, envelope: Envelope, state: JobState) -> None:
        """The follow-ups of a job that ended without running (cancelled or expired)."""
        if envelope.has_follow_ups:
            end = _failed(envelope, state, None, final=True)
            await self._after(
                envelope, envelope.then or [], envelope.chord, end, _next_key(envelope)
            )

    async def cancelled(self, job_id: str) -> None:
        """After `Broker.cancel` took job `job_id`: if it was waiting (now cancelled)
        and is a workflow step, stop what follows it now. Its outbox entry stays for a
        worker (see `clears_outbox`); a failure here is logged and left to it too."""
        info = await self.broker.get_job(job_id)
        if info is None or info.state is not JobState.CANCELLED:
            return  # running: flagged, and its worker's `follow_up` sees the flag
        envelope = info.envelope()
        if envelope is None or not envelope.has_follow_ups:
            return
        try:
            await self.settle_ended(envelope, JobState.CANCELLED)
        except Exception:  # cancelled all the same; a worker finishes this from the outbox
            logger.warning(
                "job %s: cancelled; its workflow follow-ups are left to a worker",
                job_id,
                exc_info=True,
            )

    async def drain_outbox(self, limit: int = 200) -> int:
        """Run the follow-ups of the jobs in the broker's outbox and clear those that
        succeeded (one that fails stays, is logged, and is tried again next time,
        without holding up the others); each entry this call cleared (not one another
        reader cleared first) goes to the hooks' `on_ended`. Returns how many were
        handled and cleared."""
        entries = await self.broker.outbox(limit)
        done: list[tuple[str, JobState, Envelope | None]] = []
        for entry in entries:
            envelope = _decode(entry)
            try:
                if envelope is not None:
                    await self.settle_ended(envelope, entry.state)
            except BrokerUnavailable:
                raise  # the others would fail too: the caller retries them all later
            except Exception:
                logger.exception("job %s: its workflow follow-ups failed; retried", entry.job_id)
                continue
            done.append((entry.job_id, entry.state, envelope))
        await self._clear(done)
        return len(done)

    async def _clear(self, ended: list[tuple[str, JobState, Envelope | None]]) -> None:
        """Clear these outbox entries and report the ones this call removed."""
        if not ended:
            return
        removed = set(await self.broker.clear_outbox([job_id for job_id, _, _ in ended]))
        hooks = self.producer.hooks
        if hooks and removed:
            for job_id, state, envelope in ended:
                if job_id in removed:
                    hooks.ended(job_id, state, envelope)

    def start_envelopes(
        self,
        stages: list[Step],
        value: Any,
        *,
        origin: Envelope | None,
        key: str | None,
        chord: ChordRef | None,
        failures: list[Failure] | None = None,
    ) -> list[Envelope]:
        """The jobs that start `stages` with `value` as their input: one job for a task
        stage, the first job of every branch for a group. `origin` (None at the
        producer) is the job whose end starts them; `key` makes each start idempotent."""
        stage, rest = stages[0], stages[1:]
        if stage.branches is None:
            args = list(stage.args) if origin is None else [value, *stage.args]
            return [
                self._step_envelope(
                    stage, args, origin, key, then=rest or None, chord=chord, failures=failures
                )
            ]
        joins = bool(rest) or chord is not None
        out: list[Envelope] = []
        for index, branch in enumerate(stage.branches):
            ref = ChordRef(stage.id, index, len(stage.branches), rest, chord, stage.stop)
            branch_key = None if key is None else f"{key}:{index}"
            out += self.start_envelopes(
                branch,
                value,
                origin=origin,
                key=branch_key,
                chord=ref if joins else None,
                failures=failures,
            )
        return out

    def _step_envelope(
        self,
        step: Step,
        args: list[Any],
        origin: Envelope | None,
        key: str | None,
        **fields: Any,
    ) -> Envelope:
        """The job of `step`, built like any enqueue (`Producer.envelope`: the task's
        defaults under the step's own options), with the step's id and the workflow's
        key."""
        options = Overrides(
            delay_s=step.delay_s,
            priority=step.priority,
            queue=step.queue,
            expires_s=step.expires_s,
            max_attempts=step.max_attempts,
            timeout_s=step.timeout_s,
            backoff=step.backoff,
        )
        call = Call(tuple(args), step.kwargs)
        envelope = self.producer.envelope(step.task, call, options, self.clock.now())
        return msgspec.structs.replace(
            envelope,
            id=step.id,
            key=key,
            parent_id=None if origin is None else origin.id,
            workflow_id=None if origin is None else origin.workflow_id,
            **fields,
        )

    async def _after(
        self, origin: Envelope, then: list[Step], chord: ChordRef | None, end: _End, key: str
    ) -> None:
        """What follows an end: the next stages (real on success, recorded cancelled on
        a final failure), else, at the end of a branch or on a dead step, the branch's
        end for its group."""
        if then and (end.ok or end.final):
            await self._start(origin, then, chord, end, key)
        elif chord is not None:
            await self._join(origin, chord, end)

    async def _start(
        self, origin: Envelope, stages: list[Step], chord: ChordRef | None, end: _End, key: str
    ) -> None:
        failures = end.failures or None
        envelopes = self.start_envelopes(
            stages, end.value, origin=origin, key=key, chord=chord, failures=failures
        )
        if end.ok:
            hooks = self.producer.hooks
            if hooks:
                envelopes = [hooks.before_enqueue(e) for e in envelopes]
            items = [(e, b"") for e in envelopes]
            try:
                items = [(e, encode_envelope(e)) for e in envelopes]
                results = await self.broker.enqueue(items)
            except BaseException as exc:  # a hook's `before_enqueue` is always answered:
                self.producer.not_sent(items, exc)  # Tracing would hold an unended span
                raise
            self.producer.sent(items, results)
            return
        never = self.clock.now() + _NEVER_S
        stopped = [msgspec.structs.replace(e, not_before=never) for e in envelopes]
        await self.broker.enqueue([(e, encode_envelope(e)) for e in stopped])
        for envelope in stopped:
            await self.broker.cancel(envelope.id)
            await self._after(
                envelope, envelope.then or [], envelope.chord, end, _next_key(envelope)
            )
        if self.clears_outbox:
            await self._clear([(e.id, JobState.CANCELLED, e) for e in stopped])

    async def _join(self, origin: Envelope, chord: ChordRef, end: _End) -> None:
        if end.ok:
            outcome = encode_value({"ok": end.value})
        else:
            assert end.failure is not None
            outcome = encode_value({"failed": msgspec.to_builtins(end.failure)})
        outcomes = await self.broker.join(
            chord.id, str(chord.index), index=chord.index, total=chord.total, outcome=outcome
        )
        if outcomes is None:
            return
        values: list[Any] = []
        failures: list[Failure] = []
        for index, raw in enumerate(outcomes):
            member = decode_value(raw)
            if not (isinstance(member, dict) and len(member) == 1 and member.keys() & _OUTCOMES):
                values.append(member)  # joined by an offload before nesting: the bare result
            elif "failed" in member:
                values.append(None)
                failed = msgspec.convert(member["failed"], Failure)
                failures.append(msgspec.structs.replace(failed, index=index))
            else:
                values.append(member["ok"])
        cancelled = any(f.state == JobState.CANCELLED for f in failures)
        if failures and (chord.stop or cancelled):
            group_end = _End(ok=False, failure=failures[0], final=True)
        else:
            group_end = _End(ok=True, value=values, failures=failures)
        group = msgspec.structs.replace(origin, id=chord.id)  # the group starts what follows
        await self._after(group, chord.then, chord.parent, group_end, f"chord:{chord.id}:callback")


def _failed(envelope: Envelope, state: JobState, error: ErrorInfo | None, *, final: bool) -> _End:
    text = "" if error is None else f"{error.type}: {error.message}"
    index = envelope.chord.index if envelope.chord is not None else 0
    return _End(ok=False, failure=Failure(index, envelope.id, str(state), text), final=final)


def _next_key(envelope: Envelope) -> str:
    return f"chain:{envelope.id}:next"


def _decode(entry: Ended) -> Envelope | None:
    try:
        return decode_envelope(entry.payload)
    except Exception:
        logger.warning("job %s in the outbox is not an envelope; skipped", entry.job_id)
        return None
