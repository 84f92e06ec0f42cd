"""`Settler`: how the Redis broker extends and ends the leases `_reserve.py` gave out.

Every call is one pipeline of per-queue scripts (a queue's keys share one slot): an
`extend` one `extend.lua` call per queue; a `settle_many` one `ack.lua` call per queue
for its acks, and one script call for every other ending (`retry`, `defer`, `bury`,
`cancel_running`); a `release` one `release.lua` call per queue. `extend` and
`settle_many` answer, per lease, whether it was still held. Jobs that ended here are
told to `Signals`, so a `wait_finished` in this process need not wait for the pub/sub
round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from offload.brokers.base import Ending, Lease, Settlement
from offload.brokers.redis._executor import Executor
from offload.brokers.redis._records import num
from offload.brokers.redis._scripts import Call
from offload.brokers.redis._signals import Signals
from offload.clock import Clock
from offload.codec import encode_error
from offload.envelope import TERMINAL_STATES

__all__ = ["Settler"]

#: The script that records each way a lease ends but `ack` (batched per queue).
_SETTLE_SCRIPTS = {
    Ending.RETRY: "retry",
    Ending.BURY: "bury",
    Ending.DEFER: "defer",
    Ending.CANCEL: "cancel_running",
}


class Settler:
    """`extend`, `settle_many` and `release` for `RedisBroker`, on an `Executor`."""

    def __init__(self, x: Executor, clock: Clock, retention_s: float, signals: Signals) -> None:
        self._x = x
        self.clock = clock
        self.retention_s = retention_s
        self._signals = signals

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        now = self.clock.now()
        head = [num(now), num(now + lease_s)]
        return await self._per_queue(leases, "extend", head, lambda lease: [lease.token])

    async def _per_queue(
        self, leases: Sequence[Lease], script: str, head: list[str], extra: Any
    ) -> list[bool]:
        """Run `script` once per queue of `leases` (one pipeline), with `head` then the
        id and `extra(lease)` of each lease as ARGV; the per-lease 1/0 replies, in order."""
        by_queue: dict[str, list[int]] = {}
        for i, lease in enumerate(leases):
            by_queue.setdefault(lease.queue, []).append(i)
        calls: list[Call] = []
        for queue, indexes in by_queue.items():
            args: list[str | bytes] = list(head)
            for i in indexes:
                args += [leases[i].job_id, *extra(leases[i])]
            calls.append((script, self._x.q(queue), args))
        out = [False] * len(leases)
        for indexes, reply in zip(by_queue.values(), await self._x.run_many(calls), strict=True):
            for i, ok in zip(indexes, reply, strict=True):
                out[i] = bool(ok)
        return out

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        """One pipeline: the acks one `ack.lua` call per queue, every other ending one
        script call each."""
        if not settlements:
            return []
        now = self.clock.now()
        calls: list[Call] = []
        answers: list[list[int]] = []  # the settlements each call answers, in order
        acks: dict[str, list[int]] = {}
        for i, item in enumerate(settlements):
            if item.ending is Ending.ACK:
                acks.setdefault(item.lease.queue, []).append(i)
            else:
                calls.append(self._settle_call(item, now))
                answers.append([i])
        for queue, indexes in acks.items():
            args: list[str | bytes] = [num(now), self._x.ended_channel]
            for i in indexes:
                args += self._ack_args(settlements[i], now)
            calls.append(("ack", self._x.q(queue), args))
            answers.append(indexes)
        held = [False] * len(settlements)
        for indexes, reply in zip(answers, await self._x.run_many(calls), strict=True):
            for i, ok in zip(indexes, reply if isinstance(reply, list) else [reply], strict=True):
                held[i] = bool(ok)
        ended = zip(settlements, held, strict=True)
        self._signals.ended_here(
            s.lease.job_id for s, ok in ended if ok and s.state in TERMINAL_STATES
        )
        return held

    def _ack_args(self, item: Settlement, now: float) -> list[str | bytes]:
        ttl = self.retention_s if item.result_ttl_s is None else item.result_ttl_s
        flag = "0" if item.result is None else "1"
        return [item.lease.job_id, item.lease.token, flag, item.result or b"", num(now + ttl)]

    def _settle_call(self, item: Settlement, now: float) -> Call:
        """The script call of a settlement other than an ack (its reply: 1 if held)."""
        lease = item.lease
        head: list[str | bytes] = [num(now), lease.job_id, lease.token]
        error = "" if item.error is None else encode_error(item.error).decode()
        ending = item.ending
        if ending is Ending.RETRY:
            assert item.at is not None
            args = [*head, num(item.at), error, self._x.channel(lease.queue)]
        elif ending is Ending.DEFER:
            assert item.at is not None
            args = [*head, num(item.at), self._x.channel(lease.queue)]
        elif ending is Ending.BURY:
            args = [*head, error, self._x.ended_channel]
        else:
            args = [*head, error, num(now + self.retention_s), self._x.ended_channel]
        return (_SETTLE_SCRIPTS[ending], self._x.q(lease.queue), args)

    async def release(self, leases: Sequence[Lease]) -> None:
        by_queue: dict[str, list[str]] = {}
        for lease in leases:
            by_queue.setdefault(lease.queue, []).extend([lease.job_id, lease.token])
        calls: list[Call] = [
            ("release", self._x.q(queue), [self._x.channel(queue), *pairs])
            for queue, pairs in by_queue.items()
        ]
        await self._x.run_many(calls)
