"""Attempt history: what happened to each run of a job, not just the last error.

A job keeps one `ErrorInfo` (the last), which hides the story an operator needs when a
job flaps: which worker ran each attempt, when, and how each one failed. So every
attempt that ends without success is recorded apart from the job's state, by the
worker that ran it, just before it settles the job (`Broker.record_attempt`, keyed by
the lease token, so a settle retried through a broker outage records once). A broker
keeps the newest `ATTEMPTS_KEPT` records per job and counts the ones it dropped; each
record's error is bounded like every `ErrorInfo` (`envelope.clip`).

Success costs nothing: the attempt that succeeded, and the one running now, are read
from the job itself (`started_at`, `finished_at`, `worker_id`). An attempt whose
worker died (its lease lapsed) left no record: `history` shows it as `lost`.

A record may also carry the trace context of the job's first attempt (`trace`, set by
a hook such as `offload.tracing.Tracing` through `Run.first_trace`): each failed
attempt's record repeats it, so the newest record knows it even once older ones were
dropped, and a later attempt's span can link to the first one (`first_trace`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import msgspec

from offload.brokers.records import Attempt, AttemptOutcome
from offload.envelope import ErrorInfo, JobState

if TYPE_CHECKING:
    from offload.brokers.base import Broker, JobInfo

__all__ = [
    "ATTEMPTS_KEPT",
    "LOST",
    "Attempt",
    "AttemptOutcome",
    "encode",
    "first_trace",
    "history",
    "job_with_history",
]

#: Attempt records a broker keeps per job (the newest); older ones are counted only.
ATTEMPTS_KEPT = 20

#: The error shown for an attempt that left no record (its worker died or stalled).
LOST = ErrorInfo("WorkerLost", "no outcome was recorded: the worker died or its lease lapsed")


_DECODER = msgspec.json.Decoder(Attempt)


def encode(attempt: Attempt) -> bytes:
    """The stored form of a record (JSON, like every other record of offload)."""
    return msgspec.json.encode(attempt)


def _decoded(records: list[bytes]) -> list[Attempt]:
    out: list[Attempt] = []
    for raw in records:
        try:
            out.append(_DECODER.decode(raw))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # one unreadable record costs that record, not the history
    return out


def first_trace(records: list[bytes], attempt: int) -> dict[str, str] | None:
    """The trace context of the first attempt of the run that attempt number `attempt`
    continues, from the job's records (oldest first): the newest one's, if it is a
    retried attempt of that run. A dead or cancelled record ended an earlier run (the
    job was replayed since), and a record numbered `attempt` or more belongs to one
    too; None then, or when the attempts since the first left no record or no trace."""
    newest = _decoded(records[-1:])
    if not newest:
        return None
    last = newest[0]
    if last.outcome is AttemptOutcome.RETRIED and last.number < attempt:
        return last.trace
    return None


def history(info: JobInfo, records: list[bytes], dropped: int = 0) -> list[Attempt]:
    """Every attempt of the job, oldest first: the stored records (`records`, oldest
    first; `dropped` older ones were not kept), the attempts that left none (`lost`),
    and the one running or succeeded now, which is read from `info`."""
    attempts = _decoded(records)
    # The records since the last replay: attempt numbers start again at 1 after one.
    start = 0
    for i in range(1, len(attempts)):
        if attempts[i].number <= attempts[i - 1].number:
            start = i
    earlier, run = attempts[:start], attempts[start:]
    current = _current(info)
    top = info.attempt - (current is not None)
    floor = run[0].number if run and start == 0 and dropped else 1
    seen = {a.number for a in run}
    for number in range(floor, top + 1):
        if number not in seen:
            error = info.error if number == info.attempt and info.error else LOST
            run.append(Attempt(number=number, outcome=AttemptOutcome.LOST, error=error))
    run.sort(key=lambda a: a.number)
    return [*earlier, *run, *([current] if current is not None else [])]


def _current(info: JobInfo) -> Attempt | None:
    """The attempt the job's own fields describe: the one running, or the success."""
    if info.state is JobState.RUNNING:
        outcome = AttemptOutcome.RUNNING
    elif info.state is JobState.SUCCEEDED and info.attempt > 0:
        outcome = AttemptOutcome.SUCCEEDED
    else:
        return None
    finished = info.finished_at if outcome is AttemptOutcome.SUCCEEDED else None
    return Attempt(
        number=info.attempt,
        outcome=outcome,
        worker_id=info.worker_id,
        started_at=info.started_at,
        finished_at=finished,
    )


async def job_with_history(broker: Broker, job_id: str) -> JobInfo | None:
    """`broker.get_job`, with `attempts` and `attempts_dropped` filled in (one more
    broker call); None for an unknown or purged job."""
    info = await broker.get_job(job_id)
    if info is None:
        return None
    records, dropped = await broker.attempt_records(job_id)
    return replace(info, attempts=history(info, records, dropped), attempts_dropped=dropped)
