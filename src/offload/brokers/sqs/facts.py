"""What SQS itself knows of an offload queue, for an `sqs://` broker without a state
store (`offload.brokers.stateless`): its approximate counts (ready as queued, leased as
running, delayed as scheduled, the dead-letter queue as dead; retries wait as delayed
too), the queues under the prefix (from their tags), and its dead-letter queues."""

from __future__ import annotations

from collections.abc import Sequence

from offload.brokers.facts import QueueFacts
from offload.brokers.records import QueueStats
from offload.brokers.sqs.delivery import SQSDelivery
from offload.envelope import JobState

__all__ = ["STATE_SETTING", "SQSFacts"]

#: How a user gives an sqs:// broker its state store, quoted by every refusal.
STATE_SETTING = (
    "state= in the sqs:// URL (a postgresql:// or sqlite:/// URL, percent-encoded), "
    "state_url= or OFFLOAD_STATE_URL"
)


class SQSFacts(QueueFacts):
    setting = STATE_SETTING
    scheme = "sqs"

    def __init__(self, sqs: SQSDelivery) -> None:
        self._sqs = sqs

    async def stats(self, queue: str) -> QueueStats:
        """SQS's approximate counts (eventually consistent, about a minute)."""
        depth = await self._sqs.depth(queue)
        return QueueStats(
            {
                JobState.QUEUED: depth["ready"],
                JobState.RUNNING: depth["leased"],
                JobState.SCHEDULED: depth["delayed"],
                JobState.DEAD: depth["dead"],
            }
        )

    async def names(self) -> list[str]:
        return await self._sqs.topology.listed()

    async def replay_dead(self, queue: str, job_ids: Sequence[str] | None) -> int:
        return await self._sqs.replay_dead(queue, job_ids)

    async def purge_dead(self, queue: str, job_ids: Sequence[str] | None) -> int:
        return await self._sqs.purge_dead(queue, job_ids)
