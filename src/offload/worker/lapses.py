"""Leases that lapse by themselves (`Capabilities.lapsing_leases`: SQS).

On the SQL and Redis brokers a lease past its deadline stays its worker's until another
worker's `reserve` takes the job back, and the broker checks the token at every
settlement; so a worker cut off for longer than its lease loses nothing by carrying on.
On SQS the visibility timeout ends by itself: at the deadline the message is visible
again and the next receive hands the job to another worker, while this one may still
run it, and a delete with the old receipt "succeeds" without deleting anything. So the
rule "a job is never handed back while this process may still run it" needs more from
the worker there:

- the deadline this worker can prove for each lease is kept here: the reservation's,
  then, after each extension SQS accepted, the time the extension was *asked* plus the
  lease (never later than the real one);
- a job whose proven deadline comes within `stop_before_s` (a sixth of the lease, at
  least a second) is stopped: an async handler is cancelled, a child process killed, an
  unstarted job dropped; its outcome is never settled (`dropped`), and it runs again
  once SQS hands it out. The check runs on a timer of its own, so an extension stuck
  in a hung call does not delay it;
- an extension SQS refuses stops the job the same way;
- a sync handler in a thread cannot be stopped: the CLI's worker (`hard_exit`) ends the
  process (`EXIT_LEASE_LAPSED`) so that it never runs beside its next delivery; an
  embedded worker logs an error and drops the outcome.

Extensions come every third of the lease, so a healthy worker is two thirds of a lease
away from any deadline, and a broker that fails for half a lease stops its jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from offload.brokers.records import Lease
from offload.clock import Clock

__all__ = ["EXIT_LEASE_LAPSED", "Lapses"]

#: The part of the lease before its deadline at which an unextended job is stopped.
STOP_BEFORE = 1 / 6
#: ... but never less than this many seconds (SQS's own margin is one second).
MIN_STOP_BEFORE_S = 1.0
#: The exit code of a CLI worker that ended itself because a sync handler's lease lapsed
#: (EX_UNAVAILABLE: the broker would not keep the lease); its supervisor restarts it.
EXIT_LEASE_LAPSED = 69


class Lapses:
    """The deadlines a worker can prove for its leases, and which jobs must stop (see
    the module docstring). One per worker; used from its event loop only."""

    def __init__(self, lease_s: float, clock: Clock) -> None:
        self.lease_s = lease_s
        self.clock = clock
        self.stop_before_s = max(MIN_STOP_BEFORE_S, lease_s * STOP_BEFORE)
        self._until: dict[str, float] = {}  # lease token -> proven deadline
        self._dropped: set[str] = set()  # tokens of the leases given up

    def hold(self, leases: Sequence[Lease]) -> None:
        """Start tracking freshly reserved leases."""
        for lease in leases:
            self._until.setdefault(lease.token, lease.deadline)

    def extended(self, leases: Sequence[Lease], answers: Sequence[bool], asked_at: float) -> None:
        """Record an extension asked at `asked_at` (before the call) and its answers."""
        for lease, ok in zip(leases, answers, strict=True):
            if ok and lease.token in self._until:
                self._until[lease.token] = max(self._until[lease.token], asked_at + self.lease_s)

    def lapsing(self, leases: Sequence[Lease]) -> list[Lease]:
        """The leases among `leases` whose proven deadline is too close to keep running
        (and that are not given up already)."""
        limit = self.clock.now() + self.stop_before_s
        return [
            lease
            for lease in leases
            if lease.token not in self._dropped
            and self._until.get(lease.token, lease.deadline) <= limit
        ]

    def drop(self, lease: Lease) -> bool:
        """Give the lease up: its outcome must never be settled. False if it was already."""
        if lease.token in self._dropped:
            return False
        self._dropped.add(lease.token)
        return True

    def dropped(self, lease: Lease) -> bool:
        return lease.token in self._dropped

    def forget(self, lease: Lease) -> None:
        """The job is done here (settled, dropped and stopped, or given back)."""
        self._until.pop(lease.token, None)
        self._dropped.discard(lease.token)

    async def watch(
        self, held: Callable[[], list[Lease]], stop: Callable[[Lease, str], None]
    ) -> None:
        """Forever: `stop` every held lease that is lapsing, checking a few times per
        `stop_before_s` (no broker call: a hung one cannot hold this up)."""
        period = min(1.0, self.stop_before_s / 4)
        while True:
            for lease in self.lapsing(held()):
                stop(lease, "its lease could not be extended before its deadline")
            await asyncio.sleep(period)
