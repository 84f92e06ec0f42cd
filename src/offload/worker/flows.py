"""Workflow follow-ups (`offload.workflow`): what a job's end starts.

`follow_up` runs in the worker *before* it settles a job, `settle_ended` for a job that
ended inside the broker (cancelled while waiting, expired: `Broker.outbox`) before its
outbox entry is cleared. Both are idempotent, so a crash in between only repeats them:
every job they start has an id fixed by the producer and a deterministic key, and
`Broker.join` records a branch once (its first end wins).

A final failure (cancelled, expired, or a group that stops) records the stages that
will never run as `cancelled` jobs, so nobody waits on them: each is enqueued far in
the future and cancelled at once, and its own follow-ups carry the stop further
(a crash in between leaves it scheduled, and the rerun cancels it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from offload.codec import decode_envelope, decode_value, encode_envelope, encode_value
from offload.envelope import Envelope, Failure, JobState
from offload.errors import BrokerUnavailable
from offload.workflow import start_envelopes

if TYPE_CHECKING:
    from offload.app import Offload
    from offload.brokers.base import Ended, Lease
    from offload.envelope import ChordRef, ErrorInfo, Step
    from offload.worker.executor import Outcome

__all__ = ["drain_outbox", "follow_up", "settle_ended"]

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


async def follow_up(app: Offload, lease: Lease, outcome: Outcome) -> None:
    """Start what a finished job's workflow asks for (the action is `ack`, `bury` or
    `cancel`; a retry is not an end). A job flagged by a cancel that still succeeded
    counts as cancelled: it starts nothing after it."""
    envelope = outcome.envelope
    if envelope is None or outcome.action == "retry" or not envelope.has_follow_ups:
        return
    if outcome.action == "ack" and not await app.broker.cancel_requested([lease]):
        value = None if outcome.result is None else decode_value(outcome.result)
        end = _End(ok=True, value=value)
    elif outcome.action == "bury":
        end = _failed(envelope, JobState.DEAD, outcome.error, final=False)
    else:
        end = _failed(envelope, JobState.CANCELLED, outcome.error, final=True)
    await _after(app, envelope, envelope.then or [], envelope.chord, end, _next_key(envelope))


async def settle_ended(app: Offload, envelope: Envelope, state: JobState) -> None:
    """The follow-ups of a job that ended without running (cancelled or expired)."""
    if envelope.has_follow_ups:
        end = _failed(envelope, state, None, final=True)
        await _after(app, envelope, envelope.then or [], envelope.chord, end, _next_key(envelope))


async def drain_outbox(app: Offload, limit: int = 200) -> int:
    """Run the follow-ups of the jobs in the broker's outbox and clear those that
    succeeded (one that fails stays, is logged, and is tried again next time, without
    holding up the others). Returns how many were handled and cleared."""
    broker = await app.connected_broker()
    entries = await broker.outbox(limit)
    done: list[str] = []
    for entry in entries:
        envelope = _decode(entry)
        try:
            if envelope is not None:
                await settle_ended(app, envelope, entry.state)
        except BrokerUnavailable:
            raise  # the others would fail too: the caller retries them all later
        except Exception:
            logger.exception("job %s: its workflow follow-ups failed; retried", entry.job_id)
            continue
        done.append(entry.job_id)
    if done:
        await broker.clear_outbox(done)
    return len(done)


async def _after(
    app: Offload,
    origin: Envelope,
    then: list[Step],
    chord: ChordRef | None,
    end: _End,
    key: str,
) -> None:
    """What follows an end: the next stages (real on success, recorded cancelled on a
    final failure), else, at the end of a branch or on a dead step, the branch's end
    for its group."""
    if then and (end.ok or end.final):
        await _start(app, origin, then, chord, end, key)
    elif chord is not None:
        await _join(app, origin, chord, end)


async def _start(
    app: Offload, origin: Envelope, stages: list[Step], chord: ChordRef | None, end: _End, key: str
) -> None:
    broker = await app.connected_broker()
    failures = end.failures or None
    envelopes = start_envelopes(
        app, stages, end.value, origin=origin, key=key, chord=chord, failures=failures
    )
    if end.ok:
        await broker.enqueue([(e, encode_envelope(e)) for e in envelopes])
        return
    never = app.clock.now() + _NEVER_S
    stopped = [msgspec.structs.replace(e, not_before=never) for e in envelopes]
    await broker.enqueue([(e, encode_envelope(e)) for e in stopped])
    for envelope in stopped:
        await broker.cancel(envelope.id)
        await _after(app, envelope, envelope.then or [], envelope.chord, end, _next_key(envelope))
    await broker.clear_outbox([e.id for e in stopped])


async def _join(app: Offload, origin: Envelope, chord: ChordRef, end: _End) -> None:
    if end.ok:
        outcome = encode_value({"ok": end.value})
    else:
        assert end.failure is not None
        outcome = encode_value({"failed": msgspec.to_builtins(end.failure)})
    broker = await app.connected_broker()
    outcomes = await broker.join(
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
    group = msgspec.structs.replace(origin, id=chord.id)  # the group starts what follows it
    await _after(app, group, chord.then, chord.parent, group_end, f"chord:{chord.id}:callback")


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
