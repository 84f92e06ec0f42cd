"""The last step of a worker stopping past its grace period (`Worker._abandon`): give
the jobs whose handlers were stopped back to run again at once, and, where a handler
cannot be stopped (sync, in a thread), end the process instead of giving its job back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from offload import attempts as history
from offload.brokers.records import Settlement
from offload.envelope import ErrorInfo

if TYPE_CHECKING:
    from offload.brokers.base import Broker, Lease

__all__ = ["end_process", "give_back"]

logger = logging.getLogger("offload.worker")


async def give_back(
    broker: Broker, leases: Sequence[Lease], now: float, worker_id: str | None = None
) -> None:
    """Schedule jobs whose handlers were stopped to run again at `now` (the attempt
    counts, and is recorded in the job's history), all in one `settle_many`; a job that
    cannot be given back (or whose lease is gone) runs again once its lease lapses."""
    if not leases:
        return
    error = ErrorInfo("WorkerShutdown", "the worker stopped before the job finished")
    try:
        for lease in leases:
            attempt = history.Attempt(
                number=lease.attempt,
                outcome=history.AttemptOutcome.RETRIED,
                worker_id=worker_id,
                finished_at=now,
                error=error,
            )
            await broker.record_attempt(
                lease.job_id, lease.token, history.encode(attempt), keep=history.ATTEMPTS_KEPT
            )
        await broker.settle_many([Settlement.retry(lease, at=now, error=error) for lease in leases])
    except Exception:
        logger.exception(
            "%d jobs could not be given back; they run again once their leases lapse",
            len(leases),
        )
    logger.warning(
        "%d jobs did not finish within the grace period; they will run again",
        len(leases),
        extra={"action": "retried"},
    )


def end_process(stuck: int, lease_s: float, worker_id: str, *, code: int = 0) -> NoReturn:
    """End the process now (exit status `code`), all its threads with it, leaving the
    jobs of the handlers that cannot be stopped leased: they run again elsewhere once
    the leases lapse. Giving them back first would let another worker start them while
    they still run here."""
    logger.warning(
        "%d running jobs cannot be stopped (sync handlers, in threads); ending the process "
        "now: they run again elsewhere once their leases lapse, within %.0f s",
        stuck,
        lease_s,
        extra={"action": "abandoned", "worker_id": worker_id},
    )
    logging.shutdown()  # flushes every handler: os._exit skips that
    os._exit(code)
