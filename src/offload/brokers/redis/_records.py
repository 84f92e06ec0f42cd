"""Conversions between the broker's Python values and what the scripts store.

Times travel to Lua as `repr(float)` strings, which Lua's `tonumber` reads back to the
same double, and records come back as msgpack maps (see `keys.py` for their fields).
"""

from __future__ import annotations

from typing import Any

import msgspec

from offload.brokers.base import JobInfo
from offload.codec import decode_error
from offload.envelope import JobState

__all__ = ["job_info", "num", "opt", "text"]


def num(value: float) -> str:
    """A number as Lua reads it back exactly."""
    return repr(float(value))


def opt(value: float | int | str | None) -> str:
    """An optional value; '' stands for None."""
    if value is None:
        return ""
    return value if isinstance(value, str) else repr(value)


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _float(record: dict[str, Any], field: str) -> float | None:
    value = record.get(field)
    return None if value is None else float(value)


def job_info(
    job_id: str, queue: str, raw: bytes, payload: bytes | None, result: bytes | None
) -> JobInfo:
    """The `JobInfo` of one job from its record, payload and result; a record that
    cannot be read (garbage, a field missing or of the wrong type) shows as undecodable
    instead of raising, so one bad record never breaks a listing."""
    try:
        return _job_info(job_id, queue, raw, payload, result)
    except (msgspec.DecodeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        return JobInfo.undecodable(job_id, queue, problem[:200], payload or b"")


def _job_info(
    job_id: str, queue: str, raw: bytes, payload: bytes | None, result: bytes | None
) -> JobInfo:
    r: dict[str, Any] = msgspec.msgpack.decode(raw)
    error = r.get("e")
    max_attempts = r.get("m")
    return JobInfo(
        id=job_id,
        task=r["tk"],
        queue=queue,
        state=JobState(r["s"]),
        priority=int(r["p"]),
        attempt=int(r["a"]),
        max_attempts=None if max_attempts is None else int(max_attempts),
        key=r.get("k"),
        created_at=float(r["c"]),
        due_at=float(r["d"]),
        expires_at=_float(r, "x"),
        started_at=_float(r, "st"),
        finished_at=_float(r, "f"),
        worker_id=r.get("w"),
        lease_deadline=_float(r, "dl"),
        error=decode_error(error),
        payload=payload or b"",
        result=result,
        cancel_requested=bool(r.get("cx")),
    )
