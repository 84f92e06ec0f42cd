"""A delivery held by this process: what the consumer callback reads from each message,
once (`offload.brokers.amqp.delivery`)."""

from __future__ import annotations

from typing import TypeVar

import aiormq.abc
from pamqp import commands as spec
from pamqp.common import FieldTable

from offload.brokers.amqp.topology import STAMP_HEADER

__all__ = ["NOTES_KEPT", "Held", "Ready", "note", "stamp_of", "token_of"]


T = TypeVar("T")


class Held:
    """One unacknowledged delivery held by this process, its fields read once.

    Made by the consumer callback for every message, so it reads what the rest needs
    from aiormq's message once (no property chain per access)."""

    __slots__ = (
        "body",
        "channel",
        "generation",
        "headers",
        "message_id",
        "priority",
        "properties",
        "queue",
        "received",
        "redelivered",
        "stamp",
        "tag",
        "warned",
    )

    def __init__(
        self, queue: str, message: aiormq.abc.DeliveredMessage, generation: int, received: float
    ) -> None:
        deliver = message.delivery
        assert isinstance(deliver, spec.Basic.Deliver)  # consumers get nothing else
        assert deliver.delivery_tag is not None  # a Basic.Deliver always carries one
        properties = message.header.properties
        self.queue = queue
        self.channel = message.channel
        self.body = message.body
        self.tag: int = deliver.delivery_tag
        self.redelivered = bool(deliver.redelivered)
        self.properties = properties
        self.headers: FieldTable = properties.headers or {}
        self.priority: int = properties.priority or 0
        self.message_id = str(properties.message_id)
        self.generation = generation
        self.received = received
        self.warned = False
        self.stamp = stamp_of(properties.correlation_id, self.headers)

    def header(self, name: str) -> int | None:
        value = self.headers.get(name)
        return value if isinstance(value, int) else None


def stamp_of(correlation_id: str | None, headers: FieldTable) -> str | None:
    """The state store's stamp: the `correlation_id` of a copy the store published (or
    its `offload-stamp` header, where earlier versions put it)."""
    if correlation_id is not None:
        return correlation_id
    value = headers.get(STAMP_HEADER) if headers else None
    if isinstance(value, bytes):
        value = value.decode()
    return value if isinstance(value, str) else None


#: A ready delivery in the heap: (-priority, arrival, delivery); `arrival` is unique, so
#: tuples compare in C and never reach the delivery.
Ready = tuple[int, int, Held]


def token_of(delivery: Held) -> str:
    """A lease's token: its session and delivery tag, unique for the process's life."""
    return f"{delivery.generation}.{delivery.tag}"


#: Most jobs a consumer keeps a note of across lost connections (`note`).
NOTES_KEPT = 10_000


def note(notes: dict[str, T], job_id: str, value: T) -> None:
    """Note `value` for `job_id` in `notes`, forgetting the oldest past `NOTES_KEPT`."""
    notes[job_id] = value
    while len(notes) > NOTES_KEPT:
        del notes[next(iter(notes))]
