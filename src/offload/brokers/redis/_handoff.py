"""Idle workers parked on their queue and handed jobs already leased (issue 16).

An idle worker used to learn of a new job from a pub/sub wake-up and then run
`reserve`: two hops after the enqueue, where a blocking pop has one. Now a worker that
waits on one queue parks there: when the `reserve` of its wait finds nothing ready,
the same script call (reserve.lua, ARGV[11]) puts a ticket in the queue's `parked`
zset: a fresh token prefix, the worker's free capacity and lease time, and its handoff
channel. An `enqueue` that makes jobs ready while a worker is parked, and finds nothing
else ready or due, leases them to that worker in the same script (the ticket is used
once), notes them in the queue's `handed` hash, and publishes the leases on the
worker's channel, which its subscriber connection already listens to: the job starts
one hop after its enqueue, without a second script call.

Why no job can be stranded:
- A handed job is an ordinary `running` lease, read the same by every script of every
  version. If its message is lost (pub/sub is at most once: a dropped subscriber
  connection), the worker's next `reserve` first runs `unpark.lua`, which ends the
  ticket and returns every job handed to it that is still leased under it; the broker
  drops those the message gave already. The worker always reserves after a wait (a
  ticket whose message arrived needs no `unpark`: that reserve drops its note).
- A worker that dies while parked: its ticket ends after its wait (`poll_s` plus
  `MARGIN_S`), and jobs handed to it meanwhile run elsewhere once their lease lapses,
  as jobs a worker reserved just before dying do. A wait cancelled while parked (the
  worker stops) unparks and gives back at once what was handed to it.
- Rolling upgrades: only new workers park and only new producers hand over. A new
  producer with old workers finds no ticket and publishes the wake-up as before; an
  old producer publishes the wake-up, on which a parked new worker reserves (which
  unparks it first). `sweep` forgets tickets and notes of workers that never came back.

A plain one-call enqueue lends the job instead (`enqueue_one.lua`, while every live
worker is at inbox level 2: `_inbox.py`): the same lease and message, but its record
waits in the queue's `lent` list until the next script of the queue writes it
(`expand_lent` in `_inbox.lua`, with the `handed` note): fewer Redis calls between the
enqueue and the message, which is most of what an idle worker's pick-up waits for.

The ticket that ends first is served, so idle workers take turns: each parks again
after its handoff, behind the others. Only a worker of one queue parks (its ticket,
`parked` and `handed` are in that queue's slot, so this works on a cluster as well);
several queues keep the wake-up and `reserve`, which picks the best job across them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from offload.brokers.base import Lease
from offload.brokers.redis import keys as K
from offload.brokers.redis._records import text
from offload.brokers.redis._scripts import Call

__all__ = ["MARGIN_S", "Handoff", "Ticket"]

#: How long a ticket outlives the wait it was taken for, in seconds: covers the
#: worker's own delay between the end of its wait and its next `reserve`.
MARGIN_S = 2.0


@dataclass(slots=True)
class Ticket:
    """One parking of one worker in one queue."""

    queue: str
    prefix: str  # the token prefix of the leases handed to it
    member: bytes  # as in the queue's `parked` zset
    inbox: list[Lease] = field(default_factory=list)  # received, not yet taken
    delivered: set[str] = field(default_factory=set)  # job ids the worker was given
    parked: bool = False  # known to be in `parked` (else it never was: no unpark needed)
    due: float | None = None  # when parked: the first delayed job's due time


class Handoff:
    """The tickets of the workers of one broker (one at a time per worker)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._current: dict[str, Ticket] = {}  # worker id -> its last ticket
        self._by_prefix: dict[str, Ticket] = {}

    def channel(self, worker_id: str) -> str:
        return K.handoff_channel(self._prefix, worker_id)

    def issue(self, queue: str, worker_id: str, lease_s: float, limit: int) -> Ticket:
        """A new ticket for `worker_id` (which must have none: `retire` it first)."""
        prefix = os.urandom(8).hex() + ":"
        member = msgspec.msgpack.encode(
            [prefix, limit, lease_s, self.channel(worker_id), worker_id]
        )
        ticket = Ticket(queue, prefix, member)
        self._current[worker_id] = self._by_prefix[prefix] = ticket
        return ticket

    def retire(self, worker_id: str) -> Ticket | None:
        """Take the worker's ticket out of use (its `unpark` call is the caller's):
        messages for it are ignored from now on, `unpark` returns what they held."""
        ticket = self._current.pop(worker_id, None)
        if ticket is not None:
            self._by_prefix.pop(ticket.prefix, None)
        return ticket

    def take(self, ticket: Ticket) -> list[Lease]:
        """The leases received for `ticket` since the last call, now the worker's."""
        leases, ticket.inbox = ticket.inbox, []
        ticket.delivered.update(lease.job_id for lease in leases)
        return leases

    @staticmethod
    def unpark_call(ticket: Ticket, keys: Sequence[str]) -> Call:
        return ("unpark", keys, [ticket.member, ticket.prefix])

    @staticmethod
    def recovered(ticket: Ticket, reply: Sequence[Any]) -> list[Lease]:
        """The leases of an `unpark` reply the worker was not given yet."""
        return [
            Lease(
                text(reply[i]),
                text(reply[i + 1]),
                ticket.queue,
                int(reply[i + 2]),
                float(reply[i + 3]),
                bytes(reply[i + 4]),
            )
            for i in range(0, len(reply), 5)
            if text(reply[i]) not in ticket.delivered
        ]

    def received(self, data: bytes) -> None:
        """A message on a handoff channel (the listener's handler): netstrings of the
        token prefix, the lease deadline, then id, token, attempt and payload per job.
        One for a retired ticket is dropped (`unpark` returned its jobs); one that does
        not parse is dropped too (its jobs come back by `unpark`, or lapse)."""
        try:
            fields = _netstrings(data)
            ticket = self._by_prefix.get(fields[0].decode())
            if ticket is None:
                return
            deadline = float(fields[1])
            leases = [
                Lease(
                    fields[i].decode(),
                    fields[i + 1].decode(),
                    ticket.queue,
                    int(fields[i + 2]),
                    deadline,
                    fields[i + 3],
                )
                for i in range(2, len(fields) - 3, 4)
            ]
        except (ValueError, IndexError, UnicodeDecodeError):
            return
        ticket.inbox.extend(leases)


def _netstrings(data: bytes) -> list[bytes]:
    """`<length>:<bytes>` fields one after another (how `enqueue.lua` packs a message)."""
    fields: list[bytes] = []
    at = 0
    while at < len(data):
        colon = data.index(b":", at)
        end = colon + 1 + int(data[at:colon])
        if end > len(data):
            raise ValueError("a field runs past the end of the message")
        fields.append(data[colon + 1 : end])
        at = end
    return fields
