"""Workflow follow-ups (`offload.workflow`), done by the worker before it settles a job.

Both run *before* the job's ack or bury, and both are idempotent, so a crash in
between only makes the job run (or be buried) again, which repeats them harmlessly:
the next chain step and the chord callback are enqueued under deterministic keys,
and `Broker.join` records a member once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from offload.codec import decode_value, encode_envelope, encode_value
from offload.workflow import step_envelope

if TYPE_CHECKING:
    from offload.app import Offload
    from offload.brokers.base import Lease
    from offload.job import Envelope
    from offload.worker.executor import Outcome

__all__ = ["follow_up"]


async def follow_up(app: Offload, lease: Lease, outcome: Outcome) -> None:
    """Enqueue what a finished job's workflow asks for.

    The outcome's action is `ack`, `bury` or `cancel` (a retry is not terminal).
    Only a success continues a chain, and only if the step was not cancelled while
    it ran; any terminal outcome counts for a chord (a failed or cancelled member's
    result is None).
    """
    envelope, action, result = outcome.envelope, outcome.action, outcome.result
    if envelope is None or action == "retry":
        return
    if action == "ack" and envelope.then and not await app.broker.cancel_requested([lease]):
        await _next_step(app, envelope, result)
    if envelope.chord is not None and action in ("ack", "bury", "cancel"):
        await _join(app, envelope, result if action == "ack" else None)


async def _next_step(app: Offload, envelope: Envelope, result: bytes | None) -> None:
    assert envelope.then
    step, *rest = envelope.then
    value = None if result is None else decode_value(result)
    following = step_envelope(
        app, step, value, parent=envelope, key=f"chain:{envelope.id}:next", then=rest or None
    )
    await app.broker.enqueue([(following, encode_envelope(following))])


async def _join(app: Offload, envelope: Envelope, result: bytes | None) -> None:
    chord = envelope.chord
    assert chord is not None
    outcomes = await app.broker.join(
        chord.id,
        envelope.id,
        index=chord.index,
        total=chord.total,
        outcome=encode_value(None) if result is None else result,
    )
    if outcomes is None:
        return
    values = [decode_value(outcome) for outcome in outcomes]
    callback = step_envelope(
        app, chord.callback, values, parent=envelope, key=f"chord:{chord.id}:callback"
    )
    callback = msgspec.structs.replace(callback, parent_id=chord.id)
    await app.broker.enqueue([(callback, encode_envelope(callback))])
