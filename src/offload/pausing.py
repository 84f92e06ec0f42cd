"""Pause and resume: hold a queue (or a schedule) across the whole fleet, durably.

During an incident an operator must stop work of one kind without stopping the
producers or the workers: a paused queue still accepts enqueues and keeps its jobs,
and no worker reserves from it until it is resumed; a paused schedule fires nothing.
The flags live in the broker (`Broker.set_paused` / `Broker.paused`), so they hold for
every worker, survive restarts, and need no message to each worker.

Workers learn a pause by asking (`PauseView`): before a reservation, if their view is
older than `POLL_S`, so no worker reserves from a paused queue later than `POLL_S`
plus one reservation after the pause (the reserve path itself is left alone: no broker
has to filter). A resumed queue is taken again within `POLL_S` plus the idle poll.

Flags are named `queue:<name>` and `schedule:<id>`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from offload import validation

if TYPE_CHECKING:
    from offload.brokers.base import Broker

__all__ = ["POLL_S", "Paused", "PauseView", "paused", "set_queue", "set_schedule"]

#: How old (seconds) a worker's view of the pause flags may be when it reserves.
POLL_S = 0.5

_QUEUE = "queue:"
_SCHEDULE = "schedule:"


@dataclass(frozen=True, slots=True)
class Paused:
    """The paused queues and schedules, each with the time (Unix epoch) of its pause."""

    queues: dict[str, float]
    schedules: dict[str, float]


async def set_queue(broker: Broker, queue: str, paused: bool) -> bool:
    """Pause or resume `queue`; True if that changed it."""
    return await broker.set_paused(_QUEUE + validation.queue_name(queue), paused)


async def set_schedule(broker: Broker, schedule_id: str, paused: bool) -> bool:
    """Pause or resume the schedule `schedule_id`; True if that changed it."""
    name = validation.task_name(schedule_id, "schedule id")
    return await broker.set_paused(_SCHEDULE + name, paused)


async def paused(broker: Broker) -> Paused:
    """What is paused now."""
    flags = await broker.paused()
    return Paused(
        queues={k.removeprefix(_QUEUE): t for k, t in flags.items() if k.startswith(_QUEUE)},
        schedules={
            k.removeprefix(_SCHEDULE): t for k, t in flags.items() if k.startswith(_SCHEDULE)
        },
    )


class PauseView:
    """One process's view of the flags, read again when older than `max_age_s`."""

    def __init__(self, max_age_s: float = POLL_S) -> None:
        self.max_age_s = max_age_s
        self._read_at = -float("inf")  # monotonic
        self._current = Paused({}, {})

    async def current(self, broker: Broker) -> Paused:
        """The flags as of at most `max_age_s` ago (raises what the broker raises)."""
        if time.monotonic() - self._read_at >= self.max_age_s:
            self._current = await paused(broker)
            self._read_at = time.monotonic()
        return self._current

    async def active(self, broker: Broker, queues: Sequence[str]) -> list[str]:
        """`queues` without the paused ones."""
        held = (await self.current(broker)).queues
        return [q for q in queues if q not in held]

    def forget(self) -> None:
        """Read the flags again at the next call."""
        self._read_at = -float("inf")
