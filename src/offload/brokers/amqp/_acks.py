"""Acknowledgements that wait a moment for others, so one `multiple` ack frame ends
many jobs (`offload.brokers.amqp.delivery`).

A worker settles jobs in batches as they end: about 8 jobs per batch on the benchmark
machine, each batch one ack frame that this process marshals and writes and RabbitMQ
reads. An ack has no reply in AMQP, so waiting for its frame to be written proves
nothing more than queueing it does: a connection lost just after either brings the
job back (RabbitMQ requeues what was not acknowledged when the connection ends). So a
settled job's ack waits here up to `LINGER_S` (or until `BATCH` are waiting) and goes
out with the others in one frame: a bare aiormq consumer spends about 6 µs less CPU per
message acknowledging every 50 deliveries than every 8 (benchmarks/README.md,
"RabbitMQ").

What it costs: a job whose ack is still waiting here when the process is killed, or its
connection lost, runs again (at-least-once, as for a kill just before the settlement;
the window is `LINGER_S` longer). A lost connection is logged, with how many jobs will
run again. `flush` sends what waits at once (the broker's `close`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from offload.brokers.amqp._held import Held
from offload.errors import BrokerUnavailable

__all__ = ["BATCH", "LINGER_S", "AckLinger"]

logger = logging.getLogger("offload.brokers.amqp")

#: How long (seconds) a settled job's ack may wait for others to share its frame.
LINGER_S = 0.002
#: How many acks may wait before they are sent at once (well under a worker's
#: prefetch: a waiting ack still holds its delivery's place in RabbitMQ's window).
BATCH = 64


class AckLinger:
    """The acks waiting to be sent (see the module docstring).

    Args:
        send: acknowledge deliveries of the live session (`Settling._ack_many`).
        alive: whether a delivery's session is still the live one.
        lost: told of the deliveries whose ack could not be sent.
    """

    def __init__(
        self,
        send: Callable[[list[Held]], Awaitable[None]],
        alive: Callable[[Held], bool],
        *,
        lost: Callable[[list[Held]], None] = lambda _: None,
    ) -> None:
        self._send = send
        self._alive = alive
        self._lost = lost
        self._waiting: list[Held] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sender: asyncio.Task[None] | None = None

    def add(self, deliveries: list[Held]) -> None:
        """Acknowledge `deliveries` within `LINGER_S`, with whatever else waits then."""
        if not deliveries:
            return
        self._waiting += deliveries
        if len(self._waiting) >= BATCH:
            self._due()
        elif self._timer is None and self._sender is None:
            self._timer = asyncio.get_running_loop().call_later(LINGER_S, self._due)

    def _due(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._drain(), name="acks")

    async def _drain(self) -> None:
        """Send what waits, and what arrived meanwhile, until nothing does."""
        try:
            while self._waiting:
                batch = [d for d in self._waiting if self._alive(d)]
                gone = [d for d in self._waiting if not self._alive(d)]
                lost = len(gone)
                self._lost(gone)
                self._waiting = []
                try:
                    await self._send(batch)
                except BrokerUnavailable as exc:
                    self._lost(batch)
                    lost += len(batch)
                    logger.warning(
                        "%d finished jobs' acknowledgements were not sent (%s); RabbitMQ "
                        "gives those jobs out again",
                        lost,
                        exc,
                        extra={"action": "acks_lost", "jobs": lost},
                    )
                else:
                    if lost:
                        logger.warning(
                            "RabbitMQ connection lost before %d finished jobs were "
                            "acknowledged; RabbitMQ gives those jobs out again",
                            lost,
                            extra={"action": "acks_lost", "jobs": lost},
                        )
        finally:
            self._sender = None

    async def flush(self) -> None:
        """Send every waiting ack now, and return once they are queued."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sender is not None:
            await asyncio.shield(self._sender)
        if self._waiting:
            self._due()
            if self._sender is not None:
                await asyncio.shield(self._sender)
