"""`Reserver`: how the Redis broker leases jobs (`reserve.lua`).

Reservation over several queues is one script on a single Redis. On a cluster, whose
queues live in different slots, it peeks at the head of each queue, then leases from
each queue its share of the best `limit` jobs, one script per queue: exact when alone,
best effort under concurrent reservations (never a job leased twice).

A worker's parking ticket (`_handoff.py`) ends in the same round trip as its next
reservation (`unpark.lua` pipelined before `reserve.lua`), whose own parking, when the
idle worker asks for it, is an argument of the same script.
"""

from __future__ import annotations

import asyncio
import heapq
import os
from collections.abc import Sequence

from offload.brokers.base import LEASE_EXPIRED, Lease
from offload.brokers.redis._executor import Executor
from offload.brokers.redis._handoff import Handoff, Ticket
from offload.brokers.redis._records import num, text
from offload.clock import Clock
from offload.codec import encode_error

__all__ = ["BATCH", "Reserver"]

_LEASE_EXPIRED = encode_error(LEASE_EXPIRED).decode()
#: Most jobs one housekeeping step of a script touches per queue (bounds script time).
BATCH = 1000


class Reserver:
    """`reserve` for `RedisBroker`, with the parking of its idle workers."""

    def __init__(
        self, x: Executor, clock: Clock, retention_s: float, cluster: bool, handoff: Handoff
    ) -> None:
        self._x = x
        self._clock = clock
        self._retention_s = retention_s
        self._cluster = cluster
        self._handoff = handoff

    async def reserve(
        self, queues: Sequence[str], worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        names = list(dict.fromkeys(queues))
        ticket = self._handoff.retire(worker_id)
        if (not names or limit <= 0) or (self._cluster and len(names) > 1):
            recovered = await self.unpark(ticket)
            if not names or limit <= 0:
                return recovered
            return recovered + await self._across_slots(names, worker_id, lease_s, limit)
        return await self.lease(names, worker_id, lease_s, limit, ticket)

    async def unpark(self, ticket: Ticket | None) -> list[Lease]:
        """End `ticket` alone; the leases handed to it that the worker was not given."""
        if ticket is None:
            return []
        call = self._handoff.unpark_call(ticket, self._x.q(ticket.queue))
        return self._handoff.recovered(ticket, await self._x.run(*call))

    def _call(
        self, names: Sequence[str], worker_id: str, lease_s: float, limit: int, peek: int = 0
    ) -> tuple[str, list[str], list[str | bytes]]:
        now = self._clock.now()
        keys = [key for queue in names for key in self._x.q(queue)]
        args: list[str | bytes] = [num(now), worker_id, num(now + lease_s), str(limit)]
        args += [os.urandom(8).hex() + ":", _LEASE_EXPIRED, num(now + self._retention_s)]
        args += [str(BATCH), str(peek), self._x.ended_channel]
        return ("reserve", keys, args)

    async def lease(
        self,
        names: Sequence[str],
        worker_id: str,
        lease_s: float,
        limit: int,
        end: Ticket | None = None,
        park: tuple[Ticket, str] | None = None,
    ) -> list[Lease]:
        """`reserve.lua`, after `unpark.lua` for the ticket `end` in the same round
        trip (its recovered leases first); with `park` (a new ticket and its end), the
        script parks the worker when nothing is ready."""
        call = self._call(names, worker_id, lease_s, limit)
        call[2].extend([park[0].member, park[1]] if park is not None else ["", ""])
        if end is not None and end.delivered and [end.queue] == list(names):
            # Handed over and received whole (a ticket is used once): only its note is
            # left, which this script drops; no `unpark` call.
            call[2].append(end.prefix)
            end = None
        if end is None:
            recovered, reply = [], await self._x.run(*call)
        else:
            unpark = self._handoff.unpark_call(end, self._x.q(end.queue))
            replies = await self._x.run_many([unpark, call])
            recovered, reply = self._handoff.recovered(end, replies[0]), replies[1]
        if park is not None and reply[:1] == [b"parked"]:
            park[0].parked = True
            park[0].due = float(reply[1]) if reply[1] else None
            return recovered
        deadline = float(call[2][2])
        return recovered + [
            Lease(
                text(reply[i + 1]),
                text(reply[i + 2]),
                names[int(reply[i]) - 1],
                int(reply[i + 3]),
                deadline,
                bytes(reply[i + 4]),
            )
            for i in range(0, len(reply), 5)
        ]

    async def _across_slots(
        self, names: Sequence[str], worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        peeks = [self._call([q], worker_id, lease_s, 0, peek=limit) for q in names]
        heads: list[tuple[float, bytes, int]] = []
        for n, reply in enumerate(await self._x.run_many(peeks)):
            pairs = reply[0]
            heads += [(float(pairs[i + 1]), pairs[i], n) for i in range(0, len(pairs), 2)]
        share: dict[int, int] = {}
        for _, _, n in heapq.nsmallest(limit, heads):
            share[n] = share.get(n, 0) + 1
        batches = await asyncio.gather(
            *(self.lease([names[n]], worker_id, lease_s, k) for n, k in share.items())
        )
        # Leases of different queues, merged back into the order of their peeked heads.
        order = {member[27:].decode(): rank for rank, (_, member, _) in enumerate(sorted(heads))}
        leases = [lease for batch in batches for lease in batch]
        return sorted(leases, key=lambda lease: order.get(lease.job_id, len(order)))
