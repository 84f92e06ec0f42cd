"""How a job travels as an SQS message: the body, the attributes, the size rule.

The body is the job's bytes (the envelope JSON, or whatever the caller sends) as
text when SQS accepts it as text, else base64 (SQS bodies must be XML characters:
bytes that are not UTF-8, or U+FFFE/U+FFFF, would be refused). Attributes carry what
offload needs before it decodes the body, so a message it cannot decode is still
accounted for:

    offload-job       the job id
    offload-queue     the offload queue name (SQS names may be hashed)
    offload-attempt   attempts used before this message was sent; the attempt of a
                      delivery is this plus SQS's ApproximateReceiveCount, so a worker
                      that dies mid-run (its visibility lapses) costs an attempt
    offload-due       epoch seconds: not before then (a delay past SQS's 15 minutes
                      is sent in hops, see `delivery.py`)
    offload-send      the send id, the same for every copy of one logical send (a
                      delay's hops, a move repeated after a crash): a FIFO queue's
                      deduplication id
    offload-expires   epoch seconds: a job received after then is not run
    offload-stamp     the copy's stamp, for a job published for a state store: the
                      store runs only the copy whose stamp it holds (`Ledger.claim`);
                      kept by every move of the message
    offload-encoding  `base64` when the body is not plain text
    offload-error     on a dead-lettered message: why (JSON `ErrorInfo`)

A message is refused before any request when its body and attributes pass the
queue's size limit (`max_message_bytes`, SQS's 256 KiB by default): a
`SerializationError` naming the job and both sizes.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

from offload.errors import SerializationError

__all__ = ["Outgoing", "Received", "attribute", "decode_body", "encode_message", "message_size"]

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send: job `job_id` of offload queue `queue`, not before `due`
    (epoch seconds; None: now), with `attempt` attempts already used."""

    job_id: str
    queue: str
    body: bytes
    attempt: int = 0
    due: float | None = None
    error: str | None = None  # JSON ErrorInfo, for a dead-lettered message
    send_id: str | None = None  # the same for every copy of one logical send (FIFO dedup)
    expires: float | None = None  # epoch seconds: not to be run after then
    stamp: str | None = None  # the state store's name for this copy (`Ledger.claim`)


@dataclass(frozen=True, slots=True)
class Received:
    """One received message: leased (invisible to others) until `deadline`.

    `attempt` counts this delivery (1 for the first run of a fresh job); `receipt` is
    SQS's receipt handle, the proof of this lease; `received_at` is when this process
    first received it (SQS's 12-hour visibility cap counts from there).
    """

    job_id: str
    queue: str
    body: bytes
    attempt: int
    receipt: str
    deadline: float
    received_at: float
    queue_url: str
    message_id: str
    due: float | None = None
    error: str | None = None
    send_id: str | None = None
    expires: float | None = None
    stamp: str | None = None

    def outgoing(self, *, attempt: int, due: float | None, error: str | None = None) -> Outgoing:
        """This job as a new message (a retry, a hop, a release, a dead letter)."""
        return Outgoing(
            self.job_id,
            self.queue,
            self.body,
            attempt,
            due,
            error,
            expires=self.expires,
            stamp=self.stamp,
        )


def encode_message(item: Outgoing, limit: int) -> tuple[str, dict[str, Any]]:
    """The body text and message attributes for `item`.

    Raises:
        SerializationError: the message would be larger than `limit` bytes.
    """
    try:
        text = item.body.decode()
        encoding = None if _NOT_XML.search(text) is None else "base64"
    except UnicodeDecodeError:
        encoding = "base64"
    if encoding is not None:
        text = base64.b64encode(item.body).decode()
    attributes: dict[str, Any] = {
        "offload-job": _string(item.job_id),
        "offload-queue": _string(item.queue),
        "offload-attempt": {"DataType": "Number", "StringValue": str(item.attempt)},
    }
    if item.due is not None:
        attributes["offload-due"] = _number(item.due)
    if encoding is not None:
        attributes["offload-encoding"] = _string(encoding)
    if item.expires is not None:
        attributes["offload-expires"] = _number(item.expires)
    if item.send_id is not None:
        attributes["offload-send"] = _string(item.send_id)
    if item.stamp is not None:
        attributes["offload-stamp"] = _string(item.stamp)
    if item.error is not None:
        attributes["offload-error"] = _string(_NOT_XML.sub("?", item.error))
    size = message_size(text, attributes)
    if size > limit:
        raise SerializationError(
            f"job {item.job_id} is {size} bytes as an SQS message, over the queue's limit of "
            f"{limit} bytes: pass a reference to large data (a URL, a row id) instead"
        )
    return text, attributes


def message_size(body: str, attributes: dict[str, Any]) -> int:
    """Bytes SQS counts for a message: its body and every attribute's name, type, value."""
    return len(body.encode()) + sum(
        len(name) + len(value["DataType"]) + len(value["StringValue"].encode())
        for name, value in attributes.items()
    )


def decode_body(message: dict[str, Any]) -> bytes:
    """The bytes that were sent as `message`'s body."""
    text = str(message.get("Body", ""))
    if attribute(message, "offload-encoding") == "base64":
        return base64.b64decode(text)
    return text.encode()


def attribute(message: dict[str, Any], name: str) -> str | None:
    """A message attribute's value, None if absent."""
    value = message.get("MessageAttributes", {}).get(name)
    return None if value is None else str(value.get("StringValue"))


def _number(value: float) -> dict[str, str]:
    return {"DataType": "Number", "StringValue": repr(float(value))}


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}
