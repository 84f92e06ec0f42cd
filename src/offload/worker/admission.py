"""Admission: the flow limits a job must pass right after its reservation.

A task's rate limit (`Broker.take_rate`) and concurrency limit (`Broker.acquire_slot`,
holder = job id) are checked after `reserve`, before the job runs. A job that may not
run yet is deferred (a `defer` settlement: back to `scheduled`, its attempt not counted) to
when a token or slot should be free, and the worker moves on to its next job, so jobs
of other keys and tasks are never stuck behind it.

The check is not inside `reserve`: a limited job is leased, then at once put back.
Jobs of tasks without limits cost nothing here (no decode, no broker call) when the
app declares no limits at all, and one envelope decode otherwise.

A worker spreads the jobs it defers for one key one token interval apart, so a backlog
comes back one job at a time instead of all at the instant the next token frees.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from offload.brokers.records import Settlement
from offload.codec import decode_envelope
from offload.envelope import Envelope

if TYPE_CHECKING:
    from offload.brokers.base import Broker, Lease
    from offload.clock import Clock
    from offload.limits import Limits

__all__ = ["SLOT_RETRY_S", "Admission", "Verdict"]

logger = logging.getLogger("offload.worker")

#: A job refused a concurrency slot comes back after about this long (seconds, with
#: jitter up to twice as long, spread per key); slots free when jobs end, which no
#: clock can predict.
SLOT_RETRY_S = 0.2
#: Keys whose spreading state a worker keeps before forgetting past ones.
_MAX_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """`run`: go ahead (holding `slot`, if not None, until the job settles); else the
    job was deferred. `error`: the limits could not be computed (a key function
    failed): bury the job with that reason."""

    run: bool
    slot: str | None = None
    slot_limit: int = 0
    error: str | None = None


_GO = Verdict(True)


class Admission:
    """Admits a leased job or defers it, by the limits of its task.

    Args:
        limits: the limits of each task that has any, by task name.
        broker: holds the tokens and slots.
        clock: time source for deferrals.
        lease_s: a slot's TTL (renewed with the lease).
        settle: records a deferral (the worker's batcher of settlements; by default the
            broker's `settle`); it raises `LeaseLost` for a lease no longer held.
    """

    def __init__(
        self,
        limits: Mapping[str, Limits],
        broker: Broker,
        clock: Clock,
        *,
        lease_s: float,
        settle: Callable[[Settlement], Awaitable[None]] | None = None,
    ) -> None:
        self.broker = broker
        self.clock = clock
        self.lease_s = lease_s
        self.limits = dict(limits)
        self._settle = settle or broker.settle
        self._next_at: dict[str, float] = {}

    @property
    def active(self) -> bool:
        """Whether any task has limits; if not, the worker skips admission entirely."""
        return bool(self.limits)

    async def admit(self, lease: Lease) -> Verdict:
        """Take the job's token and slot, or defer it.

        Raises:
            BrokerError: the broker failed; the job stays leased and runs again when its
                lease lapses (the attempt then counts).
        """
        try:
            envelope = decode_envelope(lease.payload)
        except Exception:
            return _GO  # the executor buries it with the reason
        limits = self.limits.get(envelope.task)
        if limits is None:
            return _GO
        try:
            slot, rate = _keys(limits, envelope)
        except Exception as exc:
            return Verdict(False, error=f"{type(exc).__name__}: {exc}")
        broker = self.broker
        if slot is not None:
            assert limits.concurrency is not None
            if not await broker.acquire_slot(
                slot, limit=limits.concurrency, holder=lease.job_id, ttl_s=self.lease_s
            ):
                delay = SLOT_RETRY_S * random.uniform(1.0, 2.0)
                await self._defer(lease, slot, delay, SLOT_RETRY_S / limits.concurrency)
                return Verdict(False)
        if rate is not None:
            assert limits.rate is not None
            wait = await broker.take_rate(rate, limit=limits.rate.limit, per_s=limits.rate.per_s)
            if wait > 0:
                if slot is not None:
                    await broker.release_slot(slot, lease.job_id)
                await self._defer(lease, rate, wait, limits.rate.per_s / limits.rate.limit)
                return Verdict(False)
        return Verdict(True, slot, limits.concurrency or 0)

    async def _defer(self, lease: Lease, key: str, wait: float, interval: float) -> None:
        now = self.clock.now()
        at = now + wait
        last = self._next_at.get(key)
        if last is not None and last + interval > at:
            at = last + interval
        if len(self._next_at) >= _MAX_KEYS:
            self._next_at = {k: t for k, t in self._next_at.items() if t > now}
        self._next_at[key] = at
        await self._settle(Settlement.defer(lease, at=at))
        logger.debug(
            "job %s deferred %.3f s by limit %s",
            lease.job_id,
            at - now,
            key,
            extra={"action": "deferred", "job_id": lease.job_id, "limit": key},
        )


def _keys(limits: Limits, envelope: Envelope) -> tuple[str | None, str | None]:
    """The job's concurrency and rate keys (None: no such limit)."""
    args, kwargs = envelope.args, envelope.kwargs
    slot = limits.slot_name(args, kwargs) if limits.concurrency is not None else None
    rate = limits.rate_name(args, kwargs) if limits.rate is not None else None
    return slot, rate
