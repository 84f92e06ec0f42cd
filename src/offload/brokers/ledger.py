"""The sixth role, `Ledger`: what makes a full broker the state store of a broker that
can only deliver (`offload.brokers.composite`), and `PUBLISH_GRACE_S`, its one timing.

Apart from the five roles (`offload.brokers.roles`) because only the state stores
(memory, SQLite, PostgreSQL) and `Composite` deal with it; a broker plays it by
inheriting it beside `Broker`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence

from offload.brokers.part import Part
from offload.brokers.records import EnqueueResult, Lease, Outgoing
from offload.envelope import Envelope
from offload.errors import BrokerError

__all__ = ["PUBLISH_GRACE_S", "Ledger"]

logger = logging.getLogger("offload.brokers")

#: How long a job the state store handed to a delivery (`Ledger.record`, `Ledger.due`)
#: may stay unconfirmed (`Ledger.published`) before `Ledger.due` hands it out again, in
#: seconds: a publisher that died or failed between the two must not lose the job.
PUBLISH_GRACE_S = 30.0


class Ledger(Part):
    """The state of jobs that another part delivers: what makes a full broker the
    state store of a delivery-only broker (`offload.brokers.composite`).

    A ledger job is an ordinary job of the store (every other role sees it: keys,
    results, progress, cancel, the outbox, inspection), except that the store's own
    `reserve` never hands it out and never takes its lease back: the delivery holds
    its copies, and the store decides which delivered copy runs (`claim`). Delays and
    retries wait in the store as `scheduled`, and are published when due (`due`), so
    the delivery needs no timers. Every method is one atomic operation.

        record ──► queued (a copy published) ──claim──► running ──settle_many──► …
        retry/defer/replay ──► scheduled/queued ──due (a new copy)──► queued ──claim──► …
    """

    @abc.abstractmethod
    async def record(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> tuple[list[EnqueueResult], list[Outgoing]]:
        """Store jobs as `enqueue` does (keys, duplicate ids, `max_depth`, expiry, due
        times, `QueueFull`), as ledger jobs. Returns `enqueue`'s results, and the jobs
        to publish now (created and due), each with a fresh stamp and unconfirmed
        until `published` (else `due` hands it out again after `PUBLISH_GRACE_S`)."""

    @abc.abstractmethod
    async def published(self, jobs: Sequence[Outgoing]) -> None:
        """The delivery holds these copies: they need not be published again.
        Idempotent; a copy whose stamp is no longer the job's is ignored."""

    @abc.abstractmethod
    async def due(self, queues: Sequence[str], *, limit: int) -> list[Outgoing]:
        """Up to `limit` ledger jobs of `queues` to publish now, each with a fresh
        stamp (any older copy is then refused by `claim`): `scheduled` ones that are
        due (they become `queued`; those past `expires_at` expire instead), and
        `queued` ones left unconfirmed for `PUBLISH_GRACE_S` (a failed publish) or
        replayed from the dead-letter queue. Each is unconfirmed until `published`."""

    @abc.abstractmethod
    async def claim(
        self, delivered: Sequence[Lease], *, worker_id: str, lease_s: float
    ) -> list[Lease | None]:
        """Decide, for each copy the delivery handed this worker (its lease, with
        `stamp`), whether it runs: its store lease (`running`, the attempt counted, a
        fresh token, `deadline = now + lease_s`, the payload the store holds: a copy's
        own may be empty), or None: the delivery must drop the copy (acknowledge it
        unrun).

        Claimed: a `queued` job whose stamp matches, and a `running` one whose stamp
        matches (the same copy delivered again: its holder died or lost its
        connection, so its lease is taken back and the attempt counted, as a lapsed
        lease). Refused: an unknown job, a stale stamp, a job `scheduled`, finished,
        cancelled, or past `expires_at` (it becomes `expired` then, recorded in the
        outbox).
        """

    async def claim_due(
        self,
        delivered: Sequence[Lease],
        queues: Sequence[str],
        *,
        worker_id: str,
        lease_s: float,
        limit: int,
    ) -> tuple[list[Lease | None], list[Outgoing]]:
        """`claim`, then `due` of `queues`: one call, which a store may answer in one
        transaction (SQLite does: one trip to its thread, one write for both). Here
        two calls: if `due` fails, the claims stand and nothing is due (the caller
        asks again at its next poll).

        Raises:
            BrokerError: the claim failed (nothing claimed).
        """
        claimed = await self.claim(delivered, worker_id=worker_id, lease_s=lease_s)
        try:
            return claimed, await self.due(queues, limit=limit)
        except BrokerError as exc:
            logger.warning("asking the state store for due jobs failed: %s", exc)
            return claimed, []
