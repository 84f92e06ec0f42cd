"""What every broker role shares: the `Part` base (URL, clock, retention, lifecycle),
the `Capabilities` a broker declares, and the `TransactionalEnqueue` protocol.

Apart from the roles (`offload.brokers.roles`) because all of them, and the sixth,
`Ledger` (`offload.brokers.ledger`), build on it: the roles module imports this one,
never the other way round.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self, runtime_checkable

from offload._redact import redact_url
from offload.brokers.records import DEFAULT_RETENTION_S, EnqueueResult
from offload.clock import Clock, SystemClock
from offload.envelope import Envelope

__all__ = ["Capabilities", "Part", "TransactionalEnqueue"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a broker can do beyond the contract, declared instead of discovered.

    Attributes:
        transactional_enqueue: `enqueue` can join the application's own transaction.
        push_wakeup: `wait` returns early when work arrives (no polling).
        cross_process: several processes share the broker's state.
        loop_bound: the broker's connections belong to the event loop that opened
            them, so each loop needs its own instance.
        push_results: `wait_finished` returns as soon as the job ends, whichever
            process ends it (without it, only an end in this process is pushed and
            `Job.result()` re-reads with a backoff).
        blocking_enqueue: `enqueue_blocking` can store jobs from the calling thread,
            so sync producers skip the portal's thread hop.
        lapsing_leases: a lease ends at its deadline by itself: the broker hands the
            job to the next consumer once it passes, with no `reserve` taking it back
            (SQS's visibility timeout). Such a broker refuses to extend or settle a
            lease past its deadline, and the worker stops a job whose lease it could
            not extend before the deadline comes and never settles it
            (`offload.worker.lapses`). Without it a lapsed lease stays its holder's
            until another worker takes the job (see `Delivery.extend`).
    """

    transactional_enqueue: bool = False
    push_wakeup: bool = False
    push_results: bool = False
    blocking_enqueue: bool = False
    lapsing_leases: bool = False
    cross_process: bool = True
    loop_bound: bool = False


class Part(abc.ABC):  # noqa: B024 - the shared base of the roles; it has no abstract method of its own
    """What every role of a broker has: its URL, clock, retention and lifecycle.

    One object may play several roles (a full broker plays all of them); this base is
    shared, so it is initialised once.
    """

    #: Declared abilities; see `Capabilities`.
    capabilities = Capabilities()

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        self.url = url
        self.clock: Clock = clock or SystemClock()
        self.retention_s = retention_s

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)}>"

    async def connect(self) -> None:
        """Open connections and install schema; idempotent."""
        return None

    async def close(self) -> None:
        """Release every resource; idempotent."""
        return None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


@runtime_checkable
class TransactionalEnqueue(Protocol):
    """A delivery whose jobs can join the application's own database transaction
    (`capabilities.transactional_enqueue`).

    `enqueue_in` has `enqueue`'s contract, but runs on `connection` (the application's
    driver connection) and never commits: the jobs exist once the application commits,
    and never if it rolls back; no worker can see them before the commit.
    """

    def enqueue_in_sync(
        self, connection: Any, jobs: Sequence[tuple[Envelope, bytes]]
    ) -> list[EnqueueResult]: ...

    async def enqueue_in(
        self, connection: Any, jobs: Sequence[tuple[Envelope, bytes]]
    ) -> list[EnqueueResult]: ...
