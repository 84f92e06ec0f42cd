"""Backpressure, the same everywhere: `enqueue(max_depth=...)` stores nothing of a call
that would push a queue past `max_depth` waiting jobs (`queued` + `scheduled`).

Brokers count the waiting jobs their own way, atomically with the insert; the sums and
the error are here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from offload.envelope import Envelope
from offload.errors import QueueFull

__all__ = ["check_depth", "adding_per_queue", "queue_full"]


def adding_per_queue(jobs: Sequence[tuple[Envelope, bytes]]) -> dict[str, int]:
    """How many jobs of the call go to each queue (duplicates included), in the order
    of their first job."""
    adding: dict[str, int] = {}
    for envelope, _ in jobs:
        adding[envelope.queue] = adding.get(envelope.queue, 0) + 1
    return adding


def queue_full(queue: str, depth: int, max_depth: int) -> QueueFull:
    return QueueFull(f"queue {queue!r} holds {depth} waiting jobs (max {max_depth})")


def check_depth(adding: Mapping[str, int], depths: Mapping[str, int], max_depth: int) -> None:
    """Raise `QueueFull` for the first queue of `adding` that `depths` (its waiting jobs
    now) plus its new jobs would push past `max_depth`."""
    for queue, n in adding.items():
        if depths[queue] + n > max_depth:
            raise queue_full(queue, depths[queue], max_depth)
