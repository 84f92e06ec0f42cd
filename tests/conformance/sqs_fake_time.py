"""SQS for the conformance suite, whose tests move a FakeClock instead of waiting.

Delays, retries and expiry live in the state store, on the test's clock, so they
follow it. The one thing SQS times itself is the visibility timeout (the lease): on
SQS it lapses in real time, 30 s after a test's reservation. `FakeTimeSQS` makes it
lapse on the fake clock instead: before each reservation, every message it holds
whose lease the fake clock has passed is made visible again at once
(ChangeMessageVisibility to 0, as SQS does by itself at the real deadline), so
`clock.advance(31)` redelivers a job as 31 real seconds would.
"""

from __future__ import annotations

from collections.abc import Sequence

from offload.brokers.records import Lease
from offload.brokers.sqs import SQSBroker

__all__ = ["FakeTimeSQS"]


class FakeTimeSQS(SQSBroker):
    """`SQSBroker` whose leases lapse on its (fake) clock (see the module docstring)."""

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        now = self.clock.now()
        for receipt, message in list(self._held.items()):
            if self.sqs.deadline(message) <= now:
                del self._held[receipt]
                await self.sqs.client.call(
                    "change_message_visibility",
                    QueueUrl=message.queue_url,
                    ReceiptHandle=receipt,
                    VisibilityTimeout=0,
                )
        return await super().reserve(queues, worker_id=worker_id, lease_s=lease_s, limit=limit)
