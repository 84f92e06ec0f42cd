"""The queues and exchanges offload declares on RabbitMQ, and why each looks so.

For an offload queue `emails` and the prefix `offload`:

    producer ──publish (confirmed)──► offload.q.emails            work queue: durable,
                                       │   ▲                      priorities (classic)
                                       │   │ dead-lettered on expiry, routing key kept
             ──not_before in future──► offload.delay (headers exchange)
                                       └─► offload.delay.<ms>     delay buckets: classic,
                                           per-queue TTL <ms>, dead-lettering into the
                                           offload.work exchange (direct, by queue name)
    worker ──bury──► offload.dead.emails                           dead letters: quorum

**Delays without the delayed-message plugin.** A message with a per-queue TTL expires
in FIFO order, so a queue whose every message has the same TTL is an exact timer. There
is one such bucket per power of two milliseconds (`BUCKET_MIN_MS` to `BUCKET_MAX_MS`),
declared when first used. A job due in `d` ms goes to the largest bucket not above `d`;
when it comes out (into its work queue, dead-lettered with its routing key), a
consumer finds it still early and sends it on to the next bucket, so a delay of `d` ms
takes at most log2(d / BUCKET_MIN_MS) hops and no message ever waits behind a longer
one. What is left below `BUCKET_MIN_MS` the consumer holds itself until due.

**Why the buckets are classic queues.** On paper, quorum queues with
`x-dead-letter-strategy: at-least-once` are the safer timer: a classic queue re-publishes
an expired message without a confirm. In practice, on RabbitMQ 3.10, every message that
expired in a quorum bucket while the node was down (SIGKILL, then a restart) never
reached its work queue: 5 of 5 in `tests/chaos/test_amqp_restart.py`, whether the
dead-letter exchange was the default one or a named one; the same test with classic
buckets lost none. So buckets are durable classic queues, dead-lettering into a direct
work exchange (`<prefix>.work`) where each work queue is bound by its name. The work
queues are classic by default because RabbitMQ 3.10's quorum queues ignore
priorities; `queue_type=quorum` trades priorities for replication.

**Priorities.** AMQP priorities are 0..255 and RabbitMQ advises few levels. offload's
priority `p` (a signed 32-bit int, default 0) maps to `clamp(p + 5, 0, 10)` on a queue
with `x-max-priority: 10`: priorities -5 to 5 are exact, those beyond are clamped.
"""

from __future__ import annotations

import hashlib

from pamqp.common import FieldTable

__all__ = [
    "ATTEMPT_HEADER",
    "CONTENT_TYPE",
    "PERSISTENT",
    "DUE_HEADER",
    "ERROR_HEADER",
    "EXPIRES_HEADER",
    "STAMP_HEADER",
    "BUCKET_MAX_MS",
    "BUCKET_MIN_MS",
    "DELAY_HEADER",
    "MAX_PRIORITY",
    "Names",
    "amqp_priority",
    "bucket_for",
    "bucket_arguments",
    "dead_arguments",
    "work_arguments",
]

#: The shortest delay bucket; a job due sooner than this is held by the consumer.
BUCKET_MIN_MS = 64
#: The longest bucket: 2**31 ms, about 24.9 days (RabbitMQ's TTLs stop at 2**32 - 1).
BUCKET_MAX_MS = 2**31
#: Every job message is persistent (delivery mode 2: a durable queue writes it to disk).
PERSISTENT = 2
#: Every job message's content type (the envelope is JSON).
CONTENT_TYPE = "application/json"
#: Attempts already used when the message was published (0 for a new job).
ATTEMPT_HEADER = "offload-attempt"
#: When the job is due, epoch milliseconds (absent: at once).
DUE_HEADER = "offload-due"
#: When the job expires, epoch milliseconds (absent: never).
EXPIRES_HEADER = "offload-expires"
#: Why a job was buried (its `ErrorInfo`, JSON), on dead letters.
ERROR_HEADER = "offload-error"
#: The state store's stamp of this copy of the job (`Outgoing.stamp`).
STAMP_HEADER = "offload-stamp"
#: The header the delay exchange routes on: the bucket's TTL in milliseconds.
DELAY_HEADER = "offload-delay"
#: `x-max-priority` of classic work queues (see the module docstring).
MAX_PRIORITY = 10
#: AMQP names are at most 255 bytes.
_NAME_MAX = 255


class Names:
    """The AMQP names of one prefix's queues and exchanges."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.delay_exchange = f"{prefix}.delay"
        self.work_exchange = f"{prefix}.work"

    def work(self, queue: str) -> str:
        return self._fit(f"{self.prefix}.q.", queue)

    def dead(self, queue: str) -> str:
        return self._fit(f"{self.prefix}.dead.", queue)

    def bucket(self, delay_ms: int) -> str:
        return f"{self.prefix}.delay.{delay_ms}"

    @staticmethod
    def _fit(head: str, queue: str) -> str:
        """`head + queue`, or `head` + a digest of `queue` if that is too long (an
        offload queue name may be 200 characters of any script, up to 800 bytes)."""
        name = head + queue
        if len(name.encode()) <= _NAME_MAX:
            return name
        return head + "sha256:" + hashlib.sha256(queue.encode()).hexdigest()


def amqp_priority(priority: int) -> int:
    """The AMQP priority of an offload priority (see the module docstring)."""
    return max(0, min(MAX_PRIORITY, priority + 5))


def bucket_for(remaining_ms: int) -> int | None:
    """The delay bucket (its TTL in ms) for a job due in `remaining_ms`: the largest
    power of two not above it, capped at `BUCKET_MAX_MS`. None when it is due sooner
    than the shortest bucket (the consumer holds it)."""
    if remaining_ms < BUCKET_MIN_MS:
        return None
    return min(BUCKET_MAX_MS, 1 << (remaining_ms.bit_length() - 1))


def work_arguments(queue_type: str) -> FieldTable:
    if queue_type == "quorum":
        return {"x-queue-type": "quorum"}
    return {"x-max-priority": MAX_PRIORITY}


def bucket_arguments(delay_ms: int, work_exchange: str) -> FieldTable:
    return {
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": work_exchange,  # routes by the work queue's name
    }


def dead_arguments() -> FieldTable:
    return {"x-queue-type": "quorum"}
